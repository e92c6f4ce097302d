//! IPv4 forwarding and the nftables rules of the task subnet.
//!
//! The rules live in a table of their own per bridge, `ip skiff_<bridge>`, so they never
//! touch anyone else's rules (nor those of another Skiff server on another bridge in the
//! same namespace), and are (re)installed in one atomic nft transaction that adds the
//! table (so it exists), deletes it with everything in it, and recreates it:
//!
//! ```text
//! table ip skiff_<bridge> {
//!   chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr <subnet> oifname != <bridge> masquerade       # tasks reach the outside
//!   }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     ct state established,related accept                    # replies, both ways
//!     iifname <bridge> accept                                # anything tasks start
//!     oifname <bridge> drop                                  # unsolicited traffic in
//!   }
//! }
//! ```
//!
//! Tasks are reachable from the host itself (that traffic is local output, not forwarded)
//! and from each other (bridged), but connections forwarded in from other interfaces are
//! dropped, as with an AWS security group that allows no inbound traffic. nftables runs
//! every table's base chains, so an accept here cannot override a drop in another table
//! (for example Docker's `FORWARD DROP` policy); such hosts need their own allowance.
//!
//! Driving `nft` costs a process spawn, which is why this runs only from `HostNetwork::init`:
//! the rules name the subnet and the bridge, never individual tasks.

use std::borrow::Cow;
use std::path::Path;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Accept, Drop, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::NetError;

/// Name of the nftables table this crate owns for `bridge`.
pub(crate) fn table_name(bridge: &str) -> String {
    format!("skiff_{bridge}")
}
/// Chain holding the masquerade rule.
pub(crate) const POSTROUTING_CHAIN: &str = "postrouting";
/// Chain holding the forwarding policy.
pub(crate) const FORWARD_CHAIN: &str = "forward";
/// `srcnat` and `filter` in nft's priority keywords.
const SRCNAT_PRIORITY: i32 = 100;
const FILTER_PRIORITY: i32 = 0;

/// The per-namespace IPv4 forwarding switch, read through the calling thread's namespace.
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns on IPv4 forwarding in the calling thread's network namespace.
pub(crate) fn enable_ip_forwarding() -> Result<(), NetError> {
    std::fs::write(IP_FORWARD, "1").map_err(|source| NetError::Forwarding {
        path: Path::new(IP_FORWARD).to_owned(),
        source,
    })
}

/// (Re)installs the `ip skiff_<bridge>` table for `subnet` behind `bridge`, atomically.
pub(crate) async fn install(bridge: &str, subnet: Ipv4Net) -> Result<(), NetError> {
    nftables::helper::apply_ruleset_async(&ruleset(bridge, subnet))
        .await
        .map_err(|source| NetError::Firewall { source })
}

