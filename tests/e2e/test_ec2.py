"""The EC2 API subset for task networking: VPCs, subnets and security groups through the
stock AWS CLI and boto3 (EC2 Query protocol, SigV4 for `ec2`, responses checked against
botocore's model), the default network every server starts with, and RunTask's checks
of the subnets and security groups it is given."""

import pytest
from botocore.exceptions import ClientError

from conftest import LONG_RUNNING, REGION, container


def aws_ec2(server, *args, check=True):
    """Runs `aws ec2 ARGS` against the server; `.json` is the parsed output."""
    return server.aws(*args, check=check, timeout=120, service="ec2")


def refused(server, code, *args):
    """Runs `aws ec2 ARGS`, which must fail with EC2 error `code`; returns stderr."""
    result = aws_ec2(server, *args, check=False)
    assert result.returncode != 0, result
    assert f"({code})" in result.stderr, result
    return result.stderr


@pytest.fixture(scope="module")
def ec2(server):
    return server.query_client("ec2")


@pytest.fixture(scope="module")
def default_network(ec2):
    """The default VPC, its default subnet and its default security group."""
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    [subnet] = ec2.describe_subnets(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
            {"Name": "default-for-az", "Values": ["true"]},
        ]
    )["Subnets"]
    [group] = ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
            {"Name": "group-name", "Values": ["default"]},
        ]
    )["SecurityGroups"]
    return vpc, subnet, group


def test_default_network_exists_from_first_start(server, default_network):
    vpc, subnet, group = default_network
    assert vpc["VpcId"].startswith("vpc-") and len(vpc["VpcId"]) == 21
    assert vpc["CidrBlock"] == server.subnet
    assert vpc["IsDefault"] is True
    assert vpc["State"] == "available"
    assert subnet["SubnetId"].startswith("subnet-") and len(subnet["SubnetId"]) == 24
    assert subnet["CidrBlock"] == server.subnet
    assert subnet["DefaultForAz"] is True
    assert subnet["MapPublicIpOnLaunch"] is False
    assert subnet["AvailabilityZone"] == f"{REGION}a"
    assert 0 < subnet["AvailableIpAddressCount"] <= 253
    assert group["GroupName"] == "default"
    assert group["Description"] == "default VPC security group"
    [ingress] = group["IpPermissions"]
    assert ingress["IpProtocol"] == "-1"
    assert [p["GroupId"] for p in ingress["UserIdGroupPairs"]] == [group["GroupId"]]
    [egress] = group["IpPermissionsEgress"]
    assert egress["IpProtocol"] == "-1"
    assert egress["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]

    # The CLI sees the same records.
    vpcs = aws_ec2(server, "describe-vpcs", "--vpc-ids", vpc["VpcId"]).json["Vpcs"]
    assert [v["CidrBlock"] for v in vpcs] == [server.subnet]
    groups = aws_ec2(
        server, "describe-security-groups", "--group-names", "default"
    ).json["SecurityGroups"]
    assert [g["GroupId"] for g in groups] == [group["GroupId"]]


def test_cli_manages_security_groups_and_rules(server, unique, default_network):
    vpc, _, default_group = default_network
    web = aws_ec2(
        server, "create-security-group", "--group-name", f"web-{unique}", "--description", "web"
    ).json["GroupId"]
    other = aws_ec2(
        server, "create-security-group", "--group-name", f"lb-{unique}", "--description", "lb",
        "--vpc-id", vpc["VpcId"],
    ).json["GroupId"]
    assert web.startswith("sg-") and len(web) == 20
    refused(
        server, "InvalidGroup.Duplicate",
        "create-security-group", "--group-name", f"web-{unique}", "--description", "again",
    )

    aws_ec2(
        server, "authorize-security-group-ingress", "--group-id", web,
        "--protocol", "tcp", "--port", "8080", "--source-group", other,
    )
    aws_ec2(
        server, "authorize-security-group-ingress", "--group-id", web,
        "--protocol", "tcp", "--port", "8080", "--cidr", "10.0.0.0/8",
    )
    aws_ec2(
        server, "authorize-security-group-ingress", "--group-id", web, "--ip-permissions",
        "IpProtocol=udp,FromPort=5000,ToPort=5010,IpRanges=[{CidrIp=192.168.0.0/16,Description=lan}]",
    )
    aws_ec2(
        server, "authorize-security-group-egress", "--group-id", web,
        "--protocol", "icmp", "--port", "-1", "--cidr", "10.0.0.0/8",
    )
    stderr = refused(
        server, "InvalidPermission.Duplicate",
        "authorize-security-group-ingress", "--group-id", web,
        "--protocol", "tcp", "--port", "8080", "--cidr", "10.0.0.0/8",
    )
    assert web in stderr
    refused(
        server, "InvalidPermission.Malformed",
        "authorize-security-group-ingress", "--group-id", web, "--ip-permissions",
        "IpProtocol=tcp,FromPort=90,ToPort=80,IpRanges=[{CidrIp=10.0.0.0/8}]",
    )

    [group] = aws_ec2(
        server, "describe-security-groups", "--group-ids", web
    ).json["SecurityGroups"]
    assert group["VpcId"] == vpc["VpcId"]
    ingress = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in group["IpPermissions"]}
    tcp = ingress[("tcp", 8080, 8080)]
    assert [g["GroupId"] for g in tcp["UserIdGroupPairs"]] == [other]
    assert tcp["IpRanges"] == [{"CidrIp": "10.0.0.0/8"}]
    assert ingress[("udp", 5000, 5010)]["IpRanges"] == [
        {"CidrIp": "192.168.0.0/16", "Description": "lan"}
    ]
    egress = {(p["IpProtocol"], p.get("FromPort")): p for p in group["IpPermissionsEgress"]}
    assert set(egress) == {("-1", None), ("icmp", -1)}

    by_vpc = aws_ec2(
        server, "describe-security-groups", "--filters", f"Name=vpc-id,Values={vpc['VpcId']}",
    ).json["SecurityGroups"]
    assert {web, other, default_group["GroupId"]} <= {g["GroupId"] for g in by_vpc}

    refused(
        server, "DependencyViolation", "delete-security-group", "--group-id", other,
    )
    refused(
        server, "CannotDelete", "delete-security-group", "--group-id", default_group["GroupId"],
    )
    refused(
        server, "InvalidPermission.NotFound",
        "revoke-security-group-ingress", "--group-id", web,
        "--protocol", "tcp", "--port", "22", "--cidr", "10.0.0.0/8",
    )
    aws_ec2(
        server, "revoke-security-group-ingress", "--group-id", web,
        "--protocol", "tcp", "--port", "8080", "--source-group", other,
    )
    aws_ec2(
        server, "revoke-security-group-egress", "--group-id", web, "--ip-permissions",
        "IpProtocol=-1,IpRanges=[{CidrIp=0.0.0.0/0}]",
    )
    [group] = aws_ec2(
        server, "describe-security-groups", "--group-ids", web
    ).json["SecurityGroups"]
    assert [p["IpProtocol"] for p in group["IpPermissionsEgress"]] == ["icmp"]
    assert all(not p["UserIdGroupPairs"] for p in group["IpPermissions"])

    aws_ec2(server, "delete-security-group", "--group-id", other)
    aws_ec2(server, "delete-security-group", "--group-name", f"web-{unique}")
    refused(server, "InvalidGroup.NotFound", "describe-security-groups", "--group-ids", web)


