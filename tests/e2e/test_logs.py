"""Logs: `skiff logs` shows what the containers wrote, per stream and in order, filters
by container, follows a running task until it stops, and survives a server restart."""

import json
import subprocess
import threading
import time

from conftest import SKIFF, container


def combined_output(server, *args):
    """`skiff ARGS` with stderr merged into stdout, so the order across streams shows."""
    completed = subprocess.run(
        [str(SKIFF), *args],
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout
    return completed.stdout


def test_stdout_and_stderr_in_order(server):
    task = server.run_command(
        "echo out-1; sleep 0.1; echo err-1 >&2; sleep 0.1; echo out-2; sleep 0.1; "
        "echo err-2 >&2; sleep 0.1; printf 'no newline'"
    )
    server.wait_stopped([task])
    result = server.logs(task)
    # A last line without a newline is a whole entry (as in the CRI log format).
    assert result.stdout == "out-1\nout-2\nno newline\n"
    assert result.stderr == "err-1\nerr-2\n"
    merged = combined_output(server, "logs", task["taskArn"])
    assert merged == "out-1\nerr-1\nout-2\nerr-2\nno newline\n"

    entries = [json.loads(line) for line in server.logs(task, "-o", "json").stdout.splitlines()]
    assert [(e["stream"], e["message"]) for e in entries] == [
        ("stdout", "out-1"),
        ("stderr", "err-1"),
        ("stdout", "out-2"),
        ("stderr", "err-2"),
        ("stdout", "no newline"),
    ]
    assert {e["container"] for e in entries} == {"main"}
    times = [e["time"] for e in entries]
    assert times == sorted(times)


def test_container_filter(server, unique):
    definition = server.register(
        unique,
        [
            container("first", "echo from-first; echo first-err >&2"),
            container("second", "sleep 0.2; echo from-second", essential=False),
        ],
    )
    [task] = server.run(definition)
    server.wait_stopped([task])
    both = server.logs(task)
    assert both.stdout == "from-first\nfrom-second\n"
    first = server.logs(task, "--container", "first")
    assert (first.stdout, first.stderr) == ("from-first\n", "first-err\n")
    second = server.logs(task, "--container", "second")
    assert (second.stdout, second.stderr) == ("from-second\n", "")

    missing = server.skiff("logs", task["taskArn"], "--container", "third")
    assert missing.returncode != 0
    assert "third" in missing.stderr
    assert "first" in missing.stderr, "the error should list the task's containers"


def test_follow_streams_until_the_task_stops(server):
    task = server.run_command("for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.5; done")
    server.wait_status([task], "RUNNING")
    follower = server.skiff_popen("logs", "--follow", task["taskArn"])
    try:
        first = {}

        def read_first():
            first["line"] = follower.stdout.readline()
            first["at"] = time.monotonic()

        reader = threading.Thread(target=read_first)
        reader.start()
        reader.join(timeout=20)
        assert first.get("line") == "line-1\n", first
        # The first line arrived while the task was still writing the others.
        assert server.describe(task)["lastStatus"] != "STOPPED"
        rest, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    assert first["line"] + rest == "".join(f"line-{i}\n" for i in range(1, 7))
    assert server.describe(task)["lastStatus"] in ("DEPROVISIONING", "STOPPED")


def test_logs_of_a_task_still_launching(server):
    task = server.run_command("echo launched")
    # Right after RunTask the task may not have a sandbox yet: plain logs are empty
    # rather than an error, and following waits for the output.
    early = server.skiff("logs", task["taskArn"])
    assert early.returncode == 0, early
    assert early.stdout in ("", "launched\n")
    followed = server.skiff("logs", "--follow", task["taskArn"])
    assert followed.returncode == 0, followed
    assert followed.stdout == "launched\n"


def test_follow_returns_when_a_task_is_stopped(server):
    task = server.run_command("trap 'echo bye; exit 0' TERM; echo hello; sleep 600 & wait")
    server.wait_status([task], "RUNNING")
    follower = server.skiff_popen("logs", "-f", task["taskArn"])
    try:
        time.sleep(1)
        assert follower.poll() is None, "follow returned while the task runs"
        server.ecs.stop_task(task=task["taskArn"])
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0, err
    assert out == "hello\nbye\n"


def test_logs_survive_a_restart(fresh_server):
    server = fresh_server
    task = server.run_command("echo before-restart; echo oops >&2")
    server.wait_stopped([task])
    server.restart()
    result = server.logs(task)
    assert (result.stdout, result.stderr) == ("before-restart\n", "oops\n")
    server.kill9()
    server.restart()
    assert server.logs(task).stdout == "before-restart\n"


def test_logs_of_an_unknown_task(server):
    unknown = "0123456789abcdef0123456789abcdef"
    result = server.skiff("logs", unknown)
    assert result.returncode != 0
    assert unknown in result.stderr
    assert result.stderr.startswith("error:"), result.stderr
    assert "skiff ps" in result.stderr, "the error should say how to find task ids"
    assert "\n" == result.stderr[-1] and result.stderr.count("\n") == 1
