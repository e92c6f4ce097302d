"""The `skiff network` CLI: VPCs, subnets and security groups through the server's EC2 API,
checked against what the stock `aws ec2` CLI then describes, and its errors."""

import pytest

from conftest import LONG_RUNNING, container


def network(server, *args):
    """Runs `skiff network ARGS`, which must succeed."""
    result = server.skiff("network", *args)
    assert result.returncode == 0, result
    return result


def refused(server, *args):
    """Runs `skiff network ARGS`, which the server or the CLI must refuse; returns stderr."""
    result = server.skiff("network", *args)
    assert result.returncode == 1, result
    assert result.stderr.startswith("error: "), result
    assert result.stdout == "", result
    return result.stderr


def rows(result):
    """A table's rows (header left out), each split into its columns."""
    return [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]


def aws_group(server, group_id):
    """The group as `aws ec2 describe-security-groups` shows it."""
    described = server.aws(
        "describe-security-groups", "--group-ids", group_id, service="ec2"
    ).json
    [group] = described["SecurityGroups"]
    return group


def peers(permissions):
    """{(protocol, from, to, peer)} of EC2 IpPermissions, peers as CIDR or group id."""
    out = set()
    for p in permissions:
        key = (p["IpProtocol"], p.get("FromPort"), p.get("ToPort"))
        out |= {(*key, r["CidrIp"]) for r in p["IpRanges"]}
        out |= {(*key, g["GroupId"]) for g in p["UserIdGroupPairs"]}
    return out


@pytest.fixture(scope="module")
def default_vpc(server):
    [vpc] = server.aws(
        "describe-vpcs", "--filters", "Name=is-default,Values=true", service="ec2"
    ).json["Vpcs"]
    return vpc["VpcId"]


def test_ls_shows_the_default_network(server, default_vpc):
    listed = network(server, "ls")
    tables = listed.stdout.split("\n\n")
    assert [t.split()[0] for t in tables] == ["VPC", "SUBNET", "GROUP"]
    vpcs = [line.split() for line in tables[0].splitlines()[1:]]
    assert [default_vpc, server.subnet, "yes"] in vpcs
    subnets = [line.split() for line in tables[1].splitlines()[1:]]
    [subnet] = [s for s in subnets if s[2] == default_vpc and s[4] == "yes"]
    assert subnet[1] == server.subnet
    groups = [line.split() for line in tables[2].splitlines()[1:] if line.strip()]
    [default] = [g for g in groups if g[1] == "default" and g[2] == default_vpc]
    assert default[3:5] == ["1", "1"], "the default group: one ingress and one egress rule"

    as_json = network(server, "ls", "-o", "json").json
    [vpc] = [v for v in as_json["vpcs"] if v["vpcId"] == default_vpc]
    assert vpc == {"vpcId": default_vpc, "cidrBlock": server.subnet, "isDefault": True}
    [group] = [g for g in as_json["securityGroups"] if g["groupId"] == default[0]]
    assert group["ingress"] == [
        {"protocol": "-1", "fromPort": -1, "toPort": -1, "peer": {"group": default[0]}}
    ]
    aws_subnets = server.aws("describe-subnets", service="ec2").json["Subnets"]
    assert {s["SubnetId"] for s in aws_subnets} == {s["subnetId"] for s in as_json["subnets"]}


