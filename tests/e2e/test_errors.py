"""Bad input: Fargate's validation errors with ECS's error types and useful messages, and
the wire protocol's failures (serialization, unknown operations, SigV4)."""

import json
import urllib.error
import urllib.request

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import LONG_RUNNING, REGION, container, fargate_definition

TARGET = "AmazonEC2ContainerServiceV20141113."


def refused(call):
    """Runs a boto3 call that must fail; returns (code, message, HTTP status)."""
    with pytest.raises(ClientError) as excinfo:
        call()
    error = excinfo.value.response
    assert error["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid")
    return (
        error["Error"]["Code"],
        error["Error"]["Message"],
        error["ResponseMetadata"]["HTTPStatusCode"],
    )


def main_container(**extra):
    return container("main", "true", **extra)


# (what is wrong, the RegisterTaskDefinition request, words the message must contain)
INVALID_DEFINITIONS = [
    ("cpu/memory pair", fargate_definition("bad", [main_container()], "256", "4096"), "256"),
    ("cpu not a size", fargate_definition("bad", [main_container()], "300", "512"), "cpu"),
    ("memory words", fargate_definition("bad", [main_container()], "256", "lots"), "memory"),
    (
        "cpu missing",
        {
            "family": "bad",
            "requiresCompatibilities": ["FARGATE"],
            "networkMode": "awsvpc",
            "memory": "512",
            "containerDefinitions": [main_container()],
        },
        "cpu",
    ),
    (
        "network mode bridge",
        fargate_definition("bad", [main_container()], networkMode="bridge"),
        "awsvpc",
    ),
    ("privileged", fargate_definition("bad", [main_container(privileged=True)]), "privileged"),
    (
        "capability other than SYS_PTRACE",
        fargate_definition(
            "bad",
            [main_container(linuxParameters={"capabilities": {"add": ["NET_ADMIN"]}})],
        ),
        "SYS_PTRACE",
    ),
    ("stopTimeout 121", fargate_definition("bad", [main_container(stopTimeout=121)]), "120"),
    (
        "ephemeralStorage 20",
        fargate_definition("bad", [main_container()], ephemeralStorage={"sizeInGiB": 20}),
        "21",
    ),
    (
        "hostPort differs from containerPort",
        fargate_definition(
            "bad", [main_container(portMappings=[{"containerPort": 80, "hostPort": 8080}])]
        ),
        "hostPort",
    ),
    (
        "no essential container",
        fargate_definition("bad", [main_container(essential=False)]),
        "essential",
    ),
    (
        "dependsOn cycle",
        fargate_definition(
            "bad",
            [
                container("a", "true", dependsOn=[{"containerName": "b", "condition": "START"}]),
                container("b", "true", dependsOn=[{"containerName": "a", "condition": "START"}]),
            ],
        ),
        "cycle",
    ),
    (
        "11 containers",
        fargate_definition("bad", [container(f"c{i}", "true") for i in range(11)]),
        "10",
    ),
    (
        "duplicate container names",
        fargate_definition("bad", [container("same", "true"), container("same", "true")]),
        "same",
    ),
    ("family with spaces", fargate_definition("bad family", [main_container()]), "family"),
    (
        "links",
        fargate_definition("bad", [main_container(links=["db"])]),
        "links",
    ),
    (
        "container memory above the task's",
        fargate_definition("bad", [main_container(memory=1024)]),
        "memory",
    ),
]


@pytest.mark.parametrize(
    "request_body,needle",
    [(body, needle) for _, body, needle in INVALID_DEFINITIONS],
    ids=[what for what, _, _ in INVALID_DEFINITIONS],
)
def test_invalid_task_definitions(server, request_body, needle):
    code, message, status = refused(
        lambda: server.ecs.register_task_definition(**request_body)
    )
    assert code == "ClientException", message
    assert status == 400
    assert needle.lower() in message.lower(), message


def test_sys_ptrace_is_allowed(server, unique):
    server.register(
        unique, [main_container(linuxParameters={"capabilities": {"add": ["SYS_PTRACE"]}})]
    )


def test_invalid_definition_through_the_cli(server, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(fargate_definition("bad", [main_container(privileged=True)])))
    result = server.aws(
        "register-task-definition", "--cli-input-json", f"file://{path}", check=False
    )
    assert result.returncode != 0
    assert "ClientException" in result.stderr
    assert "privileged" in result.stderr


def test_run_task_errors(server, unique):
    definition = server.register(unique, [main_container()])
    code, message, _ = refused(lambda: server.ecs.run_task(taskDefinition=definition, count=11))
    assert code == "InvalidParameterException"
    assert "10" in message
    code, _, _ = refused(
        lambda: server.ecs.run_task(taskDefinition=definition, cluster="no-such-" + unique)
    )
    assert code == "ClusterNotFoundException"
    code, message, _ = refused(lambda: server.ecs.run_task(taskDefinition="nothing-" + unique))
    assert code == "ClientException"
    assert "nothing-" + unique in message
    code, _, _ = refused(
        lambda: server.ecs.run_task(taskDefinition=definition, launchType="EC2")
    )
    assert code == "InvalidParameterException"
    code, _, _ = refused(
        lambda: server.ecs.run_task(
            taskDefinition=definition,
            launchType="FARGATE",
            capacityProviderStrategy=[{"capacityProvider": "FARGATE"}],
        )
    )
    assert code == "InvalidParameterException"
    code, _, _ = refused(
        lambda: server.ecs.run_task(
            taskDefinition=definition, overrides={"cpu": "256", "memory": "9999"}
        )
    )
    assert code in ("ClientException", "InvalidParameterException")


