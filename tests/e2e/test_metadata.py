"""The task metadata endpoint v4: every container gets its URI, the documents describe the
calling task with ECS's keys, and a task never sees another task's metadata."""

import json

from conftest import LONG_RUNNING, container, task_id, wait_until

URI = "$ECS_CONTAINER_METADATA_URI_V4"


def address_of(task):
    details = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
    return details["privateIPv4Address"]


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith(("{", "["))]


def logged_line(server, task, prefix, container_name=None):
    """The first stdout line of the task (or one container) starting with `prefix`."""

    def find():
        extra = ("--container", container_name) if container_name else ()
        for line in server.logs(task, *extra).stdout.splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :]
        return None

    return wait_until(find, timeout=30, message=f"a log line starting with {prefix!r}")


def test_documents_describe_the_calling_task(server, unique):
    definition = server.register(
        unique,
        [
            container(
                "main",
                # A moment for the agent to record that the container runs.
                f"sleep 1; wget -qO- {URI}/task; echo; wget -qO- {URI}; echo; "
                f"wget -qO- {URI}/stats; echo; wget -qO- {URI}/task/stats; echo",
                memory=256,
                cpu=128,
            )
        ],
    )
    [task] = server.run(definition)
    [stopped] = server.wait_stopped([task])
    assert stopped["containers"][0]["exitCode"] == 0, server.logs(task).stderr
    task_doc, container_doc, stats, task_stats = json_lines(server.logs(task).stdout)

    assert task_doc["TaskARN"] == task["taskArn"]
    assert task_doc["Cluster"] == task["clusterArn"]
    assert task_doc["Family"] == unique
    assert task_doc["Revision"] == definition.rsplit(":", 1)[1]
    assert task_doc["Limits"] == {"CPU": 0.25, "Memory": 512}
    assert task_doc["LaunchType"] == "FARGATE"
    assert task_doc["KnownStatus"] == "RUNNING"
    assert task_doc["DesiredStatus"] == "RUNNING"
    assert task_doc["AvailabilityZone"].startswith("us-east-1")
    assert "PullStartedAt" in task_doc and "PullStoppedAt" in task_doc
    assert task_doc["EphemeralStorageMetrics"]["Reserved"] == 20 * 1024
    assert task_doc["ClockDrift"]["ClockSynchronizationStatus"] in (
        "SYNCHRONIZED",
        "NOT_SYNCHRONIZED",
    )
    [listed] = task_doc["Containers"]
    assert listed["Name"] == "main"
    assert listed["KnownStatus"] == "RUNNING"

    address = address_of(server.describe(task))
    for doc in (listed, container_doc):
        [network] = doc["Networks"]
        assert network["NetworkMode"] == "awsvpc"
        assert network["IPv4Addresses"] == [address]
        assert network["IPv4SubnetCIDRBlock"] == server.subnet
        assert network["SubnetGatewayIpv4Address"] == f"{server.subnet_prefix}.1/24"
        assert network["PrivateDNSName"] == f"ip-{address.replace('.', '-')}.ec2.internal"
        assert doc["Limits"] == {"CPU": 128, "Memory": 256}
        assert doc["Labels"]["com.amazonaws.ecs.task-arn"] == task["taskArn"]
        assert doc["Labels"]["com.amazonaws.ecs.container-name"] == "main"
        assert doc["ImageID"].startswith("sha256:")
        assert doc["Type"] == "NORMAL"
        assert "StartedAt" in doc and "CreatedAt" in doc
    assert container_doc["DockerId"] == stopped["containers"][0]["runtimeId"]

    memory = stats["memory_stats"]
    assert memory["usage"] > 0
    assert 0 < memory["limit"] <= 256 << 20
    assert stats["id"] == container_doc["DockerId"]
    assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    assert stats["pids_stats"]["current"] >= 1
    assert stats["networks"]["eth0"]["tx_bytes"] > 0, "the requests left through eth0"
    assert set(task_stats) == {container_doc["DockerId"]}
    assert task_stats[container_doc["DockerId"]]["memory_stats"]["usage"] > 0


def test_a_task_cannot_read_another_tasks_metadata(server, unique):
    owner = server.register(
        f"{unique}-owner", [container("main", f"echo uri={URI}; {LONG_RUNNING}")]
    )
    [first] = server.run(owner)
    server.wait_status([first], "RUNNING")
    uri = logged_line(server, first, "uri=")
    assert uri.startswith("http://169.254.170.2/v4/")
    token = uri.rsplit("/", 1)[1]
    assert len(token) == 32

    prober = server.register(
        f"{unique}-prober",
        [
            container(
                "main",
                f"for path in {uri} {uri}/task {uri}/stats {uri}/task/stats "
                f"http://169.254.170.2/v3/{token}; do "
                "wget -qO- $path; echo rc=$?; done; "
                # The prober's own URI still works: the refusals are about the token.
                f"wget -qO- {URI} >/dev/null; echo own=$?",
            )
        ],
    )
    [second] = server.run(prober)
    server.wait_stopped([second])
    result = server.logs(second)
    assert result.stdout.splitlines() == ["rc=1"] * 5 + ["own=0"], result
    assert result.stderr.count("404") == 5, result.stderr
    assert task_id(first) not in result.stdout + result.stderr

    server.ecs.stop_task(cluster="default", task=first["taskArn"])
    server.wait_stopped([first])


def test_every_container_gets_its_own_uri(server, unique):
    show = f"echo uri={URI}; echo v3=$ECS_CONTAINER_METADATA_URI; wget -qO- {URI}; echo"
    definition = server.register(
        unique,
        [
            container("app", f"{show}; sleep 1"),
            container("sidecar", show, essential=False),
        ],
    )
    [task] = server.run(definition)
    server.wait_stopped([task])
    tokens = {}
    for name in ("app", "sidecar"):
        output = server.logs(task, "--container", name).stdout
        lines = dict(
            line.split("=", 1) for line in output.splitlines() if not line.startswith("{")
        )
        v4, v3 = lines["uri"], lines["v3"]
        tokens[name] = v4.rsplit("/", 1)[1]
        assert v4 == f"http://169.254.170.2/v4/{tokens[name]}"
        assert v3 == f"http://169.254.170.2/v3/{tokens[name]}"
        [doc] = json_lines(output)
        assert doc["Name"] == name, "each token names its own container"
    assert tokens["app"] != tokens["sidecar"]


def test_the_uri_keeps_working_after_the_server_crashes(fresh_server):
    server = fresh_server
    task = server.run_command(
        "trap 'exit 0' TERM; "
        f"for i in $(seq 240); do wget -qO- {URI}/task | grep -q TaskARN "
        "&& echo ok || echo fail; sleep 0.25; done"
    )
    server.wait_status([task], "RUNNING")

    def answered():
        return server.logs(task).stdout.count("ok")

    wait_until(answered, message="a first answer")
    server.kill9()
    server.start()
    # The re-adopted task is served with the token its container already has.
    after_restart = answered()
    wait_until(lambda: answered() > after_restart + 2, message="answers after the restart")
    server.ecs.stop_task(cluster="default", task=task["taskArn"])
    server.wait_stopped([task])
