//! `skiff network sg allow|revoke` arguments: protocol, ports and peer, checked before
//! anything is sent, turned into EC2's `IpPermissions` members; and rules written back
//! for people (`tcp 8080-8090 from 10.0.0.0/8`).
//!
//! The peer flag says the direction: `--from`/`--from-group` make an ingress rule,
//! `--to`/`--to-group` an egress rule. Ports follow the protocol: tcp and udp need
//! `--port` (a port or an inclusive range), icmp takes the ICMP type there (none: every
//! type), `all` takes none.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::bail;
use clap::{ArgGroup, Args};
use ipnet::Ipv4Net;
use model::vpc::{Direction, IpPermission, IpProtocol, RulePeer, SecurityGroupRule};

#[derive(Args)]
#[command(group(ArgGroup::new("peer").required(true).args(["from", "from_group", "to", "to_group"])))]
pub struct RuleArgs {
    /// Security group id (sg-...) or name.
    pub group: String,
    /// tcp, udp, icmp or all.
    #[arg(long, default_value = "tcp", value_parser = parse_protocol)]
    pub protocol: IpProtocol,
    /// A port (8080) or an inclusive range (8080-8090); for icmp, the ICMP type.
    #[arg(long)]
    pub port: Option<PortRange>,
    /// Ingress from an address range (10.0.0.0/8; a bare address means /32).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub from: Option<Ipv4Net>,
    /// Ingress from the members of a security group of the same VPC (id or name).
    #[arg(long, value_name = "GROUP")]
    pub from_group: Option<String>,
    /// Egress to an address range (0.0.0.0/0 is anywhere; a bare address means /32).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub to: Option<Ipv4Net>,
    /// Egress to the members of a security group of the same VPC (id or name).
    #[arg(long, value_name = "GROUP")]
    pub to_group: Option<String>,
    /// VPC to look the group's name up in [default: the default VPC].
    #[arg(long)]
    pub vpc: Option<String>,
}

/// The other end of a rule as given: an address range, or a group still to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerArg {
    Cidr(Ipv4Net),
    Group(String),
}

impl RuleArgs {
    /// The rule's direction and peer, from whichever peer flag was given.
    pub fn peer(&self) -> (Direction, PeerArg) {
        let given = [
            (Direction::Ingress, self.from.map(PeerArg::Cidr)),
            (
                Direction::Ingress,
                self.from_group.clone().map(PeerArg::Group),
            ),
            (Direction::Egress, self.to.map(PeerArg::Cidr)),
            (Direction::Egress, self.to_group.clone().map(PeerArg::Group)),
        ];
        given
            .into_iter()
            .find_map(|(direction, peer)| Some((direction, peer?)))
            .expect("clap's `peer` group requires one of the peer flags")
    }

    /// The protocol and ports as a permission without peers, checked.
    pub fn permission(&self) -> anyhow::Result<IpPermission> {
        permission(self.protocol, self.port)
    }
}

