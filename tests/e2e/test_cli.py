"""The `skiff` CLI: run, ps, stop, logs, image load/ls, and its errors."""

import json
import socket
import threading

import pytest

from conftest import DOCKER_IMAGE, IMAGE, MISSING_IMAGE, task_id, wait_until


def test_run_streams_output_and_exits_with_the_container_code(server):
    result = server.skiff(
        "run", "busybox", "-e", "FOO=bar", "-e", "EMPTY=", "--",
        "sh", "-c", 'echo "foo=$FOO empty=[$EMPTY]"; echo to-stderr >&2; exit 7',
    )
    assert result.returncode == 7, result
    assert result.stdout == "foo=bar empty=[]\n"
    assert result.stderr == "to-stderr\n"

    ok = server.skiff("run", IMAGE, "--", "true")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")


def test_run_streams_while_the_container_runs(server):
    runner = server.skiff_popen(
        "run", "busybox", "--", "sh", "-c", "echo first; sleep 3; echo second; exit 3"
    )
    try:
        first = {}
        reader = threading.Thread(target=lambda: first.update(line=runner.stdout.readline()))
        reader.start()
        reader.join(timeout=20)
        assert first.get("line") == "first\n"
        assert runner.poll() is None, "the first line only came when the container ended"
        rest, _ = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert (runner.returncode, rest) == (3, "second\n")


def test_run_names_the_container_and_sizes_the_task(server, unique):
    result = server.skiff(
        "run", "--name", unique, "--cpu", "0.5 vCPU", "--memory", "1 GB", "busybox", "--",
        "hostname",
    )
    assert result.returncode == 0, result
    definition = server.ecs.describe_task_definition(taskDefinition=f"skiff-run-{unique}")
    described = definition["taskDefinition"]
    assert (described["cpu"], described["memory"]) == ("512", "1024")
    assert described["containerDefinitions"][0]["name"] == unique
    [arn] = server.ecs.list_tasks(family=f"skiff-run-{unique}", desiredStatus="STOPPED")[
        "taskArns"
    ]
    task = server.describe(arn)
    assert (task["cpu"], task["memory"], task["startedBy"]) == ("512", "1024", "skiff-run")
    address = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
    assert result.stdout.strip() == address["privateDnsName"], "Fargate's hostname"


def test_run_of_an_unknown_image(server):
    result = server.skiff("run", MISSING_IMAGE, "--", "true")
    assert result.returncode == 125, result
    assert "CannotPullContainerError" in result.stderr
    assert MISSING_IMAGE in result.stderr
    assert "check" in result.stderr, "the reason should say what to do"


def test_run_detached_then_ps_stop_and_logs(server):
    detached = server.skiff(
        "run", "-d", "busybox", "--", "sh", "-c",
        "trap 'exit 0' TERM; echo detached-hello; sleep 600 & wait",
    )
    assert detached.returncode == 0, detached
    arn = detached.stdout.strip()
    assert arn.startswith("arn:aws:ecs:us-east-1:000000000000:task/default/")
    tid = task_id(arn)
    server.wait_status([arn], "RUNNING")

    table = server.skiff("ps")
    assert table.returncode == 0, table
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["TASK", "DEFINITION", "STATUS"]
    row = next(r for r in rows if tid in r)
    assert "RUNNING" in row.split()
    address = server.describe(arn)["attachments"][0]["details"]
    assert {d["name"]: d["value"] for d in address}["privateIPv4Address"] in row

    listed = server.skiff("ps", "-o", "json")
    assert listed.returncode == 0, listed
    tasks = json.loads(listed.stdout)
    mine = next(t for t in tasks if t["taskArn"] == arn)
    assert mine["lastStatus"] == "RUNNING"

    wait_until(lambda: "detached-hello" in server.logs(arn).stdout, timeout=10,
               message="the detached task's output")

    stopped = server.skiff("stop", tid, "--reason", "from the cli")
    assert stopped.returncode == 0, stopped
    assert stopped.stdout.strip() == arn
    [final] = server.wait_stopped([arn])
    assert final["stoppedReason"] == "from the cli"
    assert final["stopCode"] == "UserInitiated"

    assert tid not in server.skiff("ps").stdout
    every = server.skiff("ps", "-a")
    assert tid in every.stdout
    assert "from the cli" in every.stdout
    every_json = json.loads(server.skiff("ps", "-a", "-o", "json").stdout)
    assert any(t["taskArn"] == arn and t["lastStatus"] == "STOPPED" for t in every_json)


def test_stop_of_an_unknown_task(server):
    result = server.skiff("stop", "0123456789abcdef0123456789abcdef")
    assert result.returncode != 0
    assert "0123456789abcdef0123456789abcdef" in result.stderr
    assert "not found" in result.stderr


def test_image_load_and_ls(images, fresh_server):
    server = fresh_server
    # The fixture loaded the OCI archive; loading it again is harmless.
    oci = server.skiff("image", "load", str(images["oci"]))
    assert oci.returncode == 0, oci
    assert IMAGE in oci.stdout.splitlines()[1:][0]
    docker = server.skiff("image", "load", str(images["docker"]))
    assert docker.returncode == 0, docker
    assert docker.stdout.startswith("Loaded image sha256:")
    assert DOCKER_IMAGE in docker.stdout

    listed = server.skiff("image", "ls")
    assert listed.returncode == 0, listed
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert sorted(names) == sorted([IMAGE, DOCKER_IMAGE])
    as_json = json.loads(server.skiff("image", "ls", "-o", "json").stdout)
    assert {n for i in as_json["images"] for n in i["names"]} == {IMAGE, DOCKER_IMAGE}
    assert all(i["digest"].startswith("sha256:") for i in as_json["images"])

    # The docker-save image runs too.
    run = server.skiff("run", DOCKER_IMAGE, "--", "echo", "from-docker-archive")
    assert (run.returncode, run.stdout) == (0, "from-docker-archive\n"), run


def test_image_load_of_garbage(server, tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tarball" * 100)
    result = server.skiff("image", "load", str(garbage))
    assert result.returncode != 0
    assert result.stderr.startswith("error:")
    missing = server.skiff("image", "load", str(tmp_path / "absent.tar"))
    assert missing.returncode != 0
    assert "absent.tar" in missing.stderr


def test_an_unreachable_server(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    for endpoint in ("http://127.0.0.1:1", f"http://127.0.0.1:{closed_port}"):
        result = server.skiff("--endpoint", endpoint, "ps")
        assert result.returncode == 1
        assert result.stderr.startswith("error:")
        assert "not reachable" in result.stderr, result.stderr
        assert endpoint in result.stderr
        assert "skiff server" in result.stderr


@pytest.mark.parametrize("args", [["logs"], ["stop"], ["run"], ["image", "load"]])
def test_missing_arguments_are_usage_errors(server, args):
    result = server.skiff(*args)
    assert result.returncode == 2
    assert "Usage:" in result.stderr
