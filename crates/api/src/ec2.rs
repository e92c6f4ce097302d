//! The EC2 API subset for task networking (version 2016-11-15, signing name `ec2`) over
//! the Query protocol: VPCs, subnets and security groups with their rules. Decodes each
//! action's members as botocore's EC2 serializer names them (`VpcId.1`, `Filter.1.Name`,
//! `Filter.1.Value.1`, `IpPermissions.1.Groups.1.GroupId`), calls [`control::Control`],
//! and writes the result shapes (`Vpc`, `Subnet`, `SecurityGroup`, `IpPermission`) with
//! EC2's lowerCamel element names and `<item>` lists.
//!
//! Authorize/Revoke accept both the full `IpPermissions` form and the top-level
//! `IpProtocol`/`FromPort`/`ToPort`/`CidrIp`/`SourceSecurityGroupName` members; the AWS
//! CLI's `--protocol/--port/--cidr/--source-group` shorthand arrives as the former.

use control::vpc::{GroupRef, NetworkError, PermissionRequest, SubnetView};
use model::vpc::{Direction, Filter, IpPermission, IpProtocol, SecurityGroup, Subnet, Vpc};

use crate::query::{Params, QueryFault, QueryRequest, XmlWriter};
use crate::server::ApiState;

pub(crate) const VERSION: &str = "2016-11-15";
pub(crate) const SIGNING_NAME: &str = "ec2";
pub(crate) const NAMESPACE: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

type Outcome = Result<XmlWriter, QueryFault>;

/// Serves one EC2 action.
pub(crate) async fn handle(state: &ApiState, request: &QueryRequest) -> Outcome {
    let span = tracing::debug_span!("ec2", action = %request.action);
    let _entered = span.enter();
    let outcome = serve(state, request).await.map_err(|mut f| {
        // EC2 calls a malformed value InvalidParameterValue where ELBv2 says ValidationError.
        if f.code == "ValidationError" {
            f.code = "InvalidParameterValue";
        }
        f
    });
    if let Err(f) = &outcome {
        if f.status >= 500 {
            tracing::error!(action = %request.action, error = %f.message, "EC2 action failed");
        } else {
            tracing::debug!(action = %request.action, code = f.code, "EC2 action refused");
        }
    }
    outcome
}