def test_cli_manages_vpcs_and_subnets(server):
    refused(server, "InvalidVpc.Range", "create-vpc", "--cidr-block", "10.0.0.0/8")
    vpc = aws_ec2(server, "create-vpc", "--cidr-block", "10.201.0.0/16").json["Vpc"]
    assert vpc["VpcId"].startswith("vpc-") and vpc["IsDefault"] is False
    assert vpc["CidrBlock"] == "10.201.0.0/16"
    groups = aws_ec2(
        server, "describe-security-groups", "--filters", f"Name=vpc-id,Values={vpc['VpcId']}",
    ).json["SecurityGroups"]
    assert [g["GroupName"] for g in groups] == ["default"]

    subnet = aws_ec2(
        server, "create-subnet", "--vpc-id", vpc["VpcId"], "--cidr-block", "10.201.1.0/24",
    ).json["Subnet"]
    assert subnet["VpcId"] == vpc["VpcId"]
    assert subnet["CidrBlock"] == "10.201.1.0/24"
    assert subnet["DefaultForAz"] is False
    assert subnet["AvailableIpAddressCount"] == 254
    refused(
        server, "InvalidSubnet.Conflict",
        "create-subnet", "--vpc-id", vpc["VpcId"], "--cidr-block", "10.201.1.128/25",
    )
    refused(
        server, "InvalidSubnet.Range",
        "create-subnet", "--vpc-id", vpc["VpcId"], "--cidr-block", "10.202.0.0/24",
    )
    refused(
        server, "InvalidVpcID.NotFound",
        "create-subnet", "--vpc-id", "vpc-0123456789abcdef0", "--cidr-block", "10.201.2.0/24",
    )
    listed = aws_ec2(
        server, "describe-subnets", "--filters", f"Name=vpc-id,Values={vpc['VpcId']}",
    ).json["Subnets"]
    assert [s["SubnetId"] for s in listed] == [subnet["SubnetId"]]
    by_id = aws_ec2(server, "describe-subnets", "--subnet-ids", subnet["SubnetId"]).json
    assert by_id["Subnets"][0]["CidrBlock"] == "10.201.1.0/24"
    aws_ec2(server, "delete-subnet", "--subnet-id", subnet["SubnetId"])
    refused(
        server, "InvalidSubnetID.NotFound", "describe-subnets", "--subnet-ids", subnet["SubnetId"],
    )
    refused(server, "InvalidParameterValue", "describe-vpcs", "--filters", "Name=color,Values=red")


