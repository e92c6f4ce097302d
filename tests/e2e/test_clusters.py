"""Clusters and tags: CreateCluster, DescribeClusters, ListClusters, DeleteCluster,
TagResource, UntagResource, ListTagsForResource, through the AWS CLI and boto3."""

import pytest
from botocore.exceptions import ClientError

from conftest import LONG_RUNNING, container

ACCOUNT = "000000000000"


def cluster_arn(name):
    return f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/{name}"


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def test_create_and_describe_with_the_cli(server, unique):
    created = server.aws(
        "create-cluster",
        "--cluster-name",
        unique,
        "--tags",
        "key=team,value=infra",
        "key=env,value=test",
    ).json["cluster"]
    assert created["clusterName"] == unique
    assert created["clusterArn"] == cluster_arn(unique)
    assert created["status"] == "ACTIVE"
    assert set(created["capacityProviders"]) == {"FARGATE", "FARGATE_SPOT"}

    # Creating it again returns the same ACTIVE cluster.
    again = server.aws("create-cluster", "--cluster-name", unique).json["cluster"]
    assert again["clusterArn"] == created["clusterArn"]

    described = server.aws(
        "describe-clusters", "--clusters", unique, "nope-" + unique, "--include", "TAGS"
    ).json
    assert [c["clusterName"] for c in described["clusters"]] == [unique]
    tags = {t["key"]: t["value"] for t in described["clusters"][0]["tags"]}
    assert tags == {"team": "infra", "env": "test"}
    assert described["failures"] == [
        {"arn": cluster_arn("nope-" + unique), "reason": "MISSING"}
    ]

    without_tags = server.aws("describe-clusters", "--clusters", unique).json
    assert without_tags["clusters"][0].get("tags", []) == []


def test_create_and_describe_with_boto3(server, unique):
    created = server.ecs.create_cluster(
        clusterName=unique, tags=[{"key": "owner", "value": "e2e"}]
    )["cluster"]
    assert created["status"] == "ACTIVE"
    described = server.ecs.describe_clusters(
        clusters=[created["clusterArn"], "missing-" + unique], include=["TAGS"]
    )
    cluster = described["clusters"][0]
    assert cluster["clusterName"] == unique
    assert cluster["tags"] == [{"key": "owner", "value": "e2e"}]
    assert cluster["runningTasksCount"] == 0
    assert cluster["pendingTasksCount"] == 0
    assert isinstance(cluster["registeredContainerInstancesCount"], int)
    assert described["failures"] == [
        {"arn": cluster_arn("missing-" + unique), "reason": "MISSING"}
    ]


def test_default_cluster_exists(server):
    described = server.ecs.describe_clusters()
    assert [c["clusterName"] for c in described["clusters"]] == ["default"]
    assert described["clusters"][0]["status"] == "ACTIVE"


def test_invalid_cluster_name_is_refused(server):
    with pytest.raises(ClientError) as excinfo:
        server.ecs.create_cluster(clusterName="bad name!")
    assert error_code(excinfo) == "InvalidParameterException"
    assert "'bad name!'" in excinfo.value.response["Error"]["Message"]
    assert "hyphens" in excinfo.value.response["Error"]["Message"], "say what is allowed"


def test_list_clusters_paginates_with_boto3(server, unique):
    names = [f"{unique}-{i:02}" for i in range(7)]
    for name in names:
        server.ecs.create_cluster(clusterName=name)
    seen = []
    pages = 0
    token = None
    while True:
        kwargs = {"maxResults": 3}
        if token:
            kwargs["nextToken"] = token
        page = server.ecs.list_clusters(**kwargs)
        assert len(page["clusterArns"]) <= 3
        seen += page["clusterArns"]
        pages += 1
        token = page.get("nextToken")
        if not token:
            break
    mine = [a for a in seen if a.split("/")[-1].startswith(unique)]
    assert mine == [cluster_arn(n) for n in names]
    assert len(seen) == len(set(seen)), "a cluster was listed twice"
    assert pages >= 3
    assert cluster_arn("default") in seen

    paginated = server.ecs.get_paginator("list_clusters").paginate(
        PaginationConfig={"PageSize": 2}
    )
    assert set(paginated.build_full_result()["clusterArns"]) == set(seen)


def test_list_clusters_paginates_with_the_cli(server, unique):
    names = [f"{unique}-{i}" for i in range(5)]
    for name in names:
        server.ecs.create_cluster(clusterName=name)
    # --page-size makes the CLI follow nextToken itself, 2 at a time.
    listed = server.aws("list-clusters", "--page-size", "2").json["clusterArns"]
    assert [cluster_arn(n) for n in names] == [a for a in listed if unique in a]
    first = server.aws("list-clusters", "--max-items", "2").json
    assert len(first["clusterArns"]) == 2
    assert first["NextToken"]
    rest = server.aws(
        "list-clusters", "--starting-token", first["NextToken"]
    ).json["clusterArns"]
    assert first["clusterArns"] + rest == listed


def test_list_clusters_rejects_a_bad_token(server):
    with pytest.raises(ClientError) as excinfo:
        server.ecs.list_clusters(nextToken="not-a-token")
    assert error_code(excinfo) == "InvalidParameterException"


