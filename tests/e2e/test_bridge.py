"""Bridge network mode: port mappings published on the host, fixed or from the server's
`--host-port-range`, reached from the host on 127.0.0.1 and on the bridge gateway,
reported in `networkBindings`, refused while another task holds them, and gone (DNAT
rules included) once the task stopped.

Host ports are derived from the server's own port so that servers of parallel workers
do not publish the same one: the fixed port maps the server's port (in the kernel's
ephemeral range) below that range, and the dynamic range is one port above it, picked
by the server's port too."""

import json
import socket
import subprocess

import pytest

from conftest import container, running_server, task_id, wait_until

EPHEMERAL_LOW = 32768
GREETING = "bridge-ok"
SERVE = (
    f"mkdir -p /tmp/www; echo {GREETING} > /tmp/www/index.html; trap 'exit 0' TERM; "
    "/bin/busybox httpd -f -p 80 -h /tmp/www & wait"
)


def fixed_port(server):
    return 1024 + server.port - EPHEMERAL_LOW


def dynamic_port(server):
    return 61000 + server.port % 4500


@pytest.fixture(scope="module")
def server(images):
    """A server whose dynamic host port range is a single port of its own."""
    def single_port(server):
        port = dynamic_port(server)
        return ["--host-port-range", f"{port}-{port}"]

    with running_server(images, single_port) as server:
        yield server


def bridge_definition(family, host_port):
    mapping = {"containerPort": 80, "protocol": "tcp"}
    if host_port is not None:
        mapping["hostPort"] = host_port
    return {
        "family": family,
        "requiresCompatibilities": ["EC2"],
        "networkMode": "bridge",
        "cpu": "256",
        "memory": "512",
        "containerDefinitions": [container("web", SERVE, portMappings=[mapping])],
    }


def register(server, family, host_port):
    response = server.ecs.register_task_definition(**bridge_definition(family, host_port))
    return response["taskDefinition"]


def run_ec2(server, definition, **extra):
    return server.ecs.run_task(
        cluster="default", taskDefinition=definition, launchType="EC2", **extra
    )


def run_ec2_cli(server, definition):
    """RunTask through the stock AWS CLI."""
    return server.aws(
        "run-task", "--task-definition", definition, "--launch-type", "EC2"
    ).json


def fetch(address, port):
    """GET / from the host; the body, or None while nothing answers."""
    try:
        with socket.create_connection((address, port), timeout=5) as connection:
            connection.sendall(b"GET / HTTP/1.0\r\nHost: skiff\r\n\r\n")
            data = b""
            while chunk := connection.recv(4096):
                data += chunk
    except OSError:
        return None
    return data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()


def answers(address, port):
    return wait_until(
        lambda: fetch(address, port) == GREETING,
        timeout=30,
        message=f"{GREETING!r} from {address}:{port}",
    )


def gateway(server):
    return f"{server.subnet_prefix}.1"


