"""Tasks: RunTask, StopTask, DescribeTasks, ListTasks and the waiters, through the AWS
CLI and boto3, with response shapes as botocore parses them."""

import datetime
import json

import pytest
from botocore.exceptions import ClientError, WaiterError

from conftest import LONG_RUNNING, container, task_id

TIMESTAMPS = (
    "createdAt",
    "pullStartedAt",
    "pullStoppedAt",
    "startedAt",
    "connectivityAt",
    "stoppingAt",
    "executionStoppedAt",
    "stoppedAt",
)


@pytest.fixture(scope="module")
def long_running(server):
    """A definition whose container runs until stopped."""
    return server.register("tasks-long", [container("main", LONG_RUNNING)])


@pytest.fixture(scope="module")
def printer(server):
    """A definition whose container prints $GREETING and its arguments, then exits."""
    return server.register(
        "tasks-printer",
        [
            container(
                "main",
                'echo "greeting=$GREETING extra=$EXTRA"',
                environment=[
                    {"name": "GREETING", "value": "hello"},
                    {"name": "EXTRA", "value": "definition"},
                ],
            )
        ],
    )


def default_subnet(server):
    """The default VPC's subnet, as a new account has one."""
    subnets = server.query_client("ec2").describe_subnets()["Subnets"]
    return next(s["SubnetId"] for s in subnets if s["DefaultForAz"])


def test_run_task_with_boto3_shapes(server, printer):
    subnet = default_subnet(server)
    response = server.ecs.run_task(
        taskDefinition=printer,
        launchType="FARGATE",
        startedBy="e2e-shapes",
        group="batch:shapes",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": [subnet], "assignPublicIp": "DISABLED"}
        },
    )
    assert response["failures"] == []
    [task] = response["tasks"]
    assert task["lastStatus"] == "PROVISIONING"
    assert task["desiredStatus"] == "RUNNING"
    assert task["launchType"] == "FARGATE"
    assert task["startedBy"] == "e2e-shapes"
    assert task["group"] == "batch:shapes"
    assert task["taskDefinitionArn"] == printer
    assert task["clusterArn"].endswith(":cluster/default")
    assert task["taskArn"].startswith("arn:aws:ecs:us-east-1:000000000000:task/default/")
    assert len(task_id(task)) == 32
    assert isinstance(task["createdAt"], datetime.datetime)
    assert isinstance(task["version"], int)
    details = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
    assert details["subnetId"] == subnet

    [stopped] = server.wait_stopped([task])
    for field in TIMESTAMPS:
        assert isinstance(stopped[field], datetime.datetime), field
    assert stopped["version"] > task["version"]
    [main] = stopped["containers"]
    assert main["exitCode"] == 0
    assert main["name"] == "main"
    assert main["taskArn"] == task["taskArn"]
    assert main["imageDigest"].startswith("sha256:")
    assert server.logs(task).stdout == "greeting=hello extra=definition\n"


def test_run_task_with_the_cli(server, printer):
    out = server.aws(
        "run-task",
        "--task-definition",
        printer,
        "--launch-type",
        "FARGATE",
        "--count",
        "2",
        "--started-by",
        "e2e-cli",
    ).json
    assert out["failures"] == []
    assert len(out["tasks"]) == 2
    arns = [t["taskArn"] for t in out["tasks"]]
    assert len(set(arns)) == 2
    # Timestamps are epoch seconds on the wire.
    assert isinstance(out["tasks"][0]["createdAt"], (int, float))
    server.aws("wait", "tasks-stopped", "--tasks", *arns)
    described = server.aws("describe-tasks", "--tasks", *arns).json
    assert [t["lastStatus"] for t in described["tasks"]] == ["STOPPED", "STOPPED"]
    assert [t["containers"][0]["exitCode"] for t in described["tasks"]] == [0, 0]


def test_overrides(server, printer):
    [task] = server.run(
        printer,
        overrides={
            "cpu": "512",
            "memory": "2048",
            "containerOverrides": [
                {
                    "name": "main",
                    "environment": [{"name": "EXTRA", "value": "override"}],
                }
            ],
        },
    )
    assert (task["cpu"], task["memory"]) == ("512", "2048")
    assert task["overrides"]["cpu"] == "512"
    server.wait_stopped([task])
    assert server.logs(task).stdout == "greeting=hello extra=override\n"

    [task] = server.run(
        printer,
        overrides={
            "containerOverrides": [
                {
                    "name": "main",
                    "command": ["sh", "-c", "echo replaced; exit 4"],
                    "cpu": 128,
                    "memory": 256,
                }
            ]
        },
    )
    assert (task["containers"][0]["cpu"], task["containers"][0]["memory"]) == ("128", "256")
    [stopped] = server.wait_stopped([task])
    assert stopped["containers"][0]["exitCode"] == 4
    assert server.logs(task).stdout == "replaced\n"

    with pytest.raises(ClientError) as excinfo:
        server.ecs.run_task(
            taskDefinition=printer,
            overrides={"containerOverrides": [{"name": "ghost", "command": ["true"]}]},
        )
    assert excinfo.value.response["Error"]["Code"] in (
        "InvalidParameterException",
        "ClientException",
    )
    assert "ghost" in excinfo.value.response["Error"]["Message"]

    with pytest.raises(ClientError) as excinfo:
        server.ecs.run_task(taskDefinition=printer, overrides={"cpu": "256", "memory": "4096"})
    assert excinfo.value.response["Error"]["Code"] in (
        "InvalidParameterException",
        "ClientException",
    )


