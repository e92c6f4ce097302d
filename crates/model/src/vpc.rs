//! VPCs, subnets and security groups as the control plane stores them, and the EC2 rules
//! that validate them: CIDR sizes and containment, protocols and port ranges, filters.
//!
//! A security group's rules are kept one per (protocol, port range, peer): EC2's wire
//! form, the [`IpPermission`], groups several peers under one protocol and port range,
//! so [`IpPermission::rules`] splits a request into rules (the unit of deduplication and
//! revocation) and [`permissions`] groups stored rules back for DescribeSecurityGroups.
//!
//! ```text
//!  IpPermission{tcp 80-80, IpRanges [10.0.0.0/8, 192.168.0.0/16], Groups [sg-a]}
//!     -> rule{tcp 80-80 from 10.0.0.0/8}
//!        rule{tcp 80-80 from 192.168.0.0/16}
//!        rule{tcp 80-80 from sg-a}
//! ```

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// The name of the group every VPC is created with.
pub const DEFAULT_GROUP_NAME: &str = "default";
/// The description of every VPC's default group.
pub const DEFAULT_GROUP_DESCRIPTION: &str = "default VPC security group";
/// The smallest prefix length (largest network) EC2 allows for a VPC or subnet.
pub const MIN_PREFIX_LEN: u8 = 16;
/// The largest prefix length (smallest network) EC2 allows for a VPC or subnet.
pub const MAX_PREFIX_LEN: u8 = 28;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vpc {
    pub vpc_id: String,
    pub cidr_block: Ipv4Net,
    pub is_default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subnet {
    pub subnet_id: String,
    pub vpc_id: String,
    pub cidr_block: Ipv4Net,
    pub availability_zone: String,
    pub default_for_az: bool,
    pub map_public_ip_on_launch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroup {
    pub group_id: String,
    pub group_name: String,
    pub description: String,
    pub vpc_id: String,
    /// What may reach members of the group.
    pub ingress: Vec<SecurityGroupRule>,
    /// Where members of the group may send.
    pub egress: Vec<SecurityGroupRule>,
}

impl SecurityGroup {
    /// A new group: no ingress, all egress allowed (EC2's defaults for a new group).
    pub fn new(name: &str, description: &str, vpc_id: &str) -> Self {
        SecurityGroup {
            group_id: new_id("sg"),
            group_name: name.to_owned(),
            description: description.to_owned(),
            vpc_id: vpc_id.to_owned(),
            ingress: vec![],
            egress: vec![SecurityGroupRule::allow_all(RulePeer::Cidr(
                Ipv4Net::default(),
            ))],
        }
    }

    /// A VPC's `default` group: members reach each other, and send anywhere.
    pub fn default_for(vpc_id: &str) -> Self {
        let mut group = SecurityGroup::new(DEFAULT_GROUP_NAME, DEFAULT_GROUP_DESCRIPTION, vpc_id);
        group.ingress = vec![SecurityGroupRule::allow_all(RulePeer::Group(
            group.group_id.clone(),
        ))];
        group
    }

    pub fn is_default(&self) -> bool {
        self.group_name == DEFAULT_GROUP_NAME
    }

    pub fn rules(&self, direction: Direction) -> &[SecurityGroupRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn rules_mut(&mut self, direction: Direction) -> &mut Vec<SecurityGroupRule> {
        match direction {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }

    /// Whether any rule names `group_id` as its peer.
    pub fn references(&self, group_id: &str) -> bool {
        self.ingress
            .iter()
            .chain(&self.egress)
            .any(|r| matches!(&r.peer, RulePeer::Group(g) if g == group_id))
    }
}

/// Which side of a group a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A rule's IP protocol; on the wire `-1` (all), `tcp`, `udp`, `icmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpProtocol {
    #[serde(rename = "-1")]
    All,
    #[serde(rename = "tcp")]
    Tcp,
    #[serde(rename = "udp")]
    Udp,
    #[serde(rename = "icmp")]
    Icmp,
}

impl IpProtocol {
    /// Reads EC2's spellings: names, `-1`/`all`, or the protocol numbers 6, 17 and 1.
    pub fn parse(value: &str) -> Result<Self, VpcError> {
        match value.to_ascii_lowercase().as_str() {
            "-1" | "all" => Ok(IpProtocol::All),
            "tcp" | "6" => Ok(IpProtocol::Tcp),
            "udp" | "17" => Ok(IpProtocol::Udp),
            "icmp" | "1" => Ok(IpProtocol::Icmp),
            _ => Err(VpcError::InvalidProtocol {
                value: value.to_owned(),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IpProtocol::All => "-1",
            IpProtocol::Tcp => "tcp",
            IpProtocol::Udp => "udp",
            IpProtocol::Icmp => "icmp",
        }
    }

    /// The IP protocol number; None for all protocols.
    pub fn number(self) -> Option<u8> {
        match self {
            IpProtocol::All => None,
            IpProtocol::Tcp => Some(6),
            IpProtocol::Udp => Some(17),
            IpProtocol::Icmp => Some(1),
        }
    }
}

/// The other end of a rule: an address range or the members of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RulePeer {
    Cidr(Ipv4Net),
    Group(String),
}

/// One rule: one protocol and port range, one peer.
///
/// Ports: tcp and udp hold `from_port..=to_port` within 0-65535; icmp holds the ICMP
/// type in `from_port` and the code in `to_port`, -1 meaning any; all protocols hold
/// -1 in both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroupRule {
    pub protocol: IpProtocol,
    pub from_port: i32,
    pub to_port: i32,
    pub peer: RulePeer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl SecurityGroupRule {
    /// All protocols and ports to or from `peer`.
    pub fn allow_all(peer: RulePeer) -> Self {
        SecurityGroupRule {
            protocol: IpProtocol::All,
            from_port: -1,
            to_port: -1,
            peer,
            description: None,
        }
    }

    /// Whether two rules allow the same traffic (descriptions aside), as EC2 compares
    /// them for InvalidPermission.Duplicate and revocation.
    pub fn same_traffic(&self, other: &SecurityGroupRule) -> bool {
        self.protocol == other.protocol
            && self.from_port == other.from_port
            && self.to_port == other.to_port
            && self.peer == other.peer
    }

    /// Whether the rule lets a packet of protocol number `protocol` to `port` (the ICMP
    /// type for icmp) through; the peer is the caller's to match.
    pub fn allows(&self, protocol: u8, port: u16) -> bool {
        match self.protocol {
            IpProtocol::All => true,
            IpProtocol::Icmp => {
                protocol == 1 && (self.from_port == -1 || self.from_port == i32::from(port))
            }
            p => {
                p.number() == Some(protocol)
                    && (self.from_port..=self.to_port).contains(&i32::from(port))
            }
        }
    }
}

impl fmt::Display for SecurityGroupRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = match &self.peer {
            RulePeer::Cidr(net) => net.to_string(),
            RulePeer::Group(id) => id.clone(),
        };
        match self.protocol {
            IpProtocol::All => write!(f, "all traffic with {peer}"),
            p => write!(
                f,
                "{} {}-{} with {peer}",
                p.as_str(),
                self.from_port,
                self.to_port
            ),
        }
    }
}

/// EC2's `IpPermission`: one protocol and port range for several peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPermission {
    pub protocol: IpProtocol,
    pub from_port: i32,
    pub to_port: i32,
    /// Address ranges with their descriptions.
    pub cidrs: Vec<(Ipv4Net, Option<String>)>,
    /// Security group ids with their descriptions.
    pub groups: Vec<(String, Option<String>)>,
}

impl IpPermission {
    /// Checks and normalises a permission from the wire. Missing tcp/udp ports (or -1)
    /// mean all ports; missing icmp type and code mean any.
    pub fn new(
        protocol: IpProtocol,
        from_port: Option<i32>,
        to_port: Option<i32>,
    ) -> Result<Self, VpcError> {
        let malformed = |reason: &'static str| VpcError::MalformedPermission {
            protocol: protocol.as_str(),
            from_port,
            to_port,
            reason,
        };
        let (from, to) = match (protocol, from_port, to_port) {
            (IpProtocol::All, _, _) => (-1, -1),
            (IpProtocol::Tcp | IpProtocol::Udp, None | Some(-1), None | Some(-1)) => (0, 65535),
            (IpProtocol::Tcp | IpProtocol::Udp, Some(from), Some(to)) => {
                if !(0..=65535).contains(&from) || !(0..=65535).contains(&to) {
                    return Err(malformed("ports must be from 0 to 65535"));
                }
                if from > to {
                    return Err(malformed("FromPort must not be greater than ToPort"));
                }
                (from, to)
            }
            (IpProtocol::Tcp | IpProtocol::Udp, _, _) => {
                return Err(malformed("give both FromPort and ToPort, or neither"))
            }
            (IpProtocol::Icmp, from, to) => {
                let (from, to) = (from.unwrap_or(-1), to.unwrap_or(-1));
                if !(-1..=255).contains(&from) || !(-1..=255).contains(&to) {
                    return Err(malformed(
                        "the ICMP type (FromPort) and code (ToPort) must be from -1 to 255",
                    ));
                }
                if from == -1 && to != -1 {
                    return Err(malformed("an ICMP code needs an ICMP type"));
                }
                (from, to)
            }
        };
        Ok(IpPermission {
            protocol,
            from_port: from,
            to_port: to,
            cidrs: vec![],
            groups: vec![],
        })
    }

    /// One rule per peer; a permission without peers is malformed.
    pub fn rules(&self) -> Result<Vec<SecurityGroupRule>, VpcError> {
        if self.cidrs.is_empty() && self.groups.is_empty() {
            return Err(VpcError::MalformedPermission {
                protocol: self.protocol.as_str(),
                from_port: Some(self.from_port),
                to_port: Some(self.to_port),
                reason: "name at least one peer: IpRanges CidrIp or UserIdGroupPairs GroupId",
            });
        }
        let rule = |peer, description: &Option<String>| SecurityGroupRule {
            protocol: self.protocol,
            from_port: self.from_port,
            to_port: self.to_port,
            peer,
            description: description.clone(),
        };
        Ok(self
            .cidrs
            .iter()
            .map(|(net, d)| rule(RulePeer::Cidr(*net), d))
            .chain(
                self.groups
                    .iter()
                    .map(|(id, d)| rule(RulePeer::Group(id.clone()), d)),
            )
            .collect())
    }
}