def test_security_group_round_trip(server, unique, default_vpc):
    web, lb = f"web-{unique}", f"lb-{unique}"
    web_id = network(server, "sg", "create", web, "--description", "web servers").stdout.strip()
    lb_id = network(server, "sg", "create", lb).stdout.strip()
    assert web_id.startswith("sg-") and lb_id.startswith("sg-")
    created = aws_group(server, web_id)
    assert (created["GroupName"], created["Description"], created["VpcId"]) == (
        web, "web servers", default_vpc
    )
    assert aws_group(server, lb_id)["Description"] == lb, "the description defaults to the name"

    # Groups by id or by name; peers by name; every protocol and both directions.
    allowed = network(server, "sg", "allow", web, "--port", "8080", "--from-group", lb)
    assert allowed.stdout.strip() == (
        f"{web} ({web_id}): allowed ingress tcp 8080 from {lb} ({lb_id})"
    )
    network(server, "sg", "allow", web_id, "--port", "8080-8090", "--from", "10.1.2.3/8")
    network(server, "sg", "allow", web, "--protocol", "udp", "--port", "53", "--from", "192.168.1.7")
    network(server, "sg", "allow", web, "--protocol", "icmp", "--port", "8", "--from", "10.0.0.0/8")
    network(server, "sg", "allow", web, "--protocol", "all", "--to-group", lb_id)
    egress = network(server, "sg", "allow", web, "--port", "443", "--to", "172.16.0.0/12")
    assert "allowed egress tcp 443 to 172.16.0.0/12" in egress.stdout
    as_json = network(
        server, "sg", "allow", web, "--protocol", "udp", "--port", "123", "--to", "10.0.0.1",
        "-o", "json",
    ).json
    assert as_json == {
        "groupId": web_id,
        "direction": "egress",
        "change": "allowed",
        "rule": {"protocol": "udp", "fromPort": 123, "toPort": 123, "peer": {"cidr": "10.0.0.1/32"}},
    }

    # What the CLI made is what the AWS CLI describes.
    group = aws_group(server, web_id)
    assert peers(group["IpPermissions"]) == {
        ("tcp", 8080, 8080, lb_id),
        ("tcp", 8080, 8090, "10.0.0.0/8"),
        ("udp", 53, 53, "192.168.1.7/32"),
        ("icmp", 8, -1, "10.0.0.0/8"),
    }
    assert peers(group["IpPermissionsEgress"]) == {
        ("-1", None, None, "0.0.0.0/0"),
        ("-1", None, None, lb_id),
        ("tcp", 443, 443, "172.16.0.0/12"),
        ("udp", 123, 123, "10.0.0.1/32"),
    }

    shown = network(server, "sg", "show", web)
    assert f"Group        {web} ({web_id})" in shown.stdout
    assert "Description  web servers" in shown.stdout
    rules = [line.split() for line in shown.stdout.split("\n\n")[1].splitlines()[1:]]
    assert ["ingress", "tcp", "8080", lb, f"({lb_id})"] in rules
    assert ["ingress", "tcp", "8080-8090", "10.0.0.0/8"] in rules
    assert ["ingress", "icmp", "type", "8", "10.0.0.0/8"] in rules
    assert ["egress", "all", "all", lb, f"({lb_id})"] in rules
    assert ["egress", "all", "all", "0.0.0.0/0"] in rules
    as_json = network(server, "sg", "show", web_id, "-o", "json").json
    assert as_json["groupName"] == web and len(as_json["ingress"]) == 4

    listed = {r[0]: r for r in rows(network(server, "sg", "ls"))}
    assert listed[web_id][1:5] == [web, default_vpc, "4", "4"]
    assert listed[web_id][5:] == ["web", "servers"]

    # Revoking takes the rule as it was given.
    revoked = network(server, "sg", "revoke", web, "--port", "8080", "--from-group", lb)
    assert revoked.stdout.strip() == (
        f"{web} ({web_id}): revoked ingress tcp 8080 from {lb} ({lb_id})"
    )
    network(server, "sg", "revoke", web, "--protocol", "all", "--to-group", lb)
    network(server, "sg", "revoke", web, "--protocol", "icmp", "--port", "8", "--from", "10.0.0.0/8")
    group = aws_group(server, web_id)
    assert peers(group["IpPermissions"]) == {
        ("tcp", 8080, 8090, "10.0.0.0/8"),
        ("udp", 53, 53, "192.168.1.7/32"),
    }
    assert lb_id not in {p[3] for p in peers(group["IpPermissionsEgress"])}

    deleted = network(server, "sg", "rm", lb)
    assert deleted.stdout.strip() == f"Deleted security group {lb} ({lb_id})"
    network(server, "sg", "rm", web_id)
    gone = server.aws("describe-security-groups", "--group-ids", web_id, service="ec2", check=False)
    assert gone.returncode != 0 and "InvalidGroup.NotFound" in gone.stderr


def test_vpc_and_subnet_round_trip(server, unique):
    vpc_id = network(server, "vpc", "create", "--cidr", "10.211.0.0/16").stdout.strip()
    assert vpc_id.startswith("vpc-")
    subnet = network(
        server, "subnet", "create", "--cidr", "10.211.1.0/24", "--vpc", vpc_id, "-o", "json"
    ).json
    assert (subnet["vpcId"], subnet["cidrBlock"], subnet["defaultForAz"]) == (
        vpc_id, "10.211.1.0/24", False
    )
    [described] = server.aws(
        "describe-subnets", "--subnet-ids", subnet["subnetId"], service="ec2"
    ).json["Subnets"]
    assert (described["VpcId"], described["CidrBlock"]) == (vpc_id, "10.211.1.0/24")
    listed = [line.split() for line in network(server, "ls").stdout.splitlines()]
    assert [vpc_id, "10.211.0.0/16", "no"] in listed
    assert [subnet["subnetId"], "10.211.1.0/24", vpc_id, "us-east-1a", "no"] in listed

    # A name lives in one VPC: the same name in the new VPC is another group.
    here = network(server, "sg", "create", unique, "--vpc", vpc_id).stdout.strip()
    assert aws_group(server, here)["VpcId"] == vpc_id
    stderr = refused(server, "sg", "show", unique)
    assert "in the default VPC" in stderr and f"pass --vpc {vpc_id}" in stderr
    shown = network(server, "sg", "show", unique, "--vpc", vpc_id)
    assert f"VPC          {vpc_id}" in shown.stdout
    default_id = network(server, "sg", "create", unique).stdout.strip()
    assert default_id != here
    network(server, "sg", "allow", unique, "--vpc", vpc_id, "--port", "5432", "--from-group", unique)
    assert peers(aws_group(server, here)["IpPermissions"]) == {("tcp", 5432, 5432, here)}, (
        "a peer's name is looked up in the VPC of the group it is added to"
    )
    network(server, "sg", "rm", unique, "--vpc", vpc_id)
    network(server, "sg", "rm", unique)

    removed = network(server, "subnet", "rm", subnet["subnetId"])
    assert removed.stdout.strip() == f"Deleted subnet {subnet['subnetId']}"
    gone = server.aws(
        "describe-subnets", "--subnet-ids", subnet["subnetId"], service="ec2", check=False
    )
    assert gone.returncode != 0 and "InvalidSubnetID.NotFound" in gone.stderr


