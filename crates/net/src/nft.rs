//! Building blocks for nftables transactions, in the `nftables` crate's typed JSON schema.
//!
//! Everything this crate installs lives in two tables per bridge (see `firewall` and
//! `security`); a [`Table`] names one and makes the objects and rules inside it. The
//! helpers follow nft's idempotent idioms so that a transaction never depends on what
//! exists already: `add` of an existing chain or map element (with the same data) is a
//! no-op, so "add, flush, delete" removes an object whether or not it is there, and
//! "add, flush, fill" replaces a chain's rules.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range, Verdict, CT,
};
use nftables::helper::NftablesError;
use nftables::schema::{Chain, Element, FlushObject, NfCmd, NfListObject, Rule, SetType};
use nftables::stmt::{Accept, Drop, JumpTarget, Match, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::NetError;

pub(crate) type Stmt = Statement<'static>;
pub(crate) type Expr = Expression<'static>;

/// One table of this crate: a family and a name.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) family: NfFamily,
    pub(crate) name: String,
}

impl Table {
    pub(crate) fn object(&self) -> NfListObject<'static> {
        NfListObject::Table(nftables::schema::Table {
            family: self.family,
            name: self.name.clone().into(),
            handle: None,
        })
    }

    pub(crate) fn chain(&self, name: &str) -> Chain<'static> {
        Chain {
            family: self.family,
            table: self.name.clone().into(),
            name: name.to_owned().into(),
            ..Chain::default()
        }
    }

    /// A base chain with policy accept: these chains only ever drop what they must.
    pub(crate) fn base_chain(
        &self,
        name: &str,
        kind: NfChainType,
        hook: NfHook,
        priority: i32,
    ) -> Chain<'static> {
        Chain {
            _type: Some(kind),
            hook: Some(hook),
            prio: Some(priority),
            policy: Some(NfChainPolicy::Accept),
            ..self.chain(name)
        }
    }

    pub(crate) fn rule(&self, chain: &str, statements: Vec<Stmt>) -> NfListObject<'static> {
        NfListObject::Rule(Rule {
            family: self.family,
            table: self.name.clone().into(),
            chain: chain.to_owned().into(),
            expr: Cow::Owned(statements),
            ..Rule::default()
        })
    }

    /// The command that adds the verdict map `name` keyed by `key`, as JSON: the
    /// `nftables` crate has no `verdict` data type for maps, so these commands are
    /// spliced into the serialized transaction (see `firewall::install`).
    pub(crate) fn add_verdict_map(&self, name: &str, key: SetType) -> serde_json::Value {
        serde_json::json!({"add": {"map": {
            "family": self.family,
            "table": self.name,
            "name": name,
            "type": key,
            "map": "verdict",
        }}})
    }

    pub(crate) fn elements(&self, set: &str, elements: Vec<Expr>) -> NfListObject<'static> {
        NfListObject::Element(Element {
            family: self.family,
            table: self.name.clone().into(),
            name: set.to_owned().into(),
            elem: Cow::Owned(elements),
        })
    }

    /// `<key> : jump <chain>`, one element of a verdict map.
    pub(crate) fn jump_element(&self, map: &str, key: Expr, chain: &str) -> NfListObject<'static> {
        self.elements(
            map,
            vec![Expression::List(vec![
                key,
                Expression::Verdict(Verdict::Jump(JumpTarget {
                    target: chain.to_owned().into(),
                })),
            ])],
        )
    }
}

/// Adds `chain` (if missing) and empties it: the start of rebuilding its rules.
pub(crate) fn reset_chain(batch: &mut Batch<'static>, chain: Chain<'static>) {
    batch.add(NfListObject::Chain(chain.clone()));
    batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain)));
}

/// Removes the `key : jump <chain>` element of `map` whether or not it is there.
pub(crate) fn remove_jump(
    batch: &mut Batch<'static>,
    table: &Table,
    map: &str,
    key: Expr,
    chain: &str,
) {
    batch.add(table.jump_element(map, key.clone(), chain));
    batch.delete(table.jump_element(map, key, chain));
}