def test_count_one_to_ten(server, printer):
    tasks = server.run(printer, count=10, startedBy="e2e-ten")
    assert len({t["taskArn"] for t in tasks}) == 10
    addresses = {
        {d["name"]: d["value"] for d in t["attachments"][0]["details"]}["privateIPv4Address"]
        for t in tasks
    }
    assert len(addresses) == 10, "every task gets its own address"
    stopped = server.wait_stopped(tasks)
    assert all(t["containers"][0]["exitCode"] == 0 for t in stopped)
    for bad in (0, 11):
        with pytest.raises(ClientError) as excinfo:
            server.ecs.run_task(taskDefinition=printer, count=bad)
        assert excinfo.value.response["Error"]["Code"] == "InvalidParameterException"


def test_client_token_idempotency(server, printer, unique):
    def run(count=2, **extra):
        return server.ecs.run_task(
            taskDefinition=printer, count=count, startedBy=unique, clientToken=unique, **extra
        )["tasks"]

    first = run()
    again = run()
    assert [t["taskArn"] for t in again] == [t["taskArn"] for t in first]
    cli = server.aws(
        "run-task", "--task-definition", printer, "--count", "2", "--started-by", unique,
        "--client-token", unique,
    ).json
    assert [t["taskArn"] for t in cli["tasks"]] == [t["taskArn"] for t in first]

    server.wait_stopped(first)
    made = []
    for desired in ("RUNNING", "STOPPED"):
        made += server.ecs.list_tasks(startedBy=unique, desiredStatus=desired)["taskArns"]
    assert sorted(made) == sorted(t["taskArn"] for t in first), "the token made extra tasks"

    for changed in ({"count": 3}, {"group": "other"}):
        with pytest.raises(ClientError) as excinfo:
            run(**changed)
        code = excinfo.value.response["Error"]["Code"]
        assert code in ("ConflictException", "InvalidParameterException", "ClientException")
        assert "clientToken" in excinfo.value.response["Error"]["Message"]

    with pytest.raises(ClientError) as excinfo:
        server.ecs.run_task(taskDefinition=printer, clientToken="x" * 65)
    assert excinfo.value.response["Error"]["Code"] == "InvalidParameterException"


def test_stop_task(server, long_running):
    [task] = server.run(long_running)
    server.wait_status([task], "RUNNING")
    stopped = server.ecs.stop_task(task=task["taskArn"], reason="e2e says stop")["task"]
    assert stopped["desiredStatus"] == "STOPPED"
    assert stopped["stopCode"] == "UserInitiated"
    assert stopped["stoppedReason"] == "e2e says stop"
    [final] = server.wait_stopped([task])
    assert final["stoppedReason"] == "e2e says stop"
    assert final["containers"][0]["exitCode"] == 0

    # Stopping it again is harmless and keeps the first reason.
    again = server.aws("stop-task", "--task", task_id(task), "--reason", "second").json
    assert again["task"]["stoppedReason"] == "e2e says stop"

    with pytest.raises(ClientError) as excinfo:
        server.ecs.stop_task(task="0" * 32)
    assert excinfo.value.response["Error"]["Code"] == "InvalidParameterException"


def test_describe_tasks_reports_missing(server, printer):
    [task] = server.run(printer)
    unknown = "f" * 32
    response = server.ecs.describe_tasks(tasks=[task["taskArn"], unknown])
    assert [t["taskArn"] for t in response["tasks"]] == [task["taskArn"]]
    assert response["failures"] == [
        {
            "arn": f"arn:aws:ecs:us-east-1:000000000000:task/default/{unknown}",
            "reason": "MISSING",
        }
    ]
    cli = server.aws("describe-tasks", "--tasks", unknown).json
    assert cli["tasks"] == []
    assert cli["failures"][0]["reason"] == "MISSING"
    with pytest.raises(ClientError) as excinfo:
        server.ecs.describe_tasks(tasks=[task["taskArn"]], cluster="no-such-cluster")
    assert excinfo.value.response["Error"]["Code"] == "ClusterNotFoundException"
    server.wait_stopped([task])