/// The transaction that replaces the table; see the module header for its content.
fn ruleset(bridge: &str, subnet: Ipv4Net) -> Nftables<'static> {
    let table_name: Cow<'static, str> = Cow::Owned(table_name(bridge));
    let table = || Table {
        family: NfFamily::IP,
        name: table_name.clone(),
        handle: None,
    };
    let base_chain = |name: &'static str, kind, hook, prio| Chain {
        family: NfFamily::IP,
        table: table_name.clone(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    };
    let rule = |chain: &'static str, statements: Vec<Statement<'static>>| {
        NfListObject::Rule(Rule {
            family: NfFamily::IP,
            table: table_name.clone(),
            chain: chain.into(),
            expr: Cow::Owned(statements),
            ..Rule::default()
        })
    };
    let bridge: Cow<'static, str> = Cow::Owned(bridge.to_owned());

    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    batch.add(NfListObject::Chain(base_chain(
        POSTROUTING_CHAIN,
        NfChainType::NAT,
        NfHook::Postrouting,
        SRCNAT_PRIORITY,
    )));
    batch.add(rule(
        POSTROUTING_CHAIN,
        vec![
            matches(
                payload("ip", "saddr"),
                Operator::EQ,
                Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(Expression::String(subnet.network().to_string().into())),
                    len: u32::from(subnet.prefix_len()),
                })),
            ),
            matches(
                meta(MetaKey::Oifname),
                Operator::NEQ,
                Expression::String(bridge.clone()),
            ),
            Statement::Masquerade(None),
        ],
    ));
    batch.add(NfListObject::Chain(base_chain(
        FORWARD_CHAIN,
        NfChainType::Filter,
        NfHook::Forward,
        FILTER_PRIORITY,
    )));
    batch.add(rule(
        FORWARD_CHAIN,
        vec![
            matches(
                Expression::Named(NamedExpression::CT(CT {
                    key: "state".into(),
                    family: None,
                    dir: None,
                })),
                Operator::IN,
                Expression::List(vec![
                    Expression::String("established".into()),
                    Expression::String("related".into()),
                ]),
            ),
            Statement::Accept(Some(Accept {})),
        ],
    ));
    batch.add(rule(
        FORWARD_CHAIN,
        vec![
            matches(
                meta(MetaKey::Iifname),
                Operator::EQ,
                Expression::String(bridge.clone()),
            ),
            Statement::Accept(Some(Accept {})),
        ],
    ));
    batch.add(rule(
        FORWARD_CHAIN,
        vec![
            matches(
                meta(MetaKey::Oifname),
                Operator::EQ,
                Expression::String(bridge),
            ),
            Statement::Drop(Some(Drop {})),
        ],
    ));
    batch.to_nftables()
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn commands() -> Vec<Value> {
        let subnet: Ipv4Net = "10.77.0.0/16".parse().expect("subnet");
        let document = serde_json::to_value(ruleset("skiff9", subnet)).expect("serialize");
        document["nftables"]
            .as_array()
            .expect("command list")
            .clone()
    }

    #[test]
    fn the_table_is_replaced_atomically_without_touching_others() {
        let commands = commands();
        let table = json!({"table": {"family": "ip", "name": "skiff_skiff9"}});
        assert_eq!(commands[0], json!({ "add": table }));
        assert_eq!(commands[1], json!({ "delete": table }));
        assert_eq!(commands[2], json!({ "add": table }));
        for command in &commands {
            let object = command.as_object().expect("command object");
            let (verb, body) = object.iter().next().expect("one verb");
            assert!(verb == "add" || verb == "delete", "unexpected verb {verb}");
            let inner = body
                .as_object()
                .expect("object")
                .values()
                .next()
                .expect("body");
            let table = inner.get("table").or_else(|| inner.get("name"));
            assert_eq!(inner["family"], "ip");
            assert_eq!(
                table.and_then(Value::as_str),
                Some("skiff_skiff9"),
                "{command}"
            );
        }
    }

    #[test]
    fn the_subnet_is_masqueraded_when_it_leaves_through_another_interface() {
        let commands = commands();
        let masquerade = commands
            .iter()
            .map(|command| &command["add"]["rule"])
            .find(|rule| rule["chain"] == POSTROUTING_CHAIN)
            .expect("postrouting rule");
        assert_eq!(
            masquerade["expr"],
            json!([
                {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                           "right": {"prefix": {"addr": "10.77.0.0", "len": 16}}, "op": "=="}},
                {"match": {"left": {"meta": {"key": "oifname"}}, "right": "skiff9", "op": "!="}},
                {"masquerade": null}
            ])
        );
        let chain = commands
            .iter()
            .map(|command| &command["add"]["chain"])
            .find(|chain| chain["name"] == POSTROUTING_CHAIN)
            .expect("postrouting chain");
        assert_eq!(chain["type"], "nat");
        assert_eq!(chain["hook"], "postrouting");
        assert_eq!(chain["prio"], SRCNAT_PRIORITY);
    }

    #[test]
    fn forwarding_drops_only_unsolicited_inbound_traffic() {
        let verdicts: Vec<String> = commands()
            .iter()
            .map(|command| &command["add"]["rule"])
            .filter(|rule| rule["chain"] == FORWARD_CHAIN)
            .map(|rule| rule["expr"].to_string())
            .collect();
        assert_eq!(verdicts.len(), 3);
        assert!(verdicts[0].contains("established") && verdicts[0].contains("accept"));
        assert!(verdicts[1].contains("iifname") && verdicts[1].contains("accept"));
        assert!(verdicts[2].contains("oifname") && verdicts[2].contains("drop"));
    }
}