/// Groups rules by protocol and port range, in first-seen order.
pub fn permissions(rules: &[SecurityGroupRule]) -> Vec<IpPermission> {
    let mut out: Vec<IpPermission> = Vec::new();
    for rule in rules {
        let index = match out.iter().position(|p| {
            (p.protocol, p.from_port, p.to_port) == (rule.protocol, rule.from_port, rule.to_port)
        }) {
            Some(index) => index,
            None => {
                out.push(IpPermission {
                    protocol: rule.protocol,
                    from_port: rule.from_port,
                    to_port: rule.to_port,
                    cidrs: vec![],
                    groups: vec![],
                });
                out.len() - 1
            }
        };
        let description = rule.description.clone();
        match &rule.peer {
            RulePeer::Cidr(net) => out[index].cidrs.push((*net, description)),
            RulePeer::Group(id) => out[index].groups.push((id.clone(), description)),
        }
    }
    out
}

/// A fresh EC2 id: `prefix-` and 17 lower-case hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 9];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{}", &hex[..17])
}

/// Parses a CIDR block that must be written as its network address (`10.0.0.0/16`).
pub fn parse_network(value: &str) -> Result<Ipv4Net, VpcError> {
    let invalid = || VpcError::InvalidCidr {
        value: value.to_owned(),
    };
    let net: Ipv4Net = value.parse().map_err(|_| invalid())?;
    if net.network() != net.addr() {
        return Err(invalid());
    }
    Ok(net)
}

