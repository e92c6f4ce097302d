"""Restart survival: tasks outlive a `kill -9` of the server under their supervisors, and
the restarted server re-adopts them (same ARNs, no duplicates, logs kept, stops work)."""

import datetime
import json
import subprocess
import time

from conftest import container, task_id, wait_until
from leftovers import RUNC_ROOT, processes_mentioning

TICKER = "trap 'exit 0' TERM; i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done"


def parse_time(text):
    """An RFC 3339 log time with up to 9 fractional digits, as a UTC datetime."""
    stamp, _, fraction = text.rstrip("Z").partition(".")
    micro = (fraction + "000000")[:6]
    return datetime.datetime.fromisoformat(f"{stamp}.{micro}+00:00")


def runc_status(container_id):
    result = subprocess.run(
        ["runc", "--root", RUNC_ROOT, "state", container_id], capture_output=True, text=True
    )
    return json.loads(result.stdout)["status"] if result.returncode == 0 else None


def test_tasks_survive_a_server_crash(fresh_server):
    server = fresh_server
    definition = server.register("restart-ticker", [container("main", TICKER)])
    tasks = server.run(definition, count=3)
    arns = sorted(t["taskArn"] for t in tasks)
    server.wait_status(tasks, "RUNNING")
    supervisors = {task_id(a): processes_mentioning(task_id(a)) for a in arns}
    assert all(supervisors.values()), f"no supervisor process for some task: {supervisors}"

    server.kill9()
    killed_at = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(2)
    for arn in arns:
        tid = task_id(arn)
        alive = processes_mentioning(tid)
        assert set(supervisors[tid]) <= set(alive), f"the supervisor of {tid} died"
        assert runc_status(f"{tid}-main") == "running", f"container of {tid} is not running"
    restarted_at = datetime.datetime.now(datetime.timezone.utc)

    server.restart()
    described = server.ecs.describe_tasks(tasks=arns)
    assert described["failures"] == []
    assert sorted(t["taskArn"] for t in described["tasks"]) == arns
    assert [t["lastStatus"] for t in described["tasks"]] == ["RUNNING"] * 3
    listed = server.ecs.list_tasks()["taskArns"]
    assert sorted(listed) == arns, "the restart duplicated or lost tasks"

    # The tasks kept logging while the server was down, and the logs say so.
    for arn in arns:
        lines = server.logs(arn, "-o", "json").stdout.splitlines()
        times = [parse_time(json.loads(line)["time"]) for line in lines]
        during = [t for t in times if killed_at < t < restarted_at]
        assert len(during) >= 3, f"{len(during)} lines logged while the server was down"
        messages = [json.loads(line)["message"] for line in lines]
        assert messages == [f"tick-{i}" for i in range(len(messages))], "lines lost or reordered"

    for arn in arns:
        server.ecs.stop_task(task=arn, reason="after the restart")
    stopped = server.wait_stopped(arns)
    assert all(t["stoppedReason"] == "after the restart" for t in stopped)
    assert all(t["containers"][0]["exitCode"] == 0 for t in stopped)
    for arn in arns:
        wait_until(
            lambda: not processes_mentioning(task_id(arn)),
            timeout=20,
            message=f"the supervisor of {task_id(arn)} to exit",
        )


def test_a_container_that_exits_while_the_server_is_down(fresh_server):
    server = fresh_server
    definition = server.register(
        "restart-exits", [container("main", "echo started; sleep 2; echo finished; exit 42")]
    )
    [task] = server.run(definition)
    server.wait_status([task], "RUNNING")
    server.kill9()
    tid = task_id(task)
    wait_until(
        lambda: runc_status(f"{tid}-main") != "running",
        timeout=30,
        message="the container to exit while the server is down",
    )
    time.sleep(0.5)

    server.restart()
    [stopped] = server.wait_stopped([task])
    assert stopped["stopCode"] == "EssentialContainerExited"
    assert stopped["containers"][0]["exitCode"] == 42
    assert stopped["executionStoppedAt"] >= stopped["startedAt"]
    assert server.logs(task).stdout == "started\nfinished\n"
    assert server.ecs.list_tasks()["taskArns"] == []


def test_a_graceful_restart_keeps_tasks_too(fresh_server):
    server = fresh_server
    definition = server.register("restart-graceful", [container("main", TICKER)])
    [task] = server.run(definition)
    server.wait_status([task], "RUNNING")
    assert server.stop() == 0, "SIGTERM should end the server cleanly"
    assert runc_status(f"{task_id(task)}-main") == "running"
    server.restart()
    assert server.describe(task)["lastStatus"] == "RUNNING"
    # A task started after the restart gets an address of its own.
    [second] = server.run(definition)
    [first_now, second_now] = server.wait_status([task, second], "RUNNING")
    addresses = {
        c["networkInterfaces"][0]["privateIpv4Address"]
        for t in (first_now, second_now)
        for c in t["containers"]
    }
    assert len(addresses) == 2, "the restarted server handed out a used address"
