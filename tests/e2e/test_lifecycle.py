"""Task lifecycle facts: statuses, timestamps, stop codes and reasons, essential and
dependsOn semantics, stop timeouts, the container's process settings, and the task's
network interface."""

import json
import resource
import time
import urllib.request

from conftest import IMAGE, LONG_RUNNING, MISSING_IMAGE, container, wait_until


def log_entries(server, task):
    """The task's log entries as JSON objects (`skiff logs -o json`)."""
    result = server.logs(task, "-o", "json")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def first_time(entries, container_name, message):
    for entry in entries:
        if entry["container"] == container_name and entry["message"] == message:
            return entry["time"]
    raise AssertionError(f"{container_name} never logged {message!r}: {entries}")


def assert_ordered_timestamps(task):
    order = [
        "createdAt",
        "pullStartedAt",
        "pullStoppedAt",
        "startedAt",
        "executionStoppedAt",
        "stoppedAt",
    ]
    values = [task[name] for name in order]
    assert values == sorted(values), dict(zip(order, values))


def test_essential_container_exits_by_itself(server):
    task = server.run_command("echo bye; exit 3")
    [stopped] = server.wait_stopped([task])
    assert stopped["lastStatus"] == "STOPPED"
    assert stopped["desiredStatus"] == "STOPPED"
    assert stopped["stopCode"] == "EssentialContainerExited"
    assert stopped["stoppedReason"] == "Essential container in task exited"
    assert stopped["containers"][0]["exitCode"] == 3
    assert stopped["containers"][0]["lastStatus"] == "STOPPED"
    assert stopped["stoppingAt"] >= stopped["createdAt"]
    assert_ordered_timestamps(stopped)


def test_statuses_while_running_and_after_a_user_stop(server):
    task = server.run_command(LONG_RUNNING)
    [running] = server.wait_status([task], "RUNNING")
    assert running["lastStatus"] == "RUNNING"
    assert running["desiredStatus"] == "RUNNING"
    assert running["containers"][0]["lastStatus"] == "RUNNING"
    assert running["connectivity"] == "CONNECTED"
    assert running["createdAt"] <= running["pullStartedAt"] <= running["pullStoppedAt"]
    assert running["pullStoppedAt"] <= running["startedAt"]
    assert "stopCode" not in running and "stoppedAt" not in running

    server.ecs.stop_task(task=task["taskArn"], reason="maintenance window")
    [stopped] = server.wait_stopped([task])
    assert stopped["stopCode"] == "UserInitiated"
    assert stopped["stoppedReason"] == "maintenance window"
    assert stopped["containers"][0]["exitCode"] == 0
    assert stopped["attachments"][0]["status"] == "DELETED"
    assert_ordered_timestamps(stopped)


def test_unknown_image_fails_to_start(server):
    definition = server.register(
        "lifecycle-noimage", [container("main", "true", image=MISSING_IMAGE)]
    )
    [task] = server.run(definition)
    [stopped] = server.wait_stopped([task])
    assert stopped["stopCode"] == "TaskFailedToStart"
    assert stopped["stoppedReason"].startswith("CannotPullContainerError:")
    assert MISSING_IMAGE in stopped["stoppedReason"]
    assert "exitCode" not in stopped["containers"][0]
    assert "startedAt" not in stopped


def test_a_non_essential_container_may_exit(server):
    definition = server.register(
        "lifecycle-sidecar-exits",
        [
            container("app", LONG_RUNNING),
            container("helper", "exit 5", essential=False),
        ],
    )
    [task] = server.run(definition)

    def helper_done():
        t = server.describe(task)
        helper = next(c for c in t["containers"] if c["name"] == "helper")
        return t if helper.get("exitCode") is not None else None

    described = wait_until(helper_done, timeout=30, message="the helper to exit")
    helper = next(c for c in described["containers"] if c["name"] == "helper")
    assert helper["exitCode"] == 5
    time.sleep(1)
    still = server.describe(task)
    assert still["lastStatus"] == "RUNNING"
    assert still["desiredStatus"] == "RUNNING"
    app = next(c for c in still["containers"] if c["name"] == "app")
    assert app["lastStatus"] == "RUNNING"
    server.ecs.stop_task(task=task["taskArn"])
    server.wait_stopped([task])