/// Parses a rule's address range; host bits are cleared (`10.0.0.5/8` is `10.0.0.0/8`).
pub fn parse_rule_cidr(value: &str) -> Result<Ipv4Net, VpcError> {
    value
        .parse::<Ipv4Net>()
        .map(|net| net.trunc())
        .map_err(|_| VpcError::InvalidCidr {
            value: value.to_owned(),
        })
}

/// Checks a VPC's size: /16 to /28.
pub fn check_vpc_cidr(cidr: Ipv4Net) -> Result<(), VpcError> {
    if (MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&cidr.prefix_len()) {
        Ok(())
    } else {
        Err(VpcError::VpcRange { cidr })
    }
}

/// Checks a new subnet: /16 to /28, inside its VPC, overlapping none of `siblings`.
pub fn check_subnet_cidr(cidr: Ipv4Net, vpc: &Vpc, siblings: &[Subnet]) -> Result<(), VpcError> {
    if !(MIN_PREFIX_LEN..=MAX_PREFIX_LEN).contains(&cidr.prefix_len())
        || !vpc.cidr_block.contains(&cidr)
    {
        return Err(VpcError::SubnetRange {
            cidr,
            vpc_cidr: vpc.cidr_block,
        });
    }
    if let Some(other) = siblings.iter().find(|s| overlaps(s.cidr_block, cidr)) {
        return Err(VpcError::SubnetConflict {
            cidr,
            subnet_id: other.subnet_id.clone(),
            other: other.cidr_block,
        });
    }
    Ok(())
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks a security group name: 1-255 characters, not starting with `sg-`.
pub fn check_group_name(name: &str) -> Result<(), VpcError> {
    if name.is_empty() || name.len() > 255 || name.starts_with("sg-") {
        return Err(VpcError::InvalidGroupName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// One Describe* filter: `Name=vpc-id,Values=vpc-1,vpc-2`. A resource matches when the
/// named field equals any of the values; `*` in a value matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    /// Whether `field` (the resource's value for this filter) matches.
    pub fn accepts(&self, field: &str) -> bool {
        self.values.iter().any(|pattern| wildcard(pattern, field))
    }

    /// Checks every filter against `fields`, the resource's value of each filter name it
    /// supports; a filter name it does not support is refused.
    pub fn all_match(
        filters: &[Filter],
        fields: &[(&str, String)],
        resource: &'static str,
    ) -> Result<bool, VpcError> {
        for filter in filters {
            let Some((_, value)) = fields.iter().find(|(name, _)| *name == filter.name) else {
                return Err(VpcError::UnknownFilter {
                    name: filter.name.clone(),
                    resource,
                    supported: fields
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            if !filter.accepts(value) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(after) = text.strip_prefix(head) else {
                return false;
            };
            (0..=after.len())
                .filter(|i| after.is_char_boundary(*i))
                .any(|i| wildcard(rest, &after[i..]))
        }
    }
}

/// The first host address of `net`: the gateway of the network it names.
pub fn first_host(net: Ipv4Net) -> Ipv4Addr {
    net.hosts().next().unwrap_or(net.network())
}

/// Invalid VPC, subnet or security group input. [`VpcError::code`] is EC2's error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VpcError {
    #[error(
        "{value:?} is not a valid IPv4 CIDR block: write it as network/prefix, e.g. 10.0.0.0/16"
    )]
    InvalidCidr { value: String },

    #[error("The CIDR '{cidr}' is invalid: a VPC must be from /16 to /28")]
    VpcRange { cidr: Ipv4Net },

    #[error("The CIDR '{cidr}' is invalid: a subnet must be from /16 to /28 and lie inside its VPC's {vpc_cidr}")]
    SubnetRange { cidr: Ipv4Net, vpc_cidr: Ipv4Net },

    #[error("The CIDR '{cidr}' conflicts with another subnet: {subnet_id} holds {other}; pick a free range or delete that subnet")]
    SubnetConflict {
        cidr: Ipv4Net,
        subnet_id: String,
        other: Ipv4Net,
    },

    #[error("Invalid value '{value}' for IP protocol: use tcp, udp, icmp or -1 (all)")]
    InvalidProtocol { value: String },

    #[error(
        "Invalid IP permission ({protocol}, FromPort {from_port:?}, ToPort {to_port:?}): {reason}"
    )]
    MalformedPermission {
        protocol: &'static str,
        from_port: Option<i32>,
        to_port: Option<i32>,
        reason: &'static str,
    },

    #[error(
        "Invalid security group name {name:?}: use 1 to 255 characters, not starting with sg-"
    )]
    InvalidGroupName { name: String },

    #[error("The filter '{name}' is invalid for {resource}: supported filters are {supported}")]
    UnknownFilter {
        name: String,
        resource: &'static str,
        supported: String,
    },
}