/// A port or an inclusive port range: `8080`, `8080-8090`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let (from, to) = value.split_once('-').unwrap_or((value, value));
        let port = |text: &str| {
            text.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{text}` is not a port: use a number from 0 to 65535, or a range such as 8080-8090"))
        };
        let (from, to) = (port(from)?, port(to)?);
        if from > to {
            return Err(format!(
                "the range {value} runs backwards: write the lower port first ({to}-{from})"
            ));
        }
        Ok(PortRange { from, to })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

/// `--protocol`: EC2's names and numbers, `all` for every protocol.
fn parse_protocol(value: &str) -> Result<IpProtocol, String> {
    IpProtocol::parse(value)
        .map_err(|_| format!("`{value}` is not a protocol: use tcp, udp, icmp or all"))
}

/// `--from`/`--to`: a CIDR block (host bits are cleared, as EC2 does) or an address.
fn parse_cidr(value: &str) -> Result<Ipv4Net, String> {
    if let Ok(address) = value.parse::<Ipv4Addr>() {
        return Ok(Ipv4Net::from(address));
    }
    model::vpc::parse_rule_cidr(value).map_err(|_| {
        format!("`{value}` is not an IPv4 address or CIDR block such as 10.0.0.0/8; to name a security group, use --from-group or --to-group")
    })
}

/// The permission `protocol` and `port` describe, checked by the model's own rules.
fn permission(protocol: IpProtocol, port: Option<PortRange>) -> anyhow::Result<IpPermission> {
    let ports = match (protocol, port) {
        (IpProtocol::All, None) => (None, None),
        (IpProtocol::All, Some(_)) => {
            bail!("--port does not apply to --protocol all, which allows every port: leave --port out, or pick tcp or udp")
        }
        (IpProtocol::Tcp | IpProtocol::Udp, None) => bail!(
            "--protocol {} needs --port: a port (8080), a range (8080-8090), or 0-65535 for every port",
            protocol.as_str()
        ),
        (IpProtocol::Tcp | IpProtocol::Udp, Some(p)) => (Some(p.from.into()), Some(p.to.into())),
        (IpProtocol::Icmp, None) => (None, None),
        (IpProtocol::Icmp, Some(p)) if p.from == p.to => (Some(p.from.into()), None),
        (IpProtocol::Icmp, Some(p)) => bail!(
            "for icmp, --port is one ICMP type (8 is echo request), not the range {p}: leave it out to allow every type"
        ),
    };
    Ok(IpPermission::new(protocol, ports.0, ports.1)?)
}

/// The `IpPermissions.1.*` members of an Authorize/Revoke call for `permission`.
pub fn permission_members(permission: &IpPermission) -> Vec<(String, String)> {
    let prefix = "IpPermissions.1";
    let mut members = vec![(
        format!("{prefix}.IpProtocol"),
        permission.protocol.as_str().to_owned(),
    )];
    if permission.protocol != IpProtocol::All {
        members.push((
            format!("{prefix}.FromPort"),
            permission.from_port.to_string(),
        ));
        members.push((format!("{prefix}.ToPort"), permission.to_port.to_string()));
    }
    for (n, (cidr, _)) in permission.cidrs.iter().enumerate() {
        members.push((
            format!("{prefix}.IpRanges.{}.CidrIp", n + 1),
            cidr.to_string(),
        ));
    }
    for (n, (id, _)) in permission.groups.iter().enumerate() {
        members.push((format!("{prefix}.Groups.{}.GroupId", n + 1), id.clone()));
    }
    members
}

/// A rule's protocol for people: `all` rather than EC2's `-1`.
pub fn protocol_name(protocol: IpProtocol) -> &'static str {
    match protocol {
        IpProtocol::All => "all",
        other => other.as_str(),
    }
}

/// A rule's ports for people: `8080`, `8080-8090`, `all`, `type 8`, `type 3 code 4`.
pub fn ports(rule: &SecurityGroupRule) -> String {
    match (rule.protocol, rule.from_port, rule.to_port) {
        (IpProtocol::All, _, _) | (IpProtocol::Icmp, -1, _) => "all".to_owned(),
        (IpProtocol::Icmp, icmp_type, -1) => format!("type {icmp_type}"),
        (IpProtocol::Icmp, icmp_type, code) => format!("type {icmp_type} code {code}"),
        (_, 0, 65535) => "all".to_owned(),
        (_, from, to) if from == to => from.to_string(),
        (_, from, to) => format!("{from}-{to}"),
    }
}

/// A rule's peer for people: the CIDR block, or the group's name and id.
pub fn peer_name(peer: &RulePeer, group_name: impl Fn(&str) -> Option<String>) -> String {
    match peer {
        RulePeer::Cidr(net) => net.to_string(),
        RulePeer::Group(id) => match group_name(id) {
            Some(name) => format!("{name} ({id})"),
            None => id.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        rule: RuleArgs,
    }

    fn parse(args: &[&str]) -> Result<RuleArgs, clap::Error> {
        Command::try_parse_from(std::iter::once("allow").chain(args.iter().copied()))
            .map(|c| c.rule)
    }

    fn net(value: &str) -> Ipv4Net {
        value.parse().unwrap()
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "8080".parse(),
            Ok(PortRange {
                from: 8080,
                to: 8080
            })
        );
        assert_eq!("0-65535".parse(), Ok(PortRange { from: 0, to: 65535 }));
        let reversed = "90-80".parse::<PortRange>().unwrap_err();
        assert!(reversed.contains("80-90"), "{reversed}");
        for bad in ["", "http", "65536", "80-", "-1", "1-2-3", "80-x"] {
            let error = bad.parse::<PortRange>().unwrap_err();
            assert!(error.contains("not a port"), "{bad}: {error}");
        }
        assert_eq!(PortRange { from: 80, to: 90 }.to_string(), "80-90");
        assert_eq!(PortRange { from: 80, to: 80 }.to_string(), "80");
    }

    #[test]
    fn protocol_names() {
        for (name, protocol) in [
            ("tcp", IpProtocol::Tcp),
            ("UDP", IpProtocol::Udp),
            ("icmp", IpProtocol::Icmp),
            ("all", IpProtocol::All),
            ("-1", IpProtocol::All),
            ("6", IpProtocol::Tcp),
        ] {
            assert_eq!(parse_protocol(name), Ok(protocol), "{name}");
        }
        assert!(parse_protocol("sctp")
            .unwrap_err()
            .contains("tcp, udp, icmp or all"));
        assert_eq!(protocol_name(IpProtocol::All), "all");
        assert_eq!(protocol_name(IpProtocol::Udp), "udp");
    }

    #[test]
    fn peers_set_the_direction() {
        let rule = parse(&["web", "--port", "80", "--from", "10.1.2.3/8"]).unwrap();
        assert_eq!(
            rule.peer(),
            (Direction::Ingress, PeerArg::Cidr(net("10.0.0.0/8")))
        );
        let rule = parse(&["web", "--port", "80", "--from", "192.168.1.7"]).unwrap();
        assert_eq!(rule.peer().1, PeerArg::Cidr(net("192.168.1.7/32")));
        let rule = parse(&["web", "--port", "80", "--to-group", "db"]).unwrap();
        assert_eq!(
            rule.peer(),
            (Direction::Egress, PeerArg::Group("db".into()))
        );
        let rule = parse(&["web", "--port", "80", "--from-group", "sg-1"]).unwrap();
        assert_eq!(
            rule.peer(),
            (Direction::Ingress, PeerArg::Group("sg-1".into()))
        );
        let rule = parse(&["web", "--protocol", "all", "--to", "0.0.0.0/0"]).unwrap();
        assert_eq!(
            rule.peer(),
            (Direction::Egress, PeerArg::Cidr(net("0.0.0.0/0")))
        );

        let none = parse(&["web", "--port", "80"]).err().unwrap();
        assert_eq!(none.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let two = parse(&[
            "web",
            "--port",
            "80",
            "--from",
            "10.0.0.0/8",
            "--to",
            "10.0.0.0/8",
        ]);
        assert_eq!(
            two.err().unwrap().kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
        let name = parse(&["web", "--port", "80", "--from", "lb"])
            .err()
            .unwrap();
        assert!(name.to_string().contains("--from-group"), "{name}");
    }

    #[test]
    fn ports_follow_the_protocol() {
        let range = Some(PortRange {
            from: 8080,
            to: 8090,
        });
        let tcp = permission(IpProtocol::Tcp, range).unwrap();
        assert_eq!((tcp.from_port, tcp.to_port), (8080, 8090));
        let all = permission(IpProtocol::All, None).unwrap();
        assert_eq!((all.from_port, all.to_port), (-1, -1));
        let echo = permission(IpProtocol::Icmp, Some(PortRange { from: 8, to: 8 })).unwrap();
        assert_eq!((echo.from_port, echo.to_port), (8, -1));
        let any_icmp = permission(IpProtocol::Icmp, None).unwrap();
        assert_eq!((any_icmp.from_port, any_icmp.to_port), (-1, -1));

        let needs_port = permission(IpProtocol::Udp, None).unwrap_err();
        assert!(needs_port.to_string().contains("needs --port"));
        assert!(permission(IpProtocol::All, range).is_err());
        assert!(permission(IpProtocol::Icmp, range).is_err());
        let too_big = permission(IpProtocol::Icmp, Some(PortRange { from: 300, to: 300 }));
        assert!(too_big.unwrap_err().to_string().contains("ICMP type"));
    }

    #[test]
    fn permissions_become_ec2_members() {
        let mut permission =
            permission(IpProtocol::Tcp, Some(PortRange { from: 80, to: 90 })).unwrap();
        permission.cidrs.push((net("10.0.0.0/8"), None));
        permission.groups.push(("sg-1".into(), None));
        let members = permission_members(&permission);
        let expected = [
            ("IpPermissions.1.IpProtocol", "tcp"),
            ("IpPermissions.1.FromPort", "80"),
            ("IpPermissions.1.ToPort", "90"),
            ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/8"),
            ("IpPermissions.1.Groups.1.GroupId", "sg-1"),
        ];
        assert_eq!(
            members,
            expected.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec()
        );
        let mut all = super::permission(IpProtocol::All, None).unwrap();
        all.cidrs.push((net("0.0.0.0/0"), None));
        let names: Vec<String> = permission_members(&all)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            names,
            [
                "IpPermissions.1.IpProtocol",
                "IpPermissions.1.IpRanges.1.CidrIp"
            ]
        );
    }

    #[test]
    fn rules_read_for_people() {
        let rule = |protocol, from_port, to_port| SecurityGroupRule {
            protocol,
            from_port,
            to_port,
            peer: RulePeer::Group("sg-1".into()),
            description: None,
        };
        assert_eq!(ports(&rule(IpProtocol::Tcp, 80, 80)), "80");
        assert_eq!(ports(&rule(IpProtocol::Udp, 5000, 5010)), "5000-5010");
        assert_eq!(ports(&rule(IpProtocol::Tcp, 0, 65535)), "all");
        assert_eq!(ports(&rule(IpProtocol::All, -1, -1)), "all");
        assert_eq!(ports(&rule(IpProtocol::Icmp, -1, -1)), "all");
        assert_eq!(ports(&rule(IpProtocol::Icmp, 8, -1)), "type 8");
        assert_eq!(ports(&rule(IpProtocol::Icmp, 3, 4)), "type 3 code 4");

        let named = |id: &str| (id == "sg-1").then(|| "web".to_owned());
        assert_eq!(
            peer_name(&RulePeer::Group("sg-1".into()), named),
            "web (sg-1)"
        );
        assert_eq!(peer_name(&RulePeer::Group("sg-2".into()), named), "sg-2");
        assert_eq!(
            peer_name(&RulePeer::Cidr(net("10.0.0.0/8")), named),
            "10.0.0.0/8"
        );
    }
}