/// Applies a transaction that changes one task's objects (or, for a batch of several
/// tasks, names the first of them in an error).
pub(crate) async fn apply_for_task(batch: &Batch<'static>, task_id: &str) -> Result<(), NetError> {
    apply(batch).await.map_err(|detail| NetError::TaskFirewall {
        task_id: task_id.to_owned(),
        detail,
    })
}

/// Applies a transaction; the error is nft's own message.
pub(crate) async fn apply(batch: &Batch<'static>) -> Result<(), String> {
    nftables::helper::apply_ruleset_async(&batch.clone().to_nftables())
        .await
        .map_err(|source| detail(&source))
}

/// `nft -j list table` of one of this crate's tables, parsed.
pub(crate) async fn list_table(table: &Table) -> Result<serde_json::Value, NetError> {
    let family = serde_json::to_value(table.family).expect("family serializes");
    let listing = nftables::helper::get_current_ruleset_raw_async(
        nftables::helper::DEFAULT_NFT,
        [
            "-j",
            "list",
            "table",
            family.as_str().unwrap_or_default(),
            &table.name,
        ],
    )
    .await
    .map_err(|source| NetError::ListFirewall {
        detail: detail(&source),
    })?;
    serde_json::from_str(&listing).map_err(|source| NetError::ParseFirewall { source })
}

/// nft's own message, which `NftablesError`'s display leaves out.
fn detail(error: &NftablesError) -> String {
    match error {
        NftablesError::NftFailed { stderr, stdout, .. } => {
            format!("{} {}", stderr.trim(), stdout.trim())
                .trim()
                .to_owned()
        }
        other => other.to_string(),
    }
}

pub(crate) fn matches(left: Expr, op: Operator, right: Expr) -> Stmt {
    Statement::Match(Match { left, right, op })
}

pub(crate) fn payload(protocol: &'static str, field: &'static str) -> Expr {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

pub(crate) fn meta(key: MetaKey) -> Expr {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// A conntrack key, optionally of the original direction and the IPv4 family.
pub(crate) fn ct(key: &'static str, original_ipv4: bool) -> Expr {
    use nftables::expr::{CTDir, CTFamily};
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: original_ipv4
            .then_some(CTFamily::IP)
            .filter(|_| key.ends_with("addr")),
        dir: original_ipv4.then_some(CTDir::Original),
    }))
}

pub(crate) fn string(value: impl Into<String>) -> Expr {
    Expression::String(value.into().into())
}

pub(crate) fn address(address: Ipv4Addr) -> Expr {
    string(address.to_string())
}

/// A prefix, or a plain address for a /32.
pub(crate) fn network(net: Ipv4Net) -> Expr {
    if net.prefix_len() == 32 {
        return address(net.addr());
    }
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(address(net.network())),
        len: u32::from(net.prefix_len()),
    }))
}

/// A port, or an inclusive range of ports.
pub(crate) fn ports(low: u16, high: u16) -> Expr {
    if low == high {
        return Expression::Number(u32::from(low));
    }
    Expression::Range(Box::new(Range {
        range: [
            Expression::Number(u32::from(low)),
            Expression::Number(u32::from(high)),
        ],
    }))
}

/// `ct state established,related`
pub(crate) fn established() -> Stmt {
    matches(
        ct("state", false),
        Operator::IN,
        Expression::List(vec![string("established"), string("related")]),
    )
}

/// `<key> vmap @<map>`
pub(crate) fn vmap(key: Expr, map: &str) -> Stmt {
    Statement::VerdictMap(VerdictMap {
        key,
        data: string(format!("@{map}")),
    })
}

pub(crate) fn accept() -> Stmt {
    Statement::Accept(Some(Accept {}))
}

pub(crate) fn drop() -> Stmt {
    Statement::Drop(Some(Drop {}))
}