def dnat_rules(server):
    """The DNAT rules in the server's bridge table, as text."""
    listing = subprocess.run(
        ["nft", "-j", "list", "table", "ip", f"skiff_{server.bridge}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rules = [o["rule"] for o in json.loads(listing)["nftables"] if "rule" in o]
    return [r for r in rules if any("dnat" in statement for statement in r["expr"])]


def stop(server, task):
    server.ecs.stop_task(cluster="default", task=task["taskArn"])
    server.wait_stopped([task])


def test_fixed_host_port_is_reachable_exclusive_and_released(server, unique):
    host_port = fixed_port(server)
    definition = register(server, unique, host_port)
    assert definition["compatibilities"] == ["EXTERNAL", "EC2"]
    assert definition["networkMode"] == "bridge"

    response = run_ec2_cli(server, definition["taskDefinitionArn"])
    assert response["failures"] == []
    [task] = response["tasks"]
    assert task["launchType"] == "EC2"
    assert task["attachments"] == []
    binding = {"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": host_port, "protocol": "tcp"}
    assert task["containers"][0]["networkBindings"] == [binding]
    server.wait_status([task], "RUNNING")
    assert server.describe(task)["containers"][0]["networkBindings"] == [binding]
    answers("127.0.0.1", host_port)
    answers(gateway(server), host_port)
    assert len(dnat_rules(server)) == 1

    # A second task asking for the same port is not placed, and says why.
    refused = run_ec2(server, definition["taskDefinitionArn"])
    assert refused["tasks"] == []
    [failure] = refused["failures"]
    assert failure["reason"] == "RESOURCE:PORTS"
    assert f"{host_port}/tcp" in failure["detail"] and task_id(task) in failure["detail"]

    stop(server, task)
    assert dnat_rules(server) == [], "a stopped task left DNAT rules"
    assert fetch("127.0.0.1", host_port) is None

    # The port is free again.
    [again] = run_ec2(server, definition["taskDefinitionArn"])["tasks"]
    assert again["containers"][0]["networkBindings"] == [binding]
    server.wait_status([again], "RUNNING")
    answers("127.0.0.1", host_port)
    stop(server, again)
    assert dnat_rules(server) == []


def test_dynamic_host_ports_come_from_the_configured_range(server, unique):
    definition = register(server, unique, None)
    [task] = run_ec2(server, definition["taskDefinitionArn"])["tasks"]
    [binding] = task["containers"][0]["networkBindings"]
    assert binding["hostPort"] == dynamic_port(server), binding
    server.wait_status([task], "RUNNING")
    answers("127.0.0.1", binding["hostPort"])
    answers(gateway(server), binding["hostPort"])

    # The range has one port: the next dynamic mapping waits for it.
    exhausted = run_ec2(server, definition["taskDefinitionArn"])
    [failure] = exhausted["failures"]
    assert failure["reason"] == "RESOURCE:PORTS"
    assert "--host-port-range" in failure["detail"]
    stop(server, task)
    assert dnat_rules(server) == []


def test_bridge_definitions_are_refused_where_ecs_refuses_them(server, unique):
    definition = register(server, unique, None)["taskDefinitionArn"]
    fargate = server.aws(
        "run-task", "--task-definition", definition, "--launch-type", "FARGATE", check=False
    )
    assert fargate.returncode != 0
    assert "does not support launch_type FARGATE" in fargate.stderr, fargate
    with pytest.raises(server.ecs.exceptions.InvalidParameterException) as error:
        server.ecs.run_task(taskDefinition=definition, launchType="FARGATE")
    assert "does not support launch_type FARGATE" in str(error.value)
    with pytest.raises(server.ecs.exceptions.InvalidParameterException) as error:
        run_ec2(
            server,
            definition,
            networkConfiguration={"awsvpcConfiguration": {"subnets": ["subnet-any"]}},
        )
    assert "Network Configuration is not valid" in str(error.value)

    fargate_bridge = bridge_definition(f"{unique}-f", 8080)
    fargate_bridge["requiresCompatibilities"] = ["FARGATE"]
    with pytest.raises(server.ecs.exceptions.ClientException) as error:
        server.ecs.register_task_definition(**fargate_bridge)
    assert "Fargate only supports network mode 'awsvpc'" in str(error.value)
    host_mode = bridge_definition(f"{unique}-h", 8080)
    host_mode["networkMode"] = "host"
    with pytest.raises(server.ecs.exceptions.ClientException) as error:
        server.ecs.register_task_definition(**host_mode)
    assert "'host' is not supported" in str(error.value)
    twice = bridge_definition(f"{unique}-t", 8080)
    twice["containerDefinitions"][0]["portMappings"].append(
        {"containerPort": 81, "hostPort": 8080}
    )
    with pytest.raises(server.ecs.exceptions.ClientException) as error:
        server.ecs.register_task_definition(**twice)
    assert "Host port 8080/tcp is mapped more than once" in str(error.value)
