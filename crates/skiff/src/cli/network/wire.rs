//! The EC2 calls behind `skiff network`, and their answers read back into the model's
//! VPC, subnet and security group types.
//!
//! The answers come as [`EcsClient::ec2_query`] renders EC2's XML: every value a string
//! (`"isDefault": "true"`), lists as arrays, an empty list as `""`. A security group's
//! `IpPermission`s are split into one rule per peer with the model's own
//! [`IpPermission::rules`], so the CLI shows rules as the server keeps them.

use anyhow::{anyhow, Context};
use api::client::{ClientError, EcsClient};
use model::vpc::{IpPermission, IpProtocol, SecurityGroup, SecurityGroupRule, Subnet, Vpc};
use serde_json::Value;

use crate::cli::{query_list, query_text};

/// Calls an EC2 action with form members. A refusal keeps the server's error code and
/// message, and gains a line saying what to do about it with `skiff`.
pub async fn ec2(
    client: &EcsClient,
    action: &str,
    members: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let members: Vec<(String, String)> = members
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    client
        .ec2_query(action, &members)
        .await
        .map_err(|error| match &error {
            ClientError::Service { kind, .. } => match hint(action, kind) {
                Some(hint) => anyhow!("{action} failed: {error}\nhint: {hint}"),
                None => anyhow!("{action} failed: {error}"),
            },
            _ => anyhow::Error::new(error).context(format!("{action} failed")),
        })
}

/// What to do about the EC2 error `code` of `action`, in `skiff` commands.
fn hint(action: &str, code: &str) -> Option<&'static str> {
    Some(match code {
        "InvalidGroup.NotFound" => "list the security groups with `skiff network sg ls`",
        "InvalidGroup.Duplicate" => {
            "pick another name, or see the existing group with `skiff network sg show NAME`"
        }
        "InvalidVpcID.NotFound" | "InvalidSubnetID.NotFound" => {
            "list the VPCs and subnets with `skiff network ls`"
        }
        "InvalidVpc.Range" | "InvalidSubnet.Range" | "InvalidSubnet.Conflict" => {
            "see the VPCs and subnets in use with `skiff network ls`"
        }
        "DependencyViolation" if action == "DeleteSubnet" => {
            "find the tasks with `skiff ps` and stop them with `skiff stop TASK`, then retry"
        }
        "DependencyViolation" => {
            "stop the tasks in the group (`skiff ps`, `skiff stop TASK`), or revoke the rules that name it from the groups listed (`skiff network sg show GROUP` shows them), then retry"
        }
        "InvalidPermission.Duplicate" => {
            "the group already has this rule: see its rules with `skiff network sg show GROUP`"
        }
        "InvalidPermission.NotFound" => "see the group's rules with `skiff network sg show GROUP`",
        _ => return None,
    })
}

fn flag(value: &Value, field: &str) -> bool {
    value[field].as_str() == Some("true")
}

/// A field that must hold a value of type `T`; a missing or malformed one means the
/// answer did not come from a Skiff (or EC2) server.
fn parsed<T: std::str::FromStr>(value: &Value, field: &str) -> anyhow::Result<T> {
    let raw = value[field].as_str().unwrap_or_default();
    raw.parse().map_err(|_| {
        anyhow!("the server's answer has {field} {raw:?}, not a valid value: is it a Skiff server?")
    })
}

pub fn vpc(value: &Value) -> anyhow::Result<Vpc> {
    Ok(Vpc {
        vpc_id: query_text(value, "vpcId").to_owned(),
        cidr_block: parsed(value, "cidrBlock")?,
        is_default: flag(value, "isDefault"),
    })
}

pub fn subnet(value: &Value) -> anyhow::Result<Subnet> {
    Ok(Subnet {
        subnet_id: query_text(value, "subnetId").to_owned(),
        vpc_id: query_text(value, "vpcId").to_owned(),
        cidr_block: parsed(value, "cidrBlock")?,
        availability_zone: query_text(value, "availabilityZone").to_owned(),
        default_for_az: flag(value, "defaultForAz"),
        map_public_ip_on_launch: flag(value, "mapPublicIpOnLaunch"),
    })
}

pub fn group(value: &Value) -> anyhow::Result<SecurityGroup> {
    Ok(SecurityGroup {
        group_id: query_text(value, "groupId").to_owned(),
        group_name: query_text(value, "groupName").to_owned(),
        description: query_text(value, "groupDescription").to_owned(),
        vpc_id: query_text(value, "vpcId").to_owned(),
        ingress: rules(&value["ipPermissions"])?,
        egress: rules(&value["ipPermissionsEgress"])?,
    })
}

