"""Task definitions: RegisterTaskDefinition, DescribeTaskDefinition, ListTaskDefinitions,
ListTaskDefinitionFamilies, DeregisterTaskDefinition, through the AWS CLI and boto3."""

import datetime
import json

import pytest
from botocore.exceptions import ClientError

from conftest import container, fargate_definition

ACCOUNT = "000000000000"


def definition_arn(family, revision):
    return f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{family}:{revision}"


def test_register_with_the_cli_counts_revisions(server, unique, tmp_path):
    request = fargate_definition(
        unique,
        [container("web", "echo hi", portMappings=[{"containerPort": 8080}])],
        cpu="1 vCPU",
        memory="2 GB",
    )
    path = tmp_path / "web.json"
    path.write_text(json.dumps(request))
    arns = []
    for expected in (1, 2, 3):
        registered = server.aws(
            "register-task-definition", "--cli-input-json", f"file://{path}"
        ).json["taskDefinition"]
        assert registered["revision"] == expected
        assert registered["family"] == unique
        assert registered["status"] == "ACTIVE"
        arns.append(registered["taskDefinitionArn"])
    assert arns == [definition_arn(unique, r) for r in (1, 2, 3)]
    # "1 vCPU" / "2 GB" are normalised to CPU units and MiB.
    assert registered["cpu"] == "1024"
    assert registered["memory"] == "2048"
    assert registered["networkMode"] == "awsvpc"
    assert registered["requiresCompatibilities"] == ["FARGATE"]
    assert "FARGATE" in registered["compatibilities"]
    web = registered["containerDefinitions"][0]
    assert web["portMappings"][0]["containerPort"] == 8080
    assert web["essential"] is True

    described = server.aws("describe-task-definition", "--task-definition", unique).json
    assert described["taskDefinition"]["revision"] == 3
    first = server.aws(
        "describe-task-definition", "--task-definition", f"{unique}:1"
    ).json["taskDefinition"]
    assert first["taskDefinitionArn"] == arns[0]


def test_register_and_describe_with_boto3(server, unique):
    registered = server.ecs.register_task_definition(
        **fargate_definition(
            unique,
            [
                container(
                    "app",
                    "env",
                    environment=[{"name": "A", "value": "1"}],
                    workingDirectory="/tmp",
                    stopTimeout=10,
                    ulimits=[{"name": "nofile", "softLimit": 1024, "hardLimit": 2048}],
                )
            ],
            cpu="0.5 vCPU",
            memory="1GB",
            ephemeralStorage={"sizeInGiB": 30},
        )
    )["taskDefinition"]
    assert (registered["cpu"], registered["memory"]) == ("512", "1024")
    assert registered["ephemeralStorage"] == {"sizeInGiB": 30}
    assert isinstance(registered["registeredAt"], datetime.datetime)
    for identifier in (unique, f"{unique}:1", registered["taskDefinitionArn"]):
        described = server.ecs.describe_task_definition(taskDefinition=identifier)
        app = described["taskDefinition"]["containerDefinitions"][0]
        assert app["environment"] == [{"name": "A", "value": "1"}]
        assert app["workingDirectory"] == "/tmp"
        assert app["stopTimeout"] == 10
        assert app["ulimits"] == [{"name": "nofile", "softLimit": 1024, "hardLimit": 2048}]
        assert app["command"] == ["sh", "-c", "env"]


def test_describe_unknown_definition(server, unique):
    for identifier in (unique, f"{unique}:4", definition_arn(unique, 2)):
        with pytest.raises(ClientError) as excinfo:
            server.ecs.describe_task_definition(taskDefinition=identifier)
        assert excinfo.value.response["Error"]["Code"] == "ClientException"
        assert unique in excinfo.value.response["Error"]["Message"]
    cli = server.aws("describe-task-definition", "--task-definition", unique, check=False)
    assert cli.returncode != 0
    assert "ClientException" in cli.stderr


def register_revisions(server, family, count):
    return [server.register(family, [container("main", "true")]) for _ in range(count)]


