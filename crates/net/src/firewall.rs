//! IPv4 forwarding and the bridge-wide nftables rules: NAT, host protection, and the
//! dispatch to per-task chains (the per-task chains themselves are `security`'s and
//! `ports`').
//!
//! The rules live in two tables of their own per bridge, so they never touch anyone
//! else's rules (nor those of another Skiff server on another bridge):
//!
//! ```text
//! table ip skiff_<bridge> {
//!   map ingress { type ipv4_addr : verdict }    # task address : jump in_<task>
//!   map egress  { type ipv4_addr : verdict }    # task address : jump out_<task>
//!   map published_tcp { type inet_service : verdict }  # host port : jump publish_<task>
//!   map published_udp { type inet_service : verdict }
//!   chain dnat { type nat hook prerouting priority dstnat;   # published ports, see `ports`
//!     fib daddr type local tcp dport vmap @published_tcp
//!     fib daddr type local udp dport vmap @published_udp
//!   }
//!   chain dnat_local { type nat hook output priority dstnat; # the same, from the host
//!     fib daddr type local tcp dport vmap @published_tcp
//!     fib daddr type local udp dport vmap @published_udp
//!   }
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ip saddr <subnet> oifname != <bridge> masquerade       # tasks reach the outside
//!     ip saddr 127.0.0.0/8 oifname <bridge> masquerade       # host's loopback to a task
//!   }
//!   chain forward { type filter hook forward priority filter;
//!     ct state established,related accept                    # replies, both ways
//!     ip saddr vmap @egress     # the sender's egress rules: return if allowed, else drop
//!     ip daddr vmap @ingress    # the receiver's ingress rules: accept or drop
//!     iifname <bridge> accept                                # tasks to the outside
//!     oifname <bridge> drop     # unsolicited traffic to addresses that are not tasks
//!   }
//!   chain input { type filter hook input priority filter;
//!     iifname != <bridge> accept
//!     ct state established,related accept                    # replies to the host
//!     <protocol> ct original daddr . proto-dst <service> accept  # per `HostService`
//!     drop                                     # no other service of the host, any address
//!   }
//! }
//! table bridge skiff_<bridge> {
//!   map ports { type ifname : verdict }         # host veth : jump guard_<task>
//!   chain prerouting { type filter hook prerouting priority filter;
//!     iifname vmap @ports                       # anti-spoofing, per task port
//!   }
//! }
//! ```
//!
//! Frames between two tasks never leave the bridge, so the bridge is set to pass its IPv4
//! traffic through the IP hooks (`nf_call_iptables`, the bridge's own switch): that is
//! how the forward chain, and conntrack, see task-to-task traffic. Matching by address
//! is sound because each task's `guard` chain drops frames whose MAC or IPv4 source is
//! not the task's before they reach the IP hooks. Traffic the host itself sends to a task
//! is local output, not forwarded: the host (its load balancer, health checks) always
//! reaches its tasks. Host services are matched on the connection's original
//! destination, so a service reached through a DNAT rule is named by what tasks dial.
//!
//! `install` runs once per agent start. It never deletes a table: base chains are
//! emptied and refilled in one transaction, and the per-task chains, sets and map
//! elements of running tasks stay in force across agent restarts. nftables runs every
//! table's base chains, so an accept here cannot override a drop in another table (for
//! example Docker's `FORWARD DROP` policy); such hosts need their own allowance.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::MetaKey;
use nftables::schema::SetType;
use nftables::stmt::Operator;
use nftables::types::{NfChainType, NfFamily, NfHook};

use crate::nft::{
    self, accept, address, drop, established, matches, meta, payload, string, vmap, Table,
};
use crate::NetError;