def test_an_essential_exit_stops_the_other_containers(server):
    definition = server.register(
        "lifecycle-essential-exits",
        [
            container("app", "sleep 1; exit 2"),
            container("sidecar", LONG_RUNNING, essential=False),
        ],
    )
    [task] = server.run(definition)
    [stopped] = server.wait_stopped([task])
    exits = {c["name"]: c.get("exitCode") for c in stopped["containers"]}
    assert exits == {"app": 2, "sidecar": 0}, "the sidecar was stopped with SIGTERM"
    assert stopped["stopCode"] == "EssentialContainerExited"


def test_depends_on_orders_the_containers(server):
    definition = server.register(
        "lifecycle-depends-on",
        [
            container("init", "echo init-begin; sleep 1; echo init-end", essential=False),
            container(
                "failing", "sleep 1; echo failing-end; exit 7", essential=False
            ),
            container(
                "proxy",
                "echo proxy-begin; " + LONG_RUNNING,
                essential=False,
                dependsOn=[{"containerName": "init", "condition": "SUCCESS"}],
            ),
            container(
                "app",
                "echo app-begin; sleep 1; echo app-end",
                dependsOn=[
                    {"containerName": "proxy", "condition": "START"},
                    {"containerName": "failing", "condition": "COMPLETE"},
                ],
            ),
        ],
    )
    [task] = server.run(definition)
    [stopped] = server.wait_stopped([task])
    exits = {c["name"]: c.get("exitCode") for c in stopped["containers"]}
    assert exits == {"init": 0, "failing": 7, "proxy": 0, "app": 0}

    entries = log_entries(server, task)
    init_end = first_time(entries, "init", "init-end")
    proxy_begin = first_time(entries, "proxy", "proxy-begin")
    failing_end = first_time(entries, "failing", "failing-end")
    app_begin = first_time(entries, "app", "app-begin")
    assert init_end <= proxy_begin, "SUCCESS: proxy started before init finished"
    assert proxy_begin <= app_begin, "START: app started before proxy"
    assert failing_end <= app_begin, "COMPLETE: app started before failing exited"


def test_depends_on_success_that_fails(server):
    definition = server.register(
        "lifecycle-success-fails",
        [
            container("init", "exit 1", essential=False),
            container(
                "app",
                "echo must-not-run",
                dependsOn=[{"containerName": "init", "condition": "SUCCESS"}],
            ),
        ],
    )
    [task] = server.run(definition)
    [stopped] = server.wait_stopped([task])
    app = next(c for c in stopped["containers"] if c["name"] == "app")
    assert "exitCode" not in app
    assert "init" in stopped["stoppedReason"] or "init" in app.get("reason", "")
    assert "must-not-run" not in server.logs(task).stdout


def test_stop_timeout(server):
    definition = server.register(
        "lifecycle-stop-timeout",
        [
            container("polite", "trap 'echo got-term; exit 0' TERM; sleep 600 & wait"),
            container("stubborn", "trap '' TERM; sleep 600 & wait", stopTimeout=2),
        ],
    )
    [task] = server.run(definition)
    server.wait_status([task], "RUNNING")
    time.sleep(0.5)  # let both shells install their traps
    stopped_at = time.monotonic()
    server.ecs.stop_task(task=task["taskArn"])
    [stopped] = server.wait_stopped([task])
    took = time.monotonic() - stopped_at
    exits = {c["name"]: c.get("exitCode") for c in stopped["containers"]}
    assert exits == {"polite": 0, "stubborn": 137}
    assert took >= 2, f"the stubborn container was killed after {took:.1f}s, not 2s"
    assert took < 25, "stopTimeout 2 was not honoured (the default is 30s)"
    assert "got-term" in server.logs(task, "--container", "polite").stdout


