"""The built-in load balancer through the ELBv2 API: the stock AWS CLI and boto3 (Query
protocol, SigV4 for `elasticloadbalancing`), a real task registered by IP and reached
through a listener, health following the task, error shapes, and `skiff lb`."""

import json
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from conftest import REGION, container, wait_until
from lb_support import WEB, aws_elbv2, fetch, health_states


def test_aws_cli_manages_target_groups(server, unique):
    created = aws_elbv2(
        server, "create-target-group", "--name", unique, "--protocol", "HTTP",
        "--port", "8080", "--target-type", "ip", "--vpc-id", "vpc-e2e",
        "--health-check-path", "/health", "--health-check-interval-seconds", "5",
        "--healthy-threshold-count", "2", "--unhealthy-threshold-count", "2",
        "--matcher", "HttpCode=200-299",
    ).json
    [group] = created["TargetGroups"]
    arn = group["TargetGroupArn"]
    assert arn.startswith(f"arn:aws:elasticloadbalancing:{REGION}:000000000000:targetgroup/{unique}/")
    assert group["HealthCheckPath"] == "/health"
    assert group["HealthCheckIntervalSeconds"] == 5
    assert group["HealthyThresholdCount"] == 2
    assert group["Matcher"] == {"HttpCode": "200-299"}
    assert group["TargetType"] == "ip"
    assert group["VpcId"] == "vpc-e2e"
    assert group["LoadBalancerArns"] == []

    described = aws_elbv2(server, "describe-target-groups", "--names", unique).json
    assert described["TargetGroups"][0]["TargetGroupArn"] == arn

    modified = aws_elbv2(
        server, "modify-target-group-attributes", "--target-group-arn", arn, "--attributes",
        "Key=deregistration_delay.timeout_seconds,Value=7",
        "Key=load_balancing.algorithm.type,Value=least_outstanding_requests",
    ).json
    attrs = {a["Key"]: a["Value"] for a in modified["Attributes"]}
    assert attrs["deregistration_delay.timeout_seconds"] == "7"
    assert attrs["load_balancing.algorithm.type"] == "least_outstanding_requests"
    again = aws_elbv2(server, "describe-target-group-attributes", "--target-group-arn", arn).json
    assert {a["Key"]: a["Value"] for a in again["Attributes"]} == attrs

    aws_elbv2(server, "register-targets", "--target-group-arn", arn, "--targets", "Id=10.9.0.5,Port=8081")
    health = aws_elbv2(server, "describe-target-health", "--target-group-arn", arn).json
    [target] = health["TargetHealthDescriptions"]
    assert target["Target"] == {"Id": "10.9.0.5", "Port": 8081}
    assert target["TargetHealth"]["State"] == "unused"
    assert target["TargetHealth"]["Reason"] == "Target.NotInUse"
    aws_elbv2(server, "delete-target-group", "--target-group-arn", arn)
    missing = aws_elbv2(server, "describe-target-groups", "--names", unique, check=False)
    assert missing.returncode != 0
    assert "TargetGroupNotFound" in missing.stderr


def test_task_is_reached_through_a_listener_and_health_follows_it(server, elbv2, unique, listener_port):
    definition = server.register(unique, [container("web", WEB, portMappings=[{"containerPort": 8080}])])
    [task] = server.run(definition)
    [running] = server.wait_status([task], "RUNNING")
    details = {d["name"]: d["value"] for d in running["attachments"][0]["details"]}
    address = details["privateIPv4Address"]

    [group] = elbv2.create_target_group(
        Name=unique, Protocol="HTTP", Port=8080, TargetType="ip", VpcId="vpc-e2e",
        HealthCheckPath="/health", HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2,
        HealthyThresholdCount=2, UnhealthyThresholdCount=2,
    )["TargetGroups"]
    tg = group["TargetGroupArn"]
    [lb] = elbv2.create_load_balancer(Name=unique, Subnets=["subnet-e2e"])["LoadBalancers"]
    assert lb["Type"] == "application"
    assert lb["State"]["Code"] == "active"
    assert lb["DNSName"].startswith(f"{unique}-") and lb["DNSName"].endswith(f".{REGION}.elb.localhost")
    [listener] = elbv2.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=listener_port,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}],
    )["Listeners"]
    assert listener["DefaultActions"][0]["TargetGroupArn"] == tg
    described = elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    assert [l["ListenerArn"] for l in described] == [listener["ListenerArn"]]
    [group] = elbv2.describe_target_groups(TargetGroupArns=[tg])["TargetGroups"]
    assert group["LoadBalancerArns"] == [lb["LoadBalancerArn"]]

    elbv2.register_targets(TargetGroupArn=tg, Targets=[{"Id": address, "Port": 8080}])
    wait_until(lambda: health_states(elbv2, tg) == {(address, 8080): "healthy"},
               timeout=60, interval=0.5, message="the task healthy")
    status, body = fetch(listener_port)
    assert status == 200 and body.startswith("hello from"), body

    server.ecs.stop_task(task=task["taskArn"])
    server.wait_stopped([task])
    wait_until(lambda: health_states(elbv2, tg) == {(address, 8080): "unhealthy"},
               timeout=60, interval=0.5, message="the stopped task unhealthy")
    [described] = elbv2.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert described["TargetHealth"]["Reason"].startswith("Target.")
    # Fail-open sends traffic to the only (dead) target: the listener answers 502.
    assert fetch(listener_port)[0] == 502

    elbv2.modify_target_group_attributes(
        TargetGroupArn=tg, Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "0"}])
    elbv2.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": address, "Port": 8080}])
    wait_until(lambda: health_states(elbv2, tg) == {}, timeout=30, message="the target removed")
    assert fetch(listener_port)[0] == 503

    with pytest.raises(ClientError) as in_use:
        elbv2.delete_target_group(TargetGroupArn=tg)
    assert in_use.value.response["Error"]["Code"] == "ResourceInUse"
    elbv2.delete_listener(ListenerArn=listener["ListenerArn"])
    elbv2.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    elbv2.delete_target_group(TargetGroupArn=tg)
    assert lb["LoadBalancerArn"] not in [
        l["LoadBalancerArn"] for l in elbv2.describe_load_balancers()["LoadBalancers"]
    ]