def test_list_tasks_filters(server, long_running, printer, unique):
    server.ecs.create_cluster(clusterName=unique)
    runners = server.run(long_running, cluster=unique, count=2, startedBy="alpha")
    finished = server.run(printer, cluster=unique, startedBy="beta")
    server.wait_stopped(finished, cluster=unique)
    server.wait_status(runners, "RUNNING", cluster=unique)

    def listed(**kwargs):
        pages = server.ecs.get_paginator("list_tasks").paginate(cluster=unique, **kwargs)
        return sorted(pages.build_full_result()["taskArns"])

    runner_arns = sorted(t["taskArn"] for t in runners)
    finished_arns = [t["taskArn"] for t in finished]
    assert listed() == runner_arns
    assert listed(desiredStatus="RUNNING") == runner_arns
    assert listed(desiredStatus="STOPPED") == finished_arns
    assert listed(startedBy="alpha") == runner_arns
    assert listed(startedBy="beta") == []  # the STOPPED one is not in the RUNNING list
    assert listed(startedBy="beta", desiredStatus="STOPPED") == finished_arns
    assert listed(family="tasks-long") == runner_arns
    assert listed(family="tasks-printer", desiredStatus="STOPPED") == finished_arns
    assert listed(family="nothing-like-it") == []

    page = server.ecs.list_tasks(cluster=unique, maxResults=1)
    assert len(page["taskArns"]) == 1 and page["nextToken"]
    rest = server.ecs.list_tasks(cluster=unique, maxResults=1, nextToken=page["nextToken"])
    assert sorted(page["taskArns"] + rest["taskArns"]) == runner_arns
    assert "nextToken" not in rest

    cli = server.aws(
        "list-tasks", "--cluster", unique, "--started-by", "alpha", "--page-size", "1"
    ).json
    assert sorted(cli["taskArns"]) == runner_arns
    cli = server.aws(
        "list-tasks", "--cluster", unique, "--family", "tasks-printer", "--desired-status",
        "STOPPED",
    ).json
    assert cli["taskArns"] == finished_arns

    for t in runners:
        server.ecs.stop_task(cluster=unique, task=t["taskArn"])
    server.wait_stopped(runners, cluster=unique)
    assert listed() == []


def test_cli_waiters(server, long_running):
    tasks = server.aws(
        "run-task", "--task-definition", long_running, "--count", "2"
    ).json["tasks"]
    arns = [t["taskArn"] for t in tasks]
    server.aws("wait", "tasks-running", "--tasks", *arns)
    described = server.ecs.describe_tasks(tasks=arns)["tasks"]
    assert [t["lastStatus"] for t in described] == ["RUNNING", "RUNNING"]
    for arn in arns:
        server.aws("stop-task", "--task", arn)
    server.aws("wait", "tasks-stopped", "--tasks", *arns)
    described = server.ecs.describe_tasks(tasks=arns)["tasks"]
    assert [t["lastStatus"] for t in described] == ["STOPPED", "STOPPED"]


def test_boto3_waiters(server, long_running, printer):
    [task] = server.run(long_running)
    fast = {"Delay": 1, "MaxAttempts": 60}
    server.ecs.get_waiter("tasks_running").wait(tasks=[task["taskArn"]], WaiterConfig=fast)
    assert server.describe(task)["lastStatus"] == "RUNNING"
    server.ecs.stop_task(task=task["taskArn"])
    server.ecs.get_waiter("tasks_stopped").wait(tasks=[task["taskArn"]], WaiterConfig=fast)
    assert server.describe(task)["lastStatus"] == "STOPPED"

    # tasks_running fails fast on a task that stopped, and on a MISSING one.
    [quick] = server.run(printer)
    server.wait_stopped([quick])
    with pytest.raises(WaiterError):
        server.ecs.get_waiter("tasks_running").wait(tasks=[quick["taskArn"]], WaiterConfig=fast)
    with pytest.raises(WaiterError):
        server.ecs.get_waiter("tasks_running").wait(tasks=["e" * 32], WaiterConfig=fast)


def test_run_task_from_cli_input_json(server, printer, tmp_path):
    # A RunTask request written as --cli-input-json round-trips through the CLI.
    request = {
        "taskDefinition": printer,
        "launchType": "FARGATE",
        "count": 1,
        "tags": [{"key": "via", "value": "cli-input-json"}],
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(request))
    out = server.aws("run-task", "--cli-input-json", f"file://{path}").json
    [task] = out["tasks"]
    assert task["tags"] == [{"key": "via", "value": "cli-input-json"}]
    server.wait_stopped([task])