/// One rule per peer of each `IpPermission`.
fn rules(permissions: &Value) -> anyhow::Result<Vec<SecurityGroupRule>> {
    let optional = |value: &Value, field: &str| value[field].as_str().map(str::to_owned);
    let mut rules = Vec::new();
    for p in query_list(permissions) {
        let port = |field: &str| match optional(p, field) {
            Some(_) => parsed::<i32>(p, field).map(Some),
            None => Ok(None),
        };
        let protocol = IpProtocol::parse(query_text(p, "ipProtocol"))?;
        let mut permission = IpPermission::new(protocol, port("fromPort")?, port("toPort")?)?;
        for range in query_list(&p["ipRanges"]) {
            let cidr = parsed(range, "cidrIp")?;
            permission
                .cidrs
                .push((cidr, optional(range, "description")));
        }
        for pair in query_list(&p["groups"]) {
            permission.groups.push((
                query_text(pair, "groupId").to_owned(),
                optional(pair, "description"),
            ));
        }
        rules.extend(permission.rules()?);
    }
    Ok(rules)
}

/// Every element of the list `set` in the answer to the Describe action `action`.
async fn describe<T>(
    client: &EcsClient,
    action: &str,
    set: &str,
    read: fn(&Value) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    let described = ec2(client, action, &[]).await?;
    query_list(&described[set]).iter().map(read).collect()
}

/// Every VPC, the default one first.
pub async fn vpcs(client: &EcsClient) -> anyhow::Result<Vec<Vpc>> {
    let mut vpcs = describe(client, "DescribeVpcs", "vpcSet", vpc).await?;
    vpcs.sort_by(|a, b| (!a.is_default, &a.vpc_id).cmp(&(!b.is_default, &b.vpc_id)));
    Ok(vpcs)
}

/// The id of the default VPC, where names are looked up and groups and subnets go
/// unless `--vpc` says otherwise.
pub async fn default_vpc(client: &EcsClient) -> anyhow::Result<String> {
    let described = ec2(
        client,
        "DescribeVpcs",
        &[
            ("Filter.1.Name", "is-default"),
            ("Filter.1.Value.1", "true"),
        ],
    )
    .await?;
    let vpc = query_list(&described["vpcSet"]).first().context(
        "the server has no default VPC: pass --vpc ID (`skiff network ls` lists the VPCs)",
    )?;
    Ok(query_text(vpc, "vpcId").to_owned())
}

/// Every subnet, by VPC and address.
pub async fn subnets(client: &EcsClient) -> anyhow::Result<Vec<Subnet>> {
    let mut subnets = describe(client, "DescribeSubnets", "subnetSet", subnet).await?;
    subnets.sort_by(|a, b| (&a.vpc_id, a.cidr_block).cmp(&(&b.vpc_id, b.cidr_block)));
    Ok(subnets)
}

/// Every security group, by VPC and name.
pub async fn groups(client: &EcsClient) -> anyhow::Result<Vec<SecurityGroup>> {
    let mut groups = describe(client, "DescribeSecurityGroups", "securityGroupInfo", group).await?;
    groups.sort_by(|a, b| (&a.vpc_id, &a.group_name).cmp(&(&b.vpc_id, &b.group_name)));
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use model::vpc::RulePeer;
    use serde_json::json;

    use super::*;

    #[test]
    fn groups_are_read_into_one_rule_per_peer() {
        let answer = json!({
            "groupId": "sg-1", "groupName": "web", "groupDescription": "web servers",
            "vpcId": "vpc-1",
            "ipPermissions": [{
                "ipProtocol": "tcp", "fromPort": "8080", "toPort": "8090",
                "groups": [{"groupId": "sg-2", "userId": "000000000000"}],
                "ipRanges": [{"cidrIp": "10.0.0.0/8", "description": "lan"}],
                "ipv6Ranges": "", "prefixListIds": "",
            }],
            "ipPermissionsEgress": [{
                "ipProtocol": "-1", "groups": "", "ipRanges": [{"cidrIp": "0.0.0.0/0"}],
            }],
        });
        let group = group(&answer).unwrap();
        assert_eq!(
            (group.group_name.as_str(), group.description.as_str()),
            ("web", "web servers")
        );
        let peers: Vec<_> = group.ingress.iter().map(|r| r.peer.clone()).collect();
        assert_eq!(
            peers,
            [
                RulePeer::Cidr("10.0.0.0/8".parse().unwrap()),
                RulePeer::Group("sg-2".into())
            ]
        );
        assert!(group
            .ingress
            .iter()
            .all(|r| (r.protocol, r.from_port, r.to_port) == (IpProtocol::Tcp, 8080, 8090)));
        assert_eq!(group.ingress[0].description.as_deref(), Some("lan"));
        assert_eq!(group.egress[0].protocol, IpProtocol::All);
    }

    #[test]
    fn malformed_answers_are_reported() {
        let error = vpc(&json!({"vpcId": "vpc-1", "cidrBlock": "nonsense"})).unwrap_err();
        assert!(error.to_string().contains("cidrBlock"), "{error}");
        let flagged =
            vpc(&json!({"vpcId": "vpc-1", "cidrBlock": "10.0.0.0/16", "isDefault": "true"}));
        assert!(flagged.unwrap().is_default);
    }

    #[test]
    fn refusals_say_what_to_do_in_skiff_terms() {
        assert!(hint("DeleteSubnet", "DependencyViolation")
            .unwrap()
            .contains("skiff stop"));
        assert!(hint("DeleteSecurityGroup", "DependencyViolation")
            .unwrap()
            .contains("revoke"));
        assert_eq!(hint("CreateVpc", "InternalError"), None);
    }
}
