"""Container health checks, end to end: a task definition's `healthCheck` runs inside the
container, `describeTasks` shows each container's and the task's `healthStatus`, an
unhealthy standalone task keeps running, and `dependsOn` HEALTHY orders containers.

Intervals are ECS's minimum (5 s), so each test takes a few check periods."""

import json
import time

from conftest import LONG_RUNNING, container, wait_until

INTERVAL = 5


def health_check(command, interval=INTERVAL, timeout=2, retries=1, **extra):
    check = {"command": command, "interval": interval, "timeout": timeout, "retries": retries}
    check.update(extra)
    return check


def shell(script, **kwargs):
    return health_check(["CMD-SHELL", script], **kwargs)


def by_name(task):
    return {c["name"]: c for c in task["containers"]}


def wait_health(server, task, status, container_name=None, timeout=60):
    """Waits until the task's (or one container's) healthStatus is `status`."""

    def reached():
        described = server.describe(task)
        if container_name is None:
            current = described["healthStatus"]
        else:
            current = by_name(described)[container_name]["healthStatus"]
        return described if current == status else None

    target = container_name or "task"
    return wait_until(
        reached, timeout=timeout, interval=0.5, message=f"{target} to be {status}"
    )


def log_entries(server, task):
    result = server.logs(task, "-o", "json")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def first_time(entries, container_name, message):
    for entry in entries:
        if entry["container"] == container_name and entry["message"] == message:
            return entry["time"]
    raise AssertionError(f"{container_name} never logged {message!r}: {entries}")


def stop(server, task):
    server.ecs.stop_task(task=task["taskArn"], reason="test done")
    return server.wait_stopped([task])[0]


def test_a_passing_check_makes_the_container_and_the_task_healthy(server, unique):
    definition = server.register(
        unique,
        [
            container("app", LONG_RUNNING, healthCheck=shell("true")),
            container("sidecar", LONG_RUNNING),
        ],
    )
    [task] = server.run(definition)
    assert task["healthStatus"] == "UNKNOWN"
    [running] = server.wait_status([task], "RUNNING")
    assert by_name(running)["app"]["healthStatus"] == "UNKNOWN"
    healthy = wait_health(server, task, "HEALTHY")
    assert by_name(healthy)["app"]["healthStatus"] == "HEALTHY"
    assert by_name(healthy)["sidecar"]["healthStatus"] == "UNKNOWN", "no check: ignored"
    stopped = stop(server, task)
    assert stopped["stopCode"] == "UserInitiated"


def test_failing_and_timed_out_checks_make_unhealthy_and_the_task_keeps_running(
    server, unique
):
    definition = server.register(
        unique,
        [
            container("failing", LONG_RUNNING, healthCheck=shell("exit 1", retries=2)),
            container("slow", LONG_RUNNING, healthCheck=shell("sleep 30", timeout=2)),
        ],
    )
    [task] = server.run(definition)
    unhealthy = wait_health(server, task, "UNHEALTHY")
    wait_health(server, task, "UNHEALTHY", container_name="failing")
    wait_health(server, task, "UNHEALTHY", container_name="slow")
    assert unhealthy["lastStatus"] == "RUNNING"
    # Another check period later, a standalone task still runs: only a service replaces
    # unhealthy tasks.
    time.sleep(INTERVAL)
    still = server.describe(task)
    assert still["lastStatus"] == "RUNNING"
    assert still["desiredStatus"] == "RUNNING"
    assert all(c["lastStatus"] == "RUNNING" for c in still["containers"])
    stopped = stop(server, task)
    assert stopped["healthStatus"] == "UNHEALTHY", "the last verdict is kept"


def test_failures_during_the_start_period_do_not_count(server, unique):
    # The main process reports each check run in its log: the check leaves a marker.
    reporter = (
        "trap 'exit 0' TERM; "
        "while true; do if [ -f /tmp/ran ]; then rm /tmp/ran; echo check-ran; fi; "
        "sleep 0.2; done"
    )
    definition = server.register(
        unique,
        [
            container(
                "app",
                reporter,
                healthCheck=shell("touch /tmp/ran; exit 1", startPeriod=3 * INTERVAL - 3),
            )
        ],
    )
    [task] = server.run(definition)
    server.wait_status([task], "RUNNING")
    # Checks run about 5 s and 10 s after the start, both inside the 12 s start period.
    wait_until(
        lambda: "check-ran" in server.logs(task).stdout,
        timeout=60,
        interval=0.2,
        message="a first failing check",
    )
    assert server.describe(task)["healthStatus"] == "UNKNOWN"
    assert by_name(server.describe(task))["app"]["healthStatus"] == "UNKNOWN"
    # The first failure after the start period counts (retries 1).
    unhealthy = wait_health(server, task, "UNHEALTHY", timeout=90)
    assert unhealthy["lastStatus"] == "RUNNING"
    stop(server, task)


def test_depends_on_healthy_waits_for_the_dependency_to_pass(server, unique):
    definition = server.register(
        unique,
        [
            container(
                "db",
                "sleep 2; touch /tmp/ready; echo db-ready; " + LONG_RUNNING,
                healthCheck=shell("test -f /tmp/ready", retries=3),
            ),
            container(
                "app",
                "echo app-started; " + LONG_RUNNING,
                dependsOn=[{"containerName": "db", "condition": "HEALTHY"}],
            ),
        ],
    )
    [task] = server.run(definition)

    def db_running():
        described = by_name(server.describe(task))
        return described if described["db"]["lastStatus"] == "RUNNING" else None

    containers = wait_until(db_running, timeout=60, message="db to run")
    if containers["db"]["healthStatus"] != "HEALTHY":
        assert containers["app"]["lastStatus"] == "PENDING", containers
    healthy = wait_health(server, task, "HEALTHY")
    wait_until(
        lambda: by_name(server.describe(task))["app"]["lastStatus"] == "RUNNING",
        message="app to run",
    )
    assert by_name(healthy)["db"]["healthStatus"] == "HEALTHY"
    entries = wait_until(
        lambda: (e := log_entries(server, task))
        and any(x["message"] == "app-started" for x in e)
        and e,
        message="app's first log line",
    )
    assert first_time(entries, "app", "app-started") > first_time(entries, "db", "db-ready")
    stop(server, task)


def test_a_dependency_unhealthy_before_healthy_stops_the_task(server, unique):
    definition = server.register(
        unique,
        [
            container("db", LONG_RUNNING, healthCheck=shell("exit 1")),
            container(
                "app",
                "echo must-not-run",
                dependsOn=[{"containerName": "db", "condition": "HEALTHY"}],
            ),
        ],
    )
    [task] = server.run(definition)
    [stopped] = server.wait_stopped([task], timeout=90)
    assert stopped["stopCode"] == "TaskFailedToStart"
    assert "db became UNHEALTHY" in stopped["stoppedReason"], stopped["stoppedReason"]
    assert "exitCode" not in by_name(stopped)["app"]
    assert "must-not-run" not in server.logs(task).stdout


def test_the_check_runs_with_the_container_environment_and_working_directory(
    server, unique
):
    check = health_check(
        ["CMD", "sh", "-c", 'test "$GREETING" = hello && test "$(pwd)" = /tmp']
    )
    definition = server.register(
        unique,
        [
            container(
                "app",
                LONG_RUNNING,
                environment=[{"name": "GREETING", "value": "hello"}],
                workingDirectory="/tmp",
                healthCheck=check,
            )
        ],
    )
    [task] = server.run(definition)
    healthy = wait_health(server, task, "HEALTHY")
    assert by_name(healthy)["app"]["healthStatus"] == "HEALTHY"
    stop(server, task)