def test_process_settings(server):
    definition = server.register(
        "lifecycle-process",
        [
            {
                "name": "main",
                "image": IMAGE,
                "essential": True,
                "entryPoint": ["/bin/sh", "-c"],
                "command": ['echo "cwd=$(pwd) uid=$(id -u) gid=$(id -g) color=$COLOR" "$0"', "arg0"],
                "environment": [{"name": "COLOR", "value": "blue"}],
                "workingDirectory": "/tmp",
                "user": "65534",
            }
        ],
    )
    [task] = server.run(definition)
    [stopped] = server.wait_stopped([task])
    assert stopped["containers"][0]["exitCode"] == 0
    assert server.logs(task).stdout == "cwd=/tmp uid=65534 gid=65534 color=blue arg0\n"


def test_readonly_root_filesystem(server):
    definition = server.register(
        "lifecycle-readonly",
        [
            container(
                "main",
                "if touch /marker 2>/dev/null; then echo writable; else echo read-only; fi",
                readonlyRootFilesystem=True,
            )
        ],
    )
    [task] = server.run(definition)
    server.wait_stopped([task])
    assert server.logs(task).stdout == "read-only\n"

    writable = server.run_command(
        "if touch /marker 2>/dev/null; then echo writable; else echo read-only; fi"
    )
    server.wait_stopped([writable])
    assert server.logs(writable).stdout == "writable\n"


def test_ulimit_nofile(server):
    definition = server.register(
        "lifecycle-ulimits",
        [
            container(
                "main",
                'echo "soft=$(ulimit -n) hard=$(ulimit -Hn)"',
                ulimits=[{"name": "nofile", "softLimit": 1000, "hardLimit": 1500}],
            )
        ],
    )
    [task] = server.run(definition)
    server.wait_stopped([task])
    assert server.logs(task).stdout == "soft=1000 hard=1500\n"

    # Fargate's default of 65535 is clamped to the host's hard limit.
    _, host_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = min(65535, host_hard)
    default = server.run_command('echo "soft=$(ulimit -n) hard=$(ulimit -Hn)"')
    [stopped] = server.wait_stopped([default])
    assert stopped["containers"][0]["exitCode"] == 0
    assert server.logs(default).stdout == f"soft={expected} hard={expected}\n"


def test_network_interface_is_real_and_reachable(server):
    serve = (
        "mkdir -p /tmp/www; "
        'ip -o -4 addr show dev eth0 > /tmp/www/addr; '
        "cat /sys/class/net/eth0/address > /tmp/www/mac; "
        "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8080 -h /tmp/www & wait"
    )
    definition = server.register(
        "lifecycle-network",
        [container("web", serve, portMappings=[{"containerPort": 8080}])],
    )
    [task] = server.run(definition)
    [running] = server.wait_status([task], "RUNNING")
    [attachment] = running["attachments"]
    assert attachment["type"] == "ElasticNetworkInterface"
    assert attachment["status"] == "ATTACHED"
    details = {d["name"]: d["value"] for d in attachment["details"]}
    address = details["privateIPv4Address"]
    assert address.startswith(server.subnet_prefix + ".")
    assert details["subnetId"]
    assert details["networkInterfaceId"].startswith("eni-")
    assert details["privateDnsName"] == f"ip-{address.replace('.', '-')}.ec2.internal"
    assert running["containers"][0]["networkInterfaces"][0]["privateIpv4Address"] == address

    def fetch(name):
        with urllib.request.urlopen(f"http://{address}:8080/{name}", timeout=2) as r:
            return r.read().decode()

    def answered():
        try:
            return fetch("addr")
        except OSError:
            return None

    inside = wait_until(answered, timeout=20, message=f"httpd at {address}:8080")
    assert f"inet {address}/24" in inside, inside
    assert fetch("mac").strip() == details["macAddress"]

    server.ecs.stop_task(task=task["taskArn"])
    [stopped] = server.wait_stopped([task])
    assert stopped["stopCode"] == "UserInitiated"
    try:
        fetch("addr")
        raise AssertionError("the task still answers after it stopped")
    except OSError:
        pass