def test_delete_cluster_refused_while_a_task_runs(server, unique):
    server.ecs.create_cluster(clusterName=unique)
    definition = server.register(unique, [container("main", LONG_RUNNING)])
    task = server.run(definition, cluster=unique)[0]
    server.wait_status([task], "RUNNING", cluster=unique)

    described = server.ecs.describe_clusters(clusters=[unique])["clusters"][0]
    assert described["runningTasksCount"] == 1

    with pytest.raises(ClientError) as excinfo:
        server.ecs.delete_cluster(cluster=unique)
    assert error_code(excinfo) == "ClusterContainsTasksException"
    assert "stop" in excinfo.value.response["Error"]["Message"]

    cli = server.aws("delete-cluster", "--cluster", unique, check=False)
    assert cli.returncode != 0
    assert "ClusterContainsTasksException" in cli.stderr

    server.ecs.stop_task(cluster=unique, task=task["taskArn"])
    server.wait_stopped([task], cluster=unique)
    deleted = server.aws("delete-cluster", "--cluster", unique).json["cluster"]
    assert deleted["status"] == "INACTIVE"
    assert deleted["clusterArn"] == cluster_arn(unique)

    listed = server.ecs.get_paginator("list_clusters").paginate().build_full_result()
    assert cluster_arn(unique) not in listed["clusterArns"]
    # As on ECS, a deleted cluster stays describable as INACTIVE.
    described = server.ecs.describe_clusters(clusters=[unique])
    assert [c["status"] for c in described["clusters"]] == ["INACTIVE"]

    with pytest.raises(ClientError) as excinfo:
        server.ecs.run_task(cluster=unique, taskDefinition=definition)
    assert error_code(excinfo) == "ClusterNotFoundException"


def test_delete_missing_cluster(server, unique):
    with pytest.raises(ClientError) as excinfo:
        server.ecs.delete_cluster(cluster=unique)
    assert error_code(excinfo) == "ClusterNotFoundException"


def test_tags_on_a_cluster(server, unique):
    arn = server.ecs.create_cluster(clusterName=unique)["cluster"]["clusterArn"]
    server.aws(
        "tag-resource",
        "--resource-arn",
        arn,
        "--tags",
        "key=a,value=1",
        "key=b,value=2",
    )
    listed = server.aws("list-tags-for-resource", "--resource-arn", arn).json["tags"]
    assert sorted((t["key"], t["value"]) for t in listed) == [("a", "1"), ("b", "2")]

    server.ecs.tag_resource(resourceArn=arn, tags=[{"key": "a", "value": "changed"}])
    server.ecs.untag_resource(resourceArn=arn, tagKeys=["b"])
    tags = server.ecs.list_tags_for_resource(resourceArn=arn)["tags"]
    assert tags == [{"key": "a", "value": "changed"}]

    server.aws("untag-resource", "--resource-arn", arn, "--tag-keys", "a")
    assert server.ecs.list_tags_for_resource(resourceArn=arn)["tags"] == []


def test_tags_on_task_definitions_and_tasks(server, unique):
    registered = server.ecs.register_task_definition(
        family=unique,
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        containerDefinitions=[container("main", "true")],
        tags=[{"key": "kind", "value": "definition"}],
    )
    definition_arn = registered["taskDefinition"]["taskDefinitionArn"]
    assert registered["tags"] == [{"key": "kind", "value": "definition"}]
    assert server.ecs.list_tags_for_resource(resourceArn=definition_arn)["tags"] == [
        {"key": "kind", "value": "definition"}
    ]
    server.ecs.tag_resource(resourceArn=definition_arn, tags=[{"key": "x", "value": "y"}])
    described = server.ecs.describe_task_definition(
        taskDefinition=definition_arn, include=["TAGS"]
    )
    assert {t["key"] for t in described["tags"]} == {"kind", "x"}

    task = server.run(definition_arn, tags=[{"key": "run", "value": "1"}])[0]
    assert task["tags"] == [{"key": "run", "value": "1"}]
    server.ecs.tag_resource(resourceArn=task["taskArn"], tags=[{"key": "more", "value": "2"}])
    tags = server.aws(
        "list-tags-for-resource", "--resource-arn", task["taskArn"]
    ).json["tags"]
    assert sorted(t["key"] for t in tags) == ["more", "run"]
    with_tags = server.ecs.describe_tasks(tasks=[task["taskArn"]], include=["TAGS"])
    assert sorted(t["key"] for t in with_tags["tasks"][0]["tags"]) == ["more", "run"]
    server.wait_stopped([task])


def test_tags_on_missing_resources(server, unique):
    with pytest.raises(ClientError) as excinfo:
        server.ecs.list_tags_for_resource(
            resourceArn=f"arn:aws:ecs:us-east-1:{ACCOUNT}:task-definition/{unique}:9"
        )
    assert error_code(excinfo) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as excinfo:
        server.ecs.tag_resource(
            resourceArn=cluster_arn(unique), tags=[{"key": "k", "value": "v"}]
        )
    assert error_code(excinfo) == "ClusterNotFoundException"
    with pytest.raises(ClientError) as excinfo:
        server.ecs.list_tags_for_resource(resourceArn="not-an-arn")
    assert error_code(excinfo) in ("InvalidParameterException", "ClientException")