def test_boto3_shapes_and_errors(ec2, unique, default_network):
    vpc = ec2.create_vpc(CidrBlock="10.203.0.0/24")["Vpc"]
    assert vpc["CidrBlockAssociationSet"][0]["CidrBlock"] == "10.203.0.0/24"
    subnet = ec2.create_subnet(VpcId=vpc["VpcId"], CidrBlock="10.203.0.0/28")["Subnet"]
    assert subnet["AvailableIpAddressCount"] == 14
    assert subnet["SubnetArn"].endswith(f":subnet/{subnet['SubnetId']}")
    created = ec2.create_security_group(
        GroupName=unique, Description="app", VpcId=vpc["VpcId"]
    )
    group_id = created["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group_id,
        IpPermissions=[
            {
                "IpProtocol": "6",
                "FromPort": 443,
                "ToPort": 443,
                "IpRanges": [{"CidrIp": "10.203.0.0/24"}],
                "UserIdGroupPairs": [{"GroupId": group_id, "Description": "self"}],
            }
        ],
    )
    [group] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    [permission] = group["IpPermissions"]
    assert (permission["IpProtocol"], permission["FromPort"], permission["ToPort"]) == ("tcp", 443, 443)
    assert permission["UserIdGroupPairs"][0]["Description"] == "self"

    # A group of the default VPC cannot be a source in another VPC's group.
    _, _, default_group = default_network
    with pytest.raises(ClientError) as error:
        ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[
                {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": default_group["GroupId"]}]}
            ],
        )
    assert error.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as error:
        ec2.describe_vpcs(VpcIds=["vpc-0000000000000000a"])
    assert error.value.response["Error"]["Code"] == "InvalidVpcID.NotFound"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.value.response["ResponseMetadata"]["RequestId"]
    with pytest.raises(ClientError) as error:
        ec2.create_security_group(GroupName="sg-bad", Description="x")
    assert error.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as error:
        ec2.describe_instances()
    assert error.value.response["Error"]["Code"] == "InvalidAction"

    assert ec2.delete_security_group(GroupId=group_id)["Return"] is True
    ec2.delete_subnet(SubnetId=subnet["SubnetId"])


def test_run_task_uses_named_subnet_and_groups(server, ec2, unique, default_network):
    _, subnet, _ = default_network
    definition = server.register(unique, [container("main", LONG_RUNNING)])

    [task] = server.run(definition)
    details = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
    assert details["subnetId"] == subnet["SubnetId"], "no networkConfiguration: the default subnet"

    group_id = ec2.create_security_group(GroupName=unique, Description="task")["GroupId"]
    network = {"awsvpcConfiguration": {"subnets": [subnet["SubnetId"]], "securityGroups": [group_id]}}
    [named] = server.run(definition, networkConfiguration=network)
    details = {d["name"]: d["value"] for d in named["attachments"][0]["details"]}
    assert details["subnetId"] == subnet["SubnetId"]

    with pytest.raises(ClientError) as error:
        ec2.delete_security_group(GroupId=group_id)
    assert error.value.response["Error"]["Code"] == "DependencyViolation"
    with pytest.raises(ClientError) as error:
        ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    assert error.value.response["Error"]["Code"] == "DependencyViolation"

    for awsvpc, message in [
        (
            {"subnets": ["subnet-0000000000000000a"]},
            "Error retrieving subnet information for [subnet-0000000000000000a]: "
            "The subnet ID 'subnet-0000000000000000a' does not exist",
        ),
        (
            {"subnets": [subnet["SubnetId"]], "securityGroups": ["sg-0000000000000000a"]},
            "Error retrieving security group information for [sg-0000000000000000a]: "
            "The security group 'sg-0000000000000000a' does not exist",
        ),
    ]:
        with pytest.raises(ClientError) as error:
            server.ecs.run_task(
                taskDefinition=definition, launchType="FARGATE",
                networkConfiguration={"awsvpcConfiguration": awsvpc},
            )
        assert error.value.response["Error"]["Code"] == "InvalidParameterException"
        assert error.value.response["Error"]["Message"] == message

    other_vpc = ec2.create_vpc(CidrBlock="10.204.0.0/16")["Vpc"]
    other_subnet = ec2.create_subnet(VpcId=other_vpc["VpcId"], CidrBlock="10.204.0.0/24")["Subnet"]
    with pytest.raises(ClientError) as error:
        server.ecs.run_task(
            taskDefinition=definition, launchType="FARGATE",
            networkConfiguration={"awsvpcConfiguration": {"subnets": [other_subnet["SubnetId"]]}},
        )
    assert "only the default VPC's subnets" in error.value.response["Error"]["Message"]

    for t in (task, named):
        server.ecs.stop_task(task=t["taskArn"], reason="done")
    server.wait_stopped([task, named])
    ec2.delete_security_group(GroupId=group_id)