impl VpcError {
    /// EC2's error code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            VpcError::VpcRange { .. } => "InvalidVpc.Range",
            VpcError::SubnetRange { .. } => "InvalidSubnet.Range",
            VpcError::SubnetConflict { .. } => "InvalidSubnet.Conflict",
            VpcError::MalformedPermission { .. } => "InvalidPermission.Malformed",
            VpcError::InvalidCidr { .. }
            | VpcError::InvalidProtocol { .. }
            | VpcError::InvalidGroupName { .. }
            | VpcError::UnknownFilter { .. } => "InvalidParameterValue",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn vpc(cidr: &str) -> Vpc {
        Vpc {
            vpc_id: "vpc-1".into(),
            cidr_block: net(cidr),
            is_default: false,
        }
    }

    fn subnet(id: &str, cidr: &str) -> Subnet {
        Subnet {
            subnet_id: id.into(),
            vpc_id: "vpc-1".into(),
            cidr_block: net(cidr),
            availability_zone: "us-east-1a".into(),
            default_for_az: false,
            map_public_ip_on_launch: false,
        }
    }

    #[test]
    fn ids_are_prefix_and_17_hex_digits() {
        let id = new_id("sg");
        assert_eq!(id.len(), 20);
        assert!(id[3..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(new_id("sg"), id);
    }

    #[test]
    fn vpc_cidrs_are_16_to_28() {
        assert!(check_vpc_cidr(net("10.0.0.0/16")).is_ok());
        assert!(check_vpc_cidr(net("10.0.0.0/28")).is_ok());
        let err = check_vpc_cidr(net("10.0.0.0/8")).unwrap_err();
        assert_eq!(err.code(), "InvalidVpc.Range");
        assert_eq!(
            check_vpc_cidr(net("10.0.0.0/29")).unwrap_err().code(),
            "InvalidVpc.Range"
        );
        assert!(parse_network("10.0.0.1/16").is_err(), "host bits set");
        assert!(parse_network("10.0.0.0").is_err());
        assert_eq!(
            parse_network("nonsense").unwrap_err().code(),
            "InvalidParameterValue"
        );
        assert_eq!(parse_rule_cidr("10.1.2.3/8").unwrap(), net("10.0.0.0/8"));
    }

    #[test]
    fn subnets_lie_inside_their_vpc_and_do_not_overlap() {
        let v = vpc("10.0.0.0/16");
        let siblings = [
            subnet("subnet-a", "10.0.0.0/24"),
            subnet("subnet-b", "10.0.4.0/22"),
        ];
        assert!(check_subnet_cidr(net("10.0.1.0/24"), &v, &siblings).is_ok());
        let range = |c| check_subnet_cidr(net(c), &v, &siblings).unwrap_err().code();
        assert_eq!(
            range("10.1.0.0/24"),
            "InvalidSubnet.Range",
            "outside the VPC"
        );
        assert_eq!(
            range("10.0.0.0/15"),
            "InvalidSubnet.Range",
            "larger than the VPC"
        );
        assert_eq!(
            range("10.0.0.0/29"),
            "InvalidSubnet.Range",
            "smaller than /28"
        );
        assert_eq!(
            range("10.0.0.128/25"),
            "InvalidSubnet.Conflict",
            "inside subnet-a"
        );
        assert_eq!(
            range("10.0.0.0/16"),
            "InvalidSubnet.Conflict",
            "covers both"
        );
        let err = check_subnet_cidr(net("10.0.5.0/24"), &v, &siblings).unwrap_err();
        assert!(err.to_string().contains("subnet-b"), "{err}");
    }

    #[test]
    fn protocols_accept_names_numbers_and_all() {
        for (text, protocol) in [
            ("tcp", IpProtocol::Tcp),
            ("6", IpProtocol::Tcp),
            ("UDP", IpProtocol::Udp),
            ("17", IpProtocol::Udp),
            ("icmp", IpProtocol::Icmp),
            ("1", IpProtocol::Icmp),
            ("-1", IpProtocol::All),
            ("all", IpProtocol::All),
        ] {
            assert_eq!(IpProtocol::parse(text).unwrap(), protocol, "{text}");
        }
        assert_eq!(
            IpProtocol::parse("gre").unwrap_err().code(),
            "InvalidParameterValue"
        );
    }

    #[test]
    fn permissions_normalise_ports() {
        let p =
            |proto, from, to| IpPermission::new(proto, from, to).map(|p| (p.from_port, p.to_port));
        assert_eq!(p(IpProtocol::Tcp, Some(80), Some(80)), Ok((80, 80)));
        assert_eq!(p(IpProtocol::Tcp, None, None), Ok((0, 65535)));
        assert_eq!(p(IpProtocol::Udp, Some(-1), Some(-1)), Ok((0, 65535)));
        assert_eq!(p(IpProtocol::All, Some(22), Some(22)), Ok((-1, -1)));
        assert_eq!(p(IpProtocol::Icmp, None, None), Ok((-1, -1)));
        assert_eq!(p(IpProtocol::Icmp, Some(8), Some(-1)), Ok((8, -1)));
        for (proto, from, to) in [
            (IpProtocol::Tcp, Some(90), Some(80)),
            (IpProtocol::Tcp, Some(0), Some(70000)),
            (IpProtocol::Tcp, Some(80), None),
            (IpProtocol::Icmp, Some(-1), Some(3)),
            (IpProtocol::Icmp, Some(300), Some(0)),
        ] {
            let err = IpPermission::new(proto, from, to).unwrap_err();
            assert_eq!(
                err.code(),
                "InvalidPermission.Malformed",
                "{proto:?} {from:?} {to:?}"
            );
        }
    }

    #[test]
    fn permissions_split_into_rules_and_group_back() {
        let mut web = IpPermission::new(IpProtocol::Tcp, Some(80), Some(80)).unwrap();
        assert_eq!(
            web.rules().unwrap_err().code(),
            "InvalidPermission.Malformed"
        );
        web.cidrs = vec![
            (net("10.0.0.0/8"), None),
            (net("192.168.0.0/16"), Some("lan".into())),
        ];
        web.groups = vec![("sg-a".into(), None)];
        let mut rules = web.rules().unwrap();
        assert_eq!(rules.len(), 3);
        rules.push(SecurityGroupRule::allow_all(RulePeer::Group("sg-b".into())));
        let grouped = permissions(&rules);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0], web);
        assert_eq!(grouped[1].protocol, IpProtocol::All);
    }