def test_refusals_say_what_went_wrong_and_what_to_do(server, unique):
    network(server, "sg", "create", unique)
    duplicate = refused(server, "sg", "create", unique)
    assert "InvalidGroup.Duplicate" in duplicate and unique in duplicate
    assert "\nhint: pick another name" in duplicate

    unknown = refused(server, "sg", "show", f"no-{unique}")
    assert f"no security group named no-{unique}" in unknown
    assert "skiff network sg ls" in unknown
    unknown_id = refused(server, "sg", "rm", "sg-00000000000000000")
    assert "sg-00000000000000000" in unknown_id and "skiff network sg ls" in unknown_id
    unknown_peer = refused(server, "sg", "allow", unique, "--port", "80", "--from-group", f"no-{unique}")
    assert f"no security group named no-{unique}" in unknown_peer

    missing_rule = refused(server, "sg", "revoke", unique, "--port", "22", "--from", "10.0.0.0/8")
    assert "InvalidPermission.NotFound" in missing_rule and "skiff network sg show" in missing_rule
    network(server, "sg", "allow", unique, "--port", "22", "--from", "10.0.0.0/8")
    twice = refused(server, "sg", "allow", unique, "--port", "22", "--from", "10.0.0.0/8")
    assert "InvalidPermission.Duplicate" in twice

    for args, message in [
        (["--port", "90-80", "--from", "10.0.0.0/8"], "write the lower port first (80-90)"),
        (["--port", "70000", "--from", "10.0.0.0/8"], "from 0 to 65535"),
        (["--port", "80", "--protocol", "sctp", "--from", "10.0.0.0/8"], "tcp, udp, icmp or all"),
        (["--port", "80", "--from", "web"], "use --from-group"),
        (["--port", "80"], "--from"),
        (["--port", "80", "--from", "10.0.0.0/8", "--to", "10.0.0.0/8"], "cannot be used with"),
    ]:
        result = server.skiff("network", "sg", "allow", unique, *args)
        assert result.returncode == 2, (args, result)
        assert message in result.stderr, (args, result)
    for args, message in [
        (["--from", "10.0.0.0/8"], "needs --port"),
        (["--protocol", "all", "--port", "80", "--from", "10.0.0.0/8"], "leave --port out"),
        (["--protocol", "icmp", "--port", "0-8", "--from", "10.0.0.0/8"], "one ICMP type"),
    ]:
        assert message in refused(server, "sg", "allow", unique, *args), args

    bad_vpc = refused(server, "vpc", "create", "--cidr", "10.0.0.0/8")
    assert "InvalidVpc.Range" in bad_vpc and "skiff network ls" in bad_vpc
    bad_subnet = refused(server, "subnet", "create", "--cidr", "10.0.0.0/24", "--vpc", "vpc-0000000000000000a")
    assert "InvalidVpcID.NotFound" in bad_subnet
    outside = refused(server, "subnet", "create", "--cidr", "192.168.250.0/24")
    assert "InvalidSubnet.Range" in outside, "the default VPC is the task network"
    default_group = refused(server, "sg", "rm", "default")
    assert "CannotDelete" in default_group
    network(server, "sg", "rm", unique)


def test_a_group_a_running_task_uses_cannot_be_deleted(server, unique, default_vpc):
    group_id = network(server, "sg", "create", unique).stdout.strip()
    [subnet] = server.aws(
        "describe-subnets",
        "--filters", f"Name=vpc-id,Values={default_vpc}", "Name=default-for-az,Values=true",
        service="ec2",
    ).json["Subnets"]
    definition = server.register(unique, [container("main", LONG_RUNNING)])
    awsvpc = {"subnets": [subnet["SubnetId"]], "securityGroups": [group_id]}
    [task] = server.run(definition, networkConfiguration={"awsvpcConfiguration": awsvpc})
    server.wait_status([task], "RUNNING")
    task_id = task["taskArn"].rsplit("/", 1)[-1]

    stderr = refused(server, "sg", "rm", unique)
    assert "DependencyViolation" in stderr and task_id in stderr
    assert "\nhint: stop the tasks in the group" in stderr and "skiff stop" in stderr
    assert group_id in {r[0] for r in rows(network(server, "sg", "ls"))}

    server.ecs.stop_task(task=task["taskArn"], reason="done")
    server.wait_stopped([task])
    network(server, "sg", "rm", unique)