def test_other_operation_errors(server, unique):
    code, _, _ = refused(lambda: server.ecs.describe_tasks(tasks=[]))
    assert code == "InvalidParameterException"
    code, _, _ = refused(lambda: server.ecs.describe_tasks(tasks=["x"] * 101))
    assert code == "InvalidParameterException"
    code, _, _ = refused(lambda: server.ecs.list_tasks(desiredStatus="SLEEPING"))
    assert code == "InvalidParameterException"
    code, _, _ = refused(lambda: server.ecs.list_tasks(cluster="nothing-" + unique))
    assert code == "ClusterNotFoundException"
    definition = server.register(unique, [container("main", LONG_RUNNING)])
    [task] = server.run(definition)
    code, message, _ = refused(
        lambda: server.ecs.stop_task(task=task["taskArn"], reason="x" * 256)
    )
    assert code == "InvalidParameterException"
    assert "255" in message
    server.ecs.stop_task(task=task["taskArn"])
    server.wait_stopped([task])


# --- the wire ----------------------------------------------------------------------------


def raw_post(server, body, target, credentials=None, sign=True, headers=None):
    """POSTs `body` to the server, SigV4-signed with `credentials` unless sign=False;
    returns (status, headers, parsed body)."""
    request = AWSRequest(
        method="POST",
        url=server.endpoint + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": target,
            **(headers or {}),
        },
    )
    if sign:
        key, secret = credentials or server.credentials()
        SigV4Auth(Credentials(key, secret), "ecs", REGION).add_auth(request)
    prepared = urllib.request.Request(
        server.endpoint + "/",
        data=body if isinstance(body, bytes) else body.encode(),
        headers=dict(request.headers.items()),
        method="POST",
    )
    try:
        with urllib.request.urlopen(prepared, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read() or b"{}")


def test_a_signed_raw_request_works(server):
    status, headers, body = raw_post(server, "{}", TARGET + "ListClusters")
    assert status == 200
    assert headers["x-amzn-RequestId"]
    assert any(arn.endswith("cluster/default") for arn in body["clusterArns"])


def test_malformed_json_is_a_serialization_error(server):
    for body in ('{"clusterName": ', '{"clusterName": 42}', "[1, 2]"):
        status, headers, error = raw_post(server, body, TARGET + "CreateCluster")
        assert status == 400, body
        assert error["__type"] == "SerializationException", error
        assert error["message"]
        assert headers["x-amzn-RequestId"]


def test_unknown_operation(server):
    status, headers, error = raw_post(server, "{}", TARGET + "LaunchRockets")
    assert status == 400
    assert error["__type"] == "UnknownOperationException"
    assert "LaunchRockets" in error["message"]
    assert headers["x-amzn-RequestId"]
    status, _, error = raw_post(server, "{}", "SomethingElse.ListClusters")
    assert status == 400
    assert error["__type"] == "UnknownOperationException"


def test_unsigned_request(server):
    status, headers, error = raw_post(server, "{}", TARGET + "ListClusters", sign=False)
    assert status == 403
    assert error["__type"] == "MissingAuthenticationTokenException"
    assert headers["x-amzn-RequestId"]


def test_wrong_secret(server):
    key, _ = server.credentials()
    status, headers, error = raw_post(
        server, "{}", TARGET + "ListClusters", credentials=(key, "not-the-secret")
    )
    assert status == 400
    assert error["__type"] == "InvalidSignatureException"
    assert "signature" in error["message"].lower()
    assert headers["x-amzn-RequestId"]

    client = server.boto_client(key, "not-the-secret")
    code, _, status = refused(client.list_clusters)
    assert (code, status) == ("InvalidSignatureException", 400)


def test_unknown_access_key(server):
    status, headers, error = raw_post(
        server, "{}", TARGET + "ListClusters", credentials=("AKIAUNKNOWN000000000", "x")
    )
    assert status == 400
    assert error["__type"] == "UnrecognizedClientException"
    assert headers["x-amzn-RequestId"]

    client = server.boto_client("AKIAUNKNOWN000000000", "whatever")
    code, _, status = refused(client.list_clusters)
    assert (code, status) == ("UnrecognizedClientException", 400)


def test_a_tampered_body_fails_the_signature(server):
    key, secret = server.credentials()
    request = AWSRequest(
        method="POST",
        url=server.endpoint + "/",
        data="{}",
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": TARGET + "ListClusters",
        },
    )
    SigV4Auth(Credentials(key, secret), "ecs", REGION).add_auth(request)
    tampered = urllib.request.Request(
        server.endpoint + "/",
        data=b'{"maxResults": 1}',
        headers=dict(request.headers.items()),
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(tampered, timeout=10)
    assert excinfo.value.code == 400
    assert json.loads(excinfo.value.read())["__type"] == "InvalidSignatureException"


def test_every_response_has_a_request_id(server):
    ok = server.ecs.list_clusters()
    assert ok["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    assert ok["ResponseMetadata"]["RequestId"]
    ids = {server.ecs.list_clusters()["ResponseMetadata"]["RequestId"] for _ in range(3)}
    assert len(ids) == 3, "request ids must be unique"
    # Native endpoints too, even refused ones.
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(server.endpoint + "/skiff/v1/images", timeout=10)
    assert excinfo.value.headers["x-amzn-RequestId"]