/// Chain holding the masquerade rule.
pub(crate) const POSTROUTING_CHAIN: &str = "postrouting";
/// Chain holding the forwarding policy.
pub(crate) const FORWARD_CHAIN: &str = "forward";
/// Chain protecting the host from its tasks.
pub(crate) const INPUT_CHAIN: &str = "input";
/// Chain of the bridge table dispatching frames to the senders' guard chains.
pub(crate) const PREROUTING_CHAIN: &str = "prerouting";
/// Verdict map from a task address to its ingress chain.
pub(crate) const INGRESS_MAP: &str = "ingress";
/// Verdict map from a task address to its egress chain.
pub(crate) const EGRESS_MAP: &str = "egress";
/// Verdict map from a task's host veth to its guard chain.
pub(crate) const PORTS_MAP: &str = "ports";
/// Chain sending connections to published ports of the host to their tasks.
pub(crate) const DNAT_CHAIN: &str = "dnat";
/// [`DNAT_CHAIN`] for connections the host itself opens.
pub(crate) const LOCAL_DNAT_CHAIN: &str = "dnat_local";
/// Verdict maps from a published host port to its task's DNAT chain, per transport.
pub(crate) const PUBLISHED_TCP_MAP: &str = "published_tcp";
pub(crate) const PUBLISHED_UDP_MAP: &str = "published_udp";
/// The host's loopback network, masqueraded when it reaches a task (see `ports`).
const LOOPBACK: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8);
/// `dstnat`, `srcnat` and `filter` in nft's priority keywords; `filter` is -200 for
/// bridges.
const DSTNAT_PRIORITY: i32 = -100;
const SRCNAT_PRIORITY: i32 = 100;
const FILTER_PRIORITY: i32 = 0;
const BRIDGE_FILTER_PRIORITY: i32 = -200;

/// The per-namespace IPv4 forwarding switch, read through the calling thread's namespace.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// A service of the host that tasks may reach, such as the task metadata endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostService {
    pub address: ServiceAddress,
    pub transport: Transport,
    pub port: u16,
}

/// Where a host service listens, as tasks dial it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAddress {
    /// The bridge's gateway address, whatever the subnet.
    Gateway,
    Fixed(Ipv4Addr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The protocol's name in nft (and in ECS).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    /// The verdict map of host ports published with this transport.
    pub(crate) fn published_map(self) -> &'static str {
        match self {
            Transport::Tcp => PUBLISHED_TCP_MAP,
            Transport::Udp => PUBLISHED_UDP_MAP,
        }
    }
}

/// The task metadata and credentials endpoints' address.
pub const METADATA_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 2);

/// What Skiff exposes to tasks by default: the metadata endpoint on tcp/80 and the
/// resolver on the gateway, udp and tcp 53.
pub fn default_host_services() -> Vec<HostService> {
    vec![
        HostService {
            address: ServiceAddress::Fixed(METADATA_ADDRESS),
            transport: Transport::Tcp,
            port: 80,
        },
        HostService {
            address: ServiceAddress::Gateway,
            transport: Transport::Udp,
            port: 53,
        },
        HostService {
            address: ServiceAddress::Gateway,
            transport: Transport::Tcp,
            port: 53,
        },
    ]
}

/// The IP table of `bridge`.
pub(crate) fn ip_table(bridge: &str) -> Table {
    Table {
        family: NfFamily::IP,
        name: format!("skiff_{bridge}"),
    }
}

/// The bridge table of `bridge`.
pub(crate) fn bridge_table(bridge: &str) -> Table {
    Table {
        family: NfFamily::Bridge,
        name: format!("skiff_{bridge}"),
    }
}

/// Turns on IPv4 forwarding in the calling thread's network namespace.
pub(crate) fn enable_ip_forwarding() -> Result<(), NetError> {
    enable("IPv4 forwarding", Path::new(IP_FORWARD))
}

/// Lets the bridge route packets with loopback addresses, so that the host's connections
/// from 127.0.0.1 to a published port, rewritten to a task, can leave through it (see
/// `ports`). The input chain still drops whatever tasks send to loopback addresses.
pub(crate) fn enable_route_localnet(bridge: &str) -> Result<(), NetError> {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    enable("loopback routing on the bridge", Path::new(&path))
}