async fn serve(state: &ApiState, request: &QueryRequest) -> Outcome {
    let c = &state.control;
    let p = request.params();
    if p.parsed::<bool>("DryRun", "true or false")? == Some(true) {
        return Err(QueryFault::new(
            412,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    if !p.structs("TagSpecification").is_empty() {
        return Err(QueryFault::new(
            400,
            "InvalidParameterValue",
            "Tags on VPCs, subnets and security groups are not supported by Skiff yet: create the resource without --tag-specifications",
        ));
    }
    let owner = c.owner_id();
    match request.action.as_str() {
        "CreateVpc" => {
            let vpc = c.create_vpc(p.required("CidrBlock")?).await.map_err(fault)?;
            let mut w = XmlWriter::new();
            w.structure("vpc", |w| write_vpc(w, &vpc, owner));
            Ok(w)
        }
        "DescribeVpcs" => {
            let vpcs = c
                .describe_vpcs(&p.strings("VpcId"), &filters(&p)?)
                .await
                .map_err(fault)?;
            let mut w = XmlWriter::new();
            w.items("vpcSet", &vpcs, |w, vpc| write_vpc(w, vpc, owner));
            Ok(w)
        }
        "CreateSubnet" => {
            let view = c
                .create_subnet(
                    p.required("VpcId")?,
                    p.required("CidrBlock")?,
                    p.get("AvailabilityZone"),
                )
                .await
                .map_err(fault)?;
            let mut w = XmlWriter::new();
            w.structure("subnet", |w| write_subnet(w, &view, state));
            Ok(w)
        }
        "DescribeSubnets" => {
            let views = c
                .describe_subnets(&p.strings("SubnetId"), &filters(&p)?)
                .await
                .map_err(fault)?;
            let mut w = XmlWriter::new();
            w.items("subnetSet", &views, |w, view| write_subnet(w, view, state));
            Ok(w)
        }
        "DeleteSubnet" => {
            c.delete_subnet(p.required("SubnetId")?).await.map_err(fault)?;
            Ok(XmlWriter::new())
        }
        "CreateSecurityGroup" => {
            let group = c
                .create_security_group(
                    p.required("GroupName")?,
                    p.required("GroupDescription")?,
                    p.get("VpcId"),
                )
                .await
                .map_err(fault)?;
            let mut w = XmlWriter::new();
            w.text("return", true)
                .text("groupId", &group.group_id)
                .text("securityGroupArn", group_arn(state, &group.group_id));
            Ok(w)
        }
        "DescribeSecurityGroups" => {
            let groups = c
                .describe_security_groups(
                    &p.strings("GroupId"),
                    &p.strings("GroupName"),
                    &filters(&p)?,
                )
                .await
                .map_err(fault)?;
            let mut w = XmlWriter::new();
            w.items("securityGroupInfo", &groups, |w, g| {
                write_group(w, g, state)
            });
            Ok(w)
        }
        "DeleteSecurityGroup" => {
            let id = c.delete_security_group(&target(&p)?).await.map_err(fault)?;
            let mut w = XmlWriter::new();
            w.text("return", true).text("groupId", id);
            Ok(w)
        }
        "AuthorizeSecurityGroupIngress" => {
            change(state, &p, Direction::Ingress, true).await
        }
        "AuthorizeSecurityGroupEgress" => change(state, &p, Direction::Egress, true).await,
        "RevokeSecurityGroupIngress" => change(state, &p, Direction::Ingress, false).await,
        "RevokeSecurityGroupEgress" => change(state, &p, Direction::Egress, false).await,
        other => Err(QueryFault::new(
            400,
            "InvalidAction",
            format!("EC2 action {other} is not supported by Skiff: it serves VPCs, subnets and security groups (Create/Describe/Delete, Authorize/Revoke)"),
        )),
    }
}

fn fault(error: NetworkError) -> QueryFault {
    QueryFault::new(
        error.http_status(),
        error.code(),
        model::error_chain(&error),
    )
}

/// `Filter.N.Name` / `Filter.N.Value.M`.
fn filters(p: &Params<'_>) -> Result<Vec<Filter>, QueryFault> {
    p.structs("Filter")
        .iter()
        .map(|f| {
            Ok(Filter {
                name: f.required("Name")?.to_owned(),
                values: f.strings("Value"),
            })
        })
        .collect()
}

/// The group an action applies to: `GroupId`, else `GroupName`.
fn target(p: &Params<'_>) -> Result<GroupRef, QueryFault> {
    match (p.get("GroupId"), p.get("GroupName")) {
        (Some(id), _) if !id.is_empty() => Ok(GroupRef::Id(id.to_owned())),
        (_, Some(name)) if !name.is_empty() => Ok(GroupRef::Name(name.to_owned())),
        _ => Err(QueryFault::new(
            400,
            "MissingParameter",
            "The request must contain the parameter GroupId or GroupName",
        )),
    }
}

async fn change(state: &ApiState, p: &Params<'_>, direction: Direction, add: bool) -> Outcome {
    let group = target(p)?;
    let permissions = permissions(p)?;
    let c = &state.control;
    if add {
        c.authorize_security_group(&group, direction, &permissions)
            .await
    } else {
        c.revoke_security_group(&group, direction, &permissions)
            .await
    }
    .map_err(fault)?;
    let mut w = XmlWriter::new();
    w.text("return", true);
    Ok(w)
}

/// `IpPermissions.N.*`, or the top-level shorthand members.
fn permissions(p: &Params<'_>) -> Result<Vec<PermissionRequest>, QueryFault> {
    let listed = p.structs("IpPermissions");
    if listed.is_empty() {
        let Some(protocol) = p.get("IpProtocol") else {
            return Err(QueryFault::new(
                400,
                "MissingParameter",
                "Give IpPermissions (or IpProtocol with CidrIp or SourceSecurityGroupName): e.g. --protocol tcp --port 80 --cidr 10.0.0.0/8",
            ));
        };
        let mut request = permission(
            protocol,
            p.parsed("FromPort", "a whole number")?,
            p.parsed("ToPort", "a whole number")?,
        )?;
        if let Some(cidr) = p.get("CidrIp") {
            request.permission.cidrs.push((cidr_of(cidr)?, None));
        }
        if let Some(name) = p.get("SourceSecurityGroupName") {
            request.groups.push((group_ref(name), None));
        }
        return Ok(vec![request]);
    }
    listed
        .iter()
        .map(|item| {
            if !item.structs("Ipv6Ranges").is_empty() || !item.structs("PrefixListIds").is_empty()
            {
                return Err(QueryFault::new(
                    400,
                    "InvalidParameterValue",
                    "Skiff's security groups take IPv4 ranges (IpRanges) and groups (UserIdGroupPairs) only: IPv6 ranges and prefix lists are not supported",
                ));
            }
            let mut request = permission(
                item.required("IpProtocol")?,
                item.parsed("FromPort", "a whole number")?,
                item.parsed("ToPort", "a whole number")?,
            )?;
            for range in item.structs("IpRanges") {
                let description = range.get("Description").map(str::to_owned);
                request
                    .permission
                    .cidrs
                    .push((cidr_of(range.required("CidrIp")?)?, description));
            }
            for pair in item.structs("Groups") {
                let description = pair.get("Description").map(str::to_owned);
                let peer = match (pair.get("GroupId"), pair.get("GroupName")) {
                    (Some(id), _) => GroupRef::Id(id.to_owned()),
                    (None, Some(name)) => group_ref(name),
                    (None, None) => {
                        return Err(QueryFault::new(
                            400,
                            "MissingParameter",
                            "Each UserIdGroupPair needs a GroupId (or GroupName)",
                        ))
                    }
                };
                request.groups.push((peer, description));
            }
            Ok(request)
        })
        .collect()
}

fn permission(
    protocol: &str,
    from_port: Option<i32>,
    to_port: Option<i32>,
) -> Result<PermissionRequest, QueryFault> {
    let invalid = |e: model::vpc::VpcError| QueryFault::new(400, e.code(), e.to_string());
    let protocol = IpProtocol::parse(protocol).map_err(invalid)?;
    Ok(PermissionRequest {
        permission: IpPermission::new(protocol, from_port, to_port).map_err(invalid)?,
        groups: vec![],
    })
}

fn cidr_of(value: &str) -> Result<ipnet::Ipv4Net, QueryFault> {
    model::vpc::parse_rule_cidr(value).map_err(|e| QueryFault::new(400, e.code(), e.to_string()))
}

fn group_ref(value: &str) -> GroupRef {
    if value.starts_with("sg-") {
        GroupRef::Id(value.to_owned())
    } else {
        GroupRef::Name(value.to_owned())
    }
}

fn group_arn(state: &ApiState, id: &str) -> String {
    format!(
        "arn:aws:ec2:{}:{}:security-group/{id}",
        state.region,
        state.control.owner_id()
    )
}

// --- result shapes ----------------------------------------------------------------------

fn write_vpc(w: &mut XmlWriter, vpc: &Vpc, owner: &str) {
    let association = format!("vpc-cidr-assoc-{}", vpc.vpc_id.trim_start_matches("vpc-"));
    w.text("vpcId", &vpc.vpc_id)
        .text("ownerId", owner)
        .text("state", "available")
        .text("cidrBlock", vpc.cidr_block)
        .items("cidrBlockAssociationSet", [vpc], |w, vpc| {
            w.text("associationId", &association)
                .text("cidrBlock", vpc.cidr_block)
                .structure("cidrBlockState", |w| {
                    w.text("state", "associated");
                });
        })
        .text("dhcpOptionsId", "default")
        .text("instanceTenancy", "default")
        .text("isDefault", vpc.is_default);
}

fn write_subnet(w: &mut XmlWriter, view: &SubnetView, state: &ApiState) {
    let s: &Subnet = &view.subnet;
    let owner = state.control.owner_id();
    w.text("subnetId", &s.subnet_id)
        .text(
            "subnetArn",
            format!(
                "arn:aws:ec2:{}:{owner}:subnet/{}",
                state.region, s.subnet_id
            ),
        )
        .text("ownerId", owner)
        .text("state", "available")
        .text("vpcId", &s.vpc_id)
        .text("cidrBlock", s.cidr_block)
        .text("availableIpAddressCount", view.available_ip_address_count)
        .text("availabilityZone", &s.availability_zone)
        .text("defaultForAz", s.default_for_az)
        .text("mapPublicIpOnLaunch", s.map_public_ip_on_launch)
        .text("assignIpv6AddressOnCreation", false)
        .text("ipv6Native", false);
}

fn write_group(w: &mut XmlWriter, g: &SecurityGroup, state: &ApiState) {
    let owner = state.control.owner_id();
    w.text("ownerId", owner)
        .text("groupId", &g.group_id)
        .text("groupName", &g.group_name)
        .text("groupDescription", &g.description)
        .text("vpcId", &g.vpc_id)
        .text("securityGroupArn", group_arn(state, &g.group_id));
    for (element, direction) in [
        ("ipPermissions", Direction::Ingress),
        ("ipPermissionsEgress", Direction::Egress),
    ] {
        let permissions = model::vpc::permissions(g.rules(direction));
        w.items(element, &permissions, |w, p| write_permission(w, p, owner));
    }
}

fn write_permission(w: &mut XmlWriter, p: &IpPermission, owner: &str) {
    w.text("ipProtocol", p.protocol.as_str());
    if p.protocol != IpProtocol::All {
        w.text("fromPort", p.from_port).text("toPort", p.to_port);
    }
    w.items("groups", &p.groups, |w, (id, description)| {
        w.optional("description", description.as_ref())
            .text("groupId", id)
            .text("userId", owner);
    })
    .items("ipRanges", &p.cidrs, |w, (cidr, description)| {
        w.text("cidrIp", cidr)
            .optional("description", description.as_ref());
    })
    .items("ipv6Ranges", [(); 0], |_, ()| {})
    .items("prefixListIds", [(); 0], |_, ()| {});
}