    #[test]
    fn rules_compare_by_traffic_and_match_packets() {
        let rule = |from, to, peer: &str| SecurityGroupRule {
            protocol: IpProtocol::Tcp,
            from_port: from,
            to_port: to,
            peer: RulePeer::Cidr(net(peer)),
            description: None,
        };
        let mut described = rule(80, 80, "10.0.0.0/8");
        described.description = Some("web".into());
        assert!(rule(80, 80, "10.0.0.0/8").same_traffic(&described));
        assert!(!rule(80, 81, "10.0.0.0/8").same_traffic(&described));
        assert!(!rule(80, 80, "10.0.0.0/16").same_traffic(&described));
        let range = rule(8000, 8080, "0.0.0.0/0");
        assert!(range.allows(6, 8000) && range.allows(6, 8080));
        assert!(!range.allows(6, 8081) && !range.allows(17, 8000));
        assert!(SecurityGroupRule::allow_all(RulePeer::Group("sg-a".into())).allows(17, 53));
    }

    #[test]
    fn new_groups_allow_all_egress_and_default_groups_their_members() {
        let group = SecurityGroup::new("web", "web", "vpc-1");
        assert!(group.ingress.is_empty());
        assert_eq!(
            group.egress,
            [SecurityGroupRule::allow_all(RulePeer::Cidr(net(
                "0.0.0.0/0"
            )))]
        );
        let default = SecurityGroup::default_for("vpc-1");
        assert!(default.is_default());
        assert_eq!(default.description, DEFAULT_GROUP_DESCRIPTION);
        assert!(default.references(&default.group_id));
        assert!(!group.references(&default.group_id));
    }

    #[test]
    fn filters_match_values_and_wildcards() {
        let f = |name: &str, values: &[&str]| Filter {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let fields = [
            ("vpc-id", "vpc-1".to_owned()),
            ("group-name", "web-prod".to_owned()),
        ];
        assert!(Filter::all_match(&[f("vpc-id", &["vpc-2", "vpc-1"])], &fields, "groups").unwrap());
        assert!(Filter::all_match(&[f("group-name", &["web-*"])], &fields, "groups").unwrap());
        assert!(!Filter::all_match(&[f("group-name", &["*-dev"])], &fields, "groups").unwrap());
        let err = Filter::all_match(&[f("owner-id", &["1"])], &fields, "groups").unwrap_err();
        assert_eq!(err.code(), "InvalidParameterValue");
        assert!(err.to_string().contains("vpc-id, group-name"), "{err}");
    }
}