/// Turns a boolean sysctl on.
fn enable(setting: &'static str, path: &Path) -> Result<(), NetError> {
    std::fs::write(path, "1").map_err(|source| NetError::Sysctl {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// What `install` needs to know about the bridge.
pub(crate) struct BaseRules<'a> {
    pub(crate) bridge: &'a str,
    pub(crate) subnet: Ipv4Net,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) services: &'a [HostService],
}

/// Creates both tables if missing and refills their base chains, atomically.
pub(crate) async fn install(rules: &BaseRules<'_>) -> Result<(), NetError> {
    let payload = transaction(rules).to_string();
    nftables::helper::apply_ruleset_raw_async(
        &payload,
        nftables::helper::DEFAULT_NFT,
        nftables::helper::DEFAULT_ARGS,
    )
    .await
    .map(|_| ())
    .map_err(|source| NetError::Firewall { source })
}

/// The transaction of `install`, as nft JSON; see the module header for its content.
fn transaction(rules: &BaseRules<'_>) -> serde_json::Value {
    let ip = ip_table(rules.bridge);
    let bridge_table = bridge_table(rules.bridge);
    let bridge = || string(rules.bridge);

    let mut batch = Batch::new();
    batch.add(ip.object());
    batch.add(bridge_table.object());
    let postrouting = ip.base_chain(
        POSTROUTING_CHAIN,
        NfChainType::NAT,
        NfHook::Postrouting,
        SRCNAT_PRIORITY,
    );
    nft::reset_chain(&mut batch, postrouting);
    batch.add(ip.rule(
        POSTROUTING_CHAIN,
        vec![
            matches(
                payload("ip", "saddr"),
                Operator::EQ,
                nft::network(rules.subnet),
            ),
            matches(meta(MetaKey::Oifname), Operator::NEQ, bridge()),
            nftables::stmt::Statement::Masquerade(None),
        ],
    ));
    batch.add(ip.rule(
        POSTROUTING_CHAIN,
        vec![
            matches(payload("ip", "saddr"), Operator::EQ, nft::network(LOOPBACK)),
            matches(meta(MetaKey::Oifname), Operator::EQ, bridge()),
            nftables::stmt::Statement::Masquerade(None),
        ],
    ));
    for (chain, hook) in [
        (DNAT_CHAIN, NfHook::Prerouting),
        (LOCAL_DNAT_CHAIN, NfHook::Output),
    ] {
        nft::reset_chain(
            &mut batch,
            ip.base_chain(chain, NfChainType::NAT, hook, DSTNAT_PRIORITY),
        );
        for transport in [Transport::Tcp, Transport::Udp] {
            batch.add(ip.rule(
                chain,
                vec![
                    matches(local_destination(), Operator::EQ, string("local")),
                    vmap(
                        payload(transport.name(), "dport"),
                        transport.published_map(),
                    ),
                ],
            ));
        }
    }

    let forward = ip.base_chain(
        FORWARD_CHAIN,
        NfChainType::Filter,
        NfHook::Forward,
        FILTER_PRIORITY,
    );
    nft::reset_chain(&mut batch, forward);
    for statements in [
        vec![established(), accept()],
        vec![vmap(payload("ip", "saddr"), EGRESS_MAP)],
        vec![vmap(payload("ip", "daddr"), INGRESS_MAP)],
        vec![
            matches(meta(MetaKey::Iifname), Operator::EQ, bridge()),
            accept(),
        ],
        vec![
            matches(meta(MetaKey::Oifname), Operator::EQ, bridge()),
            drop(),
        ],
    ] {
        batch.add(ip.rule(FORWARD_CHAIN, statements));
    }

    let input = ip.base_chain(
        INPUT_CHAIN,
        NfChainType::Filter,
        NfHook::Input,
        FILTER_PRIORITY,
    );
    nft::reset_chain(&mut batch, input);
    batch.add(ip.rule(
        INPUT_CHAIN,
        vec![
            matches(meta(MetaKey::Iifname), Operator::NEQ, bridge()),
            accept(),
        ],
    ));
    batch.add(ip.rule(INPUT_CHAIN, vec![established(), accept()]));
    for service in rules.services {
        let target = match service.address {
            ServiceAddress::Gateway => rules.gateway,
            ServiceAddress::Fixed(target) => target,
        };
        let protocol = service.transport.name();
        batch.add(ip.rule(
            INPUT_CHAIN,
            vec![
                matches(meta(MetaKey::L4proto), Operator::EQ, string(protocol)),
                matches(nft::ct("daddr", true), Operator::EQ, address(target)),
                matches(
                    nft::ct("proto-dst", true),
                    Operator::EQ,
                    nft::ports(service.port, service.port),
                ),
                accept(),
            ],
        ));
    }
    batch.add(ip.rule(INPUT_CHAIN, vec![drop()]));

    let prerouting = bridge_table.base_chain(
        PREROUTING_CHAIN,
        NfChainType::Filter,
        NfHook::Prerouting,
        BRIDGE_FILTER_PRIORITY,
    );
    nft::reset_chain(&mut batch, prerouting);
    batch.add(bridge_table.rule(
        PREROUTING_CHAIN,
        vec![vmap(meta(MetaKey::Iifname), PORTS_MAP)],
    ));

    let mut document = serde_json::to_value(batch.to_nftables()).expect("nft JSON serializes");
    let commands = document["nftables"]
        .as_array_mut()
        .expect("a transaction is a command list");
    // After the two tables, before the rules that refer to the maps.
    let maps = [
        ip.add_verdict_map(INGRESS_MAP, SetType::Ipv4Addr),
        ip.add_verdict_map(EGRESS_MAP, SetType::Ipv4Addr),
        bridge_table.add_verdict_map(PORTS_MAP, SetType::Ifname),
        ip.add_verdict_map(PUBLISHED_TCP_MAP, SetType::InetService),
        ip.add_verdict_map(PUBLISHED_UDP_MAP, SetType::InetService),
    ];
    commands.splice(2..2, maps);
    document
}

/// `fib daddr type`: the kind of the destination address, `local` for the host's own.
fn local_destination() -> nft::Expr {
    use nftables::expr::{Expression, Fib, FibFlag, FibResult, NamedExpression};
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: [FibFlag::Daddr].into_iter().collect(),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn commands() -> Vec<Value> {
        let rules = BaseRules {
            bridge: "skiff9",
            subnet: "10.77.0.0/16".parse().expect("subnet"),
            gateway: Ipv4Addr::new(10, 77, 0, 1),
            services: &default_host_services(),
        };
        transaction(&rules)["nftables"]
            .as_array()
            .expect("command list")
            .clone()
    }

    fn rules_of(chain: &str) -> Vec<String> {
        commands()
            .iter()
            .map(|command| &command["add"]["rule"])
            .filter(|rule| rule["chain"] == chain)
            .map(|rule| rule["expr"].to_string())
            .collect()
    }

    #[test]
    fn tables_are_never_deleted_and_only_base_chains_flushed() {
        for command in commands() {
            let object = command.as_object().expect("command object");
            let (verb, body) = object.iter().next().expect("one verb");
            assert!(
                verb == "add" || (verb == "flush" && body.get("chain").is_some()),
                "{command}"
            );
            let inner = body
                .as_object()
                .expect("object")
                .values()
                .next()
                .expect("body");
            let table = inner.get("table").or_else(|| inner.get("name"));
            assert!(
                inner["family"] == "ip" || inner["family"] == "bridge",
                "{command}"
            );
            if verb == "flush" {
                let chain = inner["name"].as_str().expect("chain name");
                assert!(
                    [
                        POSTROUTING_CHAIN,
                        FORWARD_CHAIN,
                        INPUT_CHAIN,
                        PREROUTING_CHAIN,
                        DNAT_CHAIN,
                        LOCAL_DNAT_CHAIN
                    ]
                    .contains(&chain),
                    "{command}"
                );
            }
            if inner.get("table").is_some() || body.get("table").is_some() {
                assert_eq!(
                    table.and_then(Value::as_str),
                    Some("skiff_skiff9"),
                    "{command}"
                );
            }
        }
    }

    #[test]
    fn the_maps_exist_before_the_rules_that_use_them() {
        let commands = commands();
        let position = |needle: &str| {
            commands
                .iter()
                .position(|command| command.to_string().contains(needle))
                .expect(needle)
        };
        assert_eq!(
            commands[2],
            json!({"add": {"map": {"family": "ip", "table": "skiff_skiff9", "name": "ingress",
                                   "type": "ipv4_addr", "map": "verdict"}}})
        );
        assert!(position("\"@ingress\"") > 2 && position("\"@ports\"") > 4);
    }

    #[test]
    fn the_subnet_is_masqueraded_when_it_leaves_through_another_interface() {
        assert_eq!(
            rules_of(POSTROUTING_CHAIN),
            vec![
                json!([
                    {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                               "right": {"prefix": {"addr": "10.77.0.0", "len": 16}}, "op": "=="}},
                    {"match": {"left": {"meta": {"key": "oifname"}}, "right": "skiff9", "op": "!="}},
                    {"masquerade": null}
                ])
                .to_string(),
                json!([
                    {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                               "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}, "op": "=="}},
                    {"match": {"left": {"meta": {"key": "oifname"}}, "right": "skiff9", "op": "=="}},
                    {"masquerade": null}
                ])
                .to_string()
            ]
        );
    }

    #[test]
    fn published_ports_of_local_addresses_dispatch_to_their_tasks() {
        for chain in [DNAT_CHAIN, LOCAL_DNAT_CHAIN] {
            assert_eq!(
                rules_of(chain),
                ["tcp", "udp"].map(|transport| json!([
                    {"match": {"left": {"fib": {"result": "type", "flags": ["daddr"]}},
                               "right": "local", "op": "=="}},
                    {"vmap": {"key": {"payload": {"protocol": transport, "field": "dport"}},
                              "data": format!("@published_{transport}")}}
                ])
                .to_string()),
                "{chain}"
            );
        }
        let hooks: Vec<Value> = commands()
            .iter()
            .filter_map(|command| command["add"]["chain"].get("hook"))
            .cloned()
            .collect();
        assert!(hooks.contains(&json!("output")) && hooks.contains(&json!("prerouting")));
    }

    #[test]
    fn forwarding_checks_the_sender_then_the_receiver() {
        let rules = rules_of(FORWARD_CHAIN);
        assert_eq!(rules.len(), 5);
        assert!(rules[0].contains("established") && rules[0].contains("accept"));
        assert!(rules[1].contains("@egress") && rules[1].contains("saddr"));
        assert!(rules[2].contains("@ingress") && rules[2].contains("daddr"));
        assert!(rules[3].contains("iifname") && rules[3].contains("accept"));
        assert!(rules[4].contains("oifname") && rules[4].contains("drop"));
    }

    #[test]
    fn tasks_reach_only_the_listed_host_services() {
        let rules = rules_of(INPUT_CHAIN);
        assert_eq!(rules.len(), 6, "{rules:#?}");
        assert!(rules[0].contains("\"!=\"") && rules[0].contains("accept"));
        assert!(rules[2].contains("169.254.170.2") && rules[2].contains("\"tcp\""));
        assert!(rules[3].contains("10.77.0.1") && rules[3].contains("\"udp\""));
        assert!(rules[4].contains("10.77.0.1") && rules[4].contains("\"original\""));
        assert_eq!(rules[5], json!([{"drop": {}}]).to_string());
    }
}