def test_list_task_definitions_filters_sorts_and_pages(server, unique):
    mine = register_revisions(server, unique, 5)
    other = register_revisions(server, unique + "x", 2)

    listed = server.ecs.list_task_definitions(familyPrefix=unique)["taskDefinitionArns"]
    assert listed == mine, "familyPrefix names the whole family, in revision order"
    descending = server.ecs.list_task_definitions(familyPrefix=unique, sort="DESC")
    assert descending["taskDefinitionArns"] == list(reversed(mine))

    pages, token, seen = 0, None, []
    while True:
        kwargs = {"familyPrefix": unique, "sort": "DESC", "maxResults": 2}
        if token:
            kwargs["nextToken"] = token
        page = server.ecs.list_task_definitions(**kwargs)
        assert len(page["taskDefinitionArns"]) <= 2
        seen += page["taskDefinitionArns"]
        pages += 1
        token = page.get("nextToken")
        if not token:
            break
    assert seen == list(reversed(mine))
    assert pages == 3

    everything = server.ecs.get_paginator("list_task_definitions").paginate(
        PaginationConfig={"PageSize": 3}
    )
    all_arns = everything.build_full_result()["taskDefinitionArns"]
    assert set(mine + other) <= set(all_arns)
    assert len(all_arns) == len(set(all_arns))

    cli = server.aws(
        "list-task-definitions", "--family-prefix", unique, "--sort", "DESC", "--page-size", "2"
    ).json
    assert cli["taskDefinitionArns"] == list(reversed(mine))

    server.ecs.deregister_task_definition(taskDefinition=f"{unique}:2")
    active = server.ecs.list_task_definitions(familyPrefix=unique)["taskDefinitionArns"]
    assert active == [a for a in mine if not a.endswith(":2")]
    inactive = server.ecs.list_task_definitions(familyPrefix=unique, status="INACTIVE")
    assert inactive["taskDefinitionArns"] == [definition_arn(unique, 2)]

    with pytest.raises(ClientError) as excinfo:
        server.ecs.list_task_definitions(familyPrefix=unique, maxResults=101)
    assert excinfo.value.response["Error"]["Code"] in (
        "InvalidParameterException",
        "ClientException",
    )


def test_list_task_definition_families(server, unique):
    families = [f"{unique}-{name}" for name in ("alpha", "beta", "gamma")]
    for family in families:
        register_revisions(server, family, 1)
    listed = server.ecs.list_task_definition_families(familyPrefix=unique)["families"]
    assert listed == families

    paged = server.ecs.get_paginator("list_task_definition_families").paginate(
        familyPrefix=unique, PaginationConfig={"PageSize": 1}
    )
    assert paged.build_full_result()["families"] == families

    cli = server.aws("list-task-definition-families", "--family-prefix", unique).json
    assert cli["families"] == families

    # A family with no ACTIVE revision left is INACTIVE.
    server.ecs.deregister_task_definition(taskDefinition=f"{families[1]}:1")
    active = server.ecs.list_task_definition_families(familyPrefix=unique, status="ACTIVE")
    assert active["families"] == [families[0], families[2]]
    inactive = server.ecs.list_task_definition_families(
        familyPrefix=unique, status="INACTIVE"
    )
    assert inactive["families"] == [families[1]]
    every = server.ecs.list_task_definition_families(familyPrefix=unique, status="ALL")
    assert every["families"] == families


def test_deregister(server, unique):
    arns = register_revisions(server, unique, 2)
    deregistered = server.aws(
        "deregister-task-definition", "--task-definition", f"{unique}:1"
    ).json["taskDefinition"]
    assert deregistered["status"] == "INACTIVE"
    assert deregistered["taskDefinitionArn"] == arns[0]

    described = server.ecs.describe_task_definition(taskDefinition=arns[0])["taskDefinition"]
    assert described["status"] == "INACTIVE"
    assert isinstance(described["deregisteredAt"], datetime.datetime)
    # The family alone now means the latest ACTIVE revision.
    latest = server.ecs.describe_task_definition(taskDefinition=unique)["taskDefinition"]
    assert latest["revision"] == 2

    with pytest.raises(ClientError) as excinfo:
        server.ecs.run_task(taskDefinition=arns[0], launchType="FARGATE")
    assert excinfo.value.response["Error"]["Code"] == "ClientException"
    assert "inactive" in excinfo.value.response["Error"]["Message"].lower()

    with pytest.raises(ClientError) as excinfo:
        server.ecs.deregister_task_definition(taskDefinition=unique)
    assert excinfo.value.response["Error"]["Code"] == "ClientException"
    assert "revision" in excinfo.value.response["Error"]["Message"]

    # Registering again continues the numbering.
    assert register_revisions(server, unique, 1) == [definition_arn(unique, 3)]