def test_network_load_balancer_forwards_tcp(server, elbv2, unique, listener_port):
    definition = server.register(unique, [container("web", WEB, portMappings=[{"containerPort": 8080}])])
    [task] = server.run(definition)
    [running] = server.wait_status([task], "RUNNING")
    address = {d["name"]: d["value"] for d in running["attachments"][0]["details"]}["privateIPv4Address"]
    tg = elbv2.create_target_group(
        Name=unique, Protocol="TCP", Port=8080, TargetType="ip",
        HealthCheckIntervalSeconds=5, HealthyThresholdCount=2,
    )["TargetGroups"][0]["TargetGroupArn"]
    lb = elbv2.create_load_balancer(Name=unique, Type="network")["LoadBalancers"][0]["LoadBalancerArn"]
    listener = elbv2.create_listener(
        LoadBalancerArn=lb, Protocol="TCP", Port=listener_port,
        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}],
    )["Listeners"][0]
    elbv2.register_targets(TargetGroupArn=tg, Targets=[{"Id": address}])
    wait_until(lambda: health_states(elbv2, tg) == {(address, 8080): "healthy"},
               timeout=60, interval=0.5, message="the task healthy")
    status, body = fetch(listener_port, "/index.html")
    assert status == 200 and body.startswith("hello from"), body
    elbv2.delete_load_balancer(LoadBalancerArn=lb)
    elbv2.delete_target_group(TargetGroupArn=tg)
    server.ecs.stop_task(task=task["taskArn"])
    server.wait_stopped([task])
    assert listener["Protocol"] == "TCP"


def code_of(call):
    with pytest.raises(ClientError) as error:
        call()
    return error.value.response["Error"]["Code"], error.value.response["Error"]["Message"]


def test_errors_have_the_elbv2_shape(server, elbv2, unique, listener_port):
    tg = elbv2.create_target_group(Name=unique, Protocol="HTTP", Port=80, TargetType="ip")[
        "TargetGroups"][0]["TargetGroupArn"]
    lb = elbv2.create_load_balancer(Name=unique)["LoadBalancers"][0]["LoadBalancerArn"]
    elbv2.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=listener_port,
                          DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    missing_tg = tg.replace(f"/{unique}/", "/nope/")
    cases = {
        "TargetGroupNotFound": lambda: elbv2.describe_target_health(TargetGroupArn=missing_tg),
        "LoadBalancerNotFound": lambda: elbv2.describe_load_balancers(Names=["nope"]),
        "DuplicateTargetGroupName": lambda: elbv2.create_target_group(Name=unique, Protocol="HTTP", Port=80, TargetType="ip"),
        "DuplicateLoadBalancerName": lambda: elbv2.create_load_balancer(Name=unique),
        "DuplicateListener": lambda: elbv2.create_listener(
            LoadBalancerArn=lb, Protocol="HTTP", Port=listener_port,
            DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}]),
        "ResourceInUse": lambda: elbv2.delete_target_group(TargetGroupArn=tg),
        "ValidationError": lambda: elbv2.create_target_group(Name="bad_name", Protocol="HTTP", Port=80),
        "InvalidTarget": lambda: elbv2.register_targets(TargetGroupArn=tg, Targets=[{"Id": "i-0abc"}]),
    }
    for expected, call in cases.items():
        code, message = code_of(call)
        assert code == expected, (expected, code, message)
        assert len(message) > 20, message
    elbv2.delete_load_balancer(LoadBalancerArn=lb)
    elbv2.delete_target_group(TargetGroupArn=tg)

    code, _ = code_of(lambda: server.query_client("elbv2", secret="wrong").describe_load_balancers())
    assert code == "InvalidSignatureException"
    request = urllib.request.Request(
        server.endpoint, data=b"Action=DescribeLoadBalancers&Version=2015-12-01",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(request, timeout=10)
    assert unsigned.value.code == 403
    body = unsigned.value.read().decode()
    assert "<Code>MissingAuthenticationTokenException</Code>" in body, body


def test_skiff_lb_commands(server, unique, listener_port):
    created = server.skiff("lb", "create", unique, "--port", str(listener_port),
                           "--target-port", "8080", "--health-path", "/health")
    assert created.returncode == 0, created
    assert f"127.0.0.1:{listener_port}" in created.stdout
    listed = server.skiff("lb", "ls")
    assert unique in listed.stdout and f"127.0.0.1:{listener_port}" in listed.stdout, listed
    as_json = server.skiff("-o", "json", "lb", "ls")
    [mine] = [lb for lb in json.loads(as_json.stdout) if lb["name"] == unique]
    assert mine["listeners"][0]["address"] == f"127.0.0.1:{listener_port}"
    targets = server.skiff("lb", "targets", unique)
    assert targets.returncode == 0 and "STATE" in targets.stdout, targets
    removed = server.skiff("lb", "rm", unique)
    assert removed.returncode == 0, removed
    gone = server.skiff("lb", "targets", unique)
    assert gone.returncode != 0 and "TargetGroupNotFound" in gone.stderr, gone
