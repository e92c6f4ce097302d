//! Per-task security groups and anti-spoofing, as nftables objects owned by one task.
//!
//! Each attached task has, in the bridge's tables (see `firewall` for the base chains
//! that dispatch to them):
//!
//! ```text
//! table ip skiff_<bridge>
//!   ingress map: <address> : jump in_<task>     egress map: <address> : jump out_<task>
//!   chain in_<task>  { ip saddr { <peers of rule 0> } tcp dport 80 accept; ...; drop }
//!   chain out_<task> { ip daddr { <peers of rule 0> } return; ...; drop }
//! table bridge skiff_<bridge>
//!   ports map: sk<13 hex> : jump guard_<task>
//!   chain guard_<task> { ether saddr != <mac> drop; arp saddr ether != <mac> drop;
//!                        arp saddr ip != <address> drop; ether type arp accept;
//!                        ip saddr != <address> drop; ether type ip accept; drop }
//! ```
//!
//! Every change is one nft transaction, so a task never runs on a half-applied policy.
//! A policy change, including a group gaining or losing a member, rebuilds the task's two
//! chains with the peers inline (anonymous sets) and touches nothing else. That is
//! deliberate: nft 1.0.6 loads the elements of every set in the table, anonymous ones
//! included, before any element update, so with named per-rule sets refilled by element
//! updates a membership change took 300 ms with 500 tasks attached; a chain rebuild
//! loads no elements. Attach and detach do update the map elements, and pay that load.
//! Removal uses nft's "add, flush, delete" idiom, which works whether or not an object
//! exists, so a detach after a crash at any point of an attach removes what it left.
//!
//! Each task's address (the key of its map elements) is kept in memory and recovered
//! from the kernel by `load` at agent start.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use ipnet::Ipv4Net;
use model::agent::{Protocol, SecurityPolicy, SecurityRule};
use nftables::batch::Batch;
use nftables::expr::{Expression, MetaKey, NamedExpression, SetItem};
use nftables::helper::NftablesError;
use nftables::schema::NfListObject;
use nftables::stmt::{Operator, Return, Statement};
use serde_json::Value;

use crate::firewall::{bridge_table, ip_table, EGRESS_MAP, INGRESS_MAP, PORTS_MAP};
use crate::names::{format_mac, task_mac, validate_task_id};
use crate::nft::{self, accept, drop, matches, meta, payload, string, Expr, Stmt, Table};
use crate::NetError;

/// The two directions of a security group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    fn prefix(self) -> &'static str {
        match self {
            Direction::Ingress => "in",
            Direction::Egress => "out",
        }
    }

    fn map(self) -> &'static str {
        match self {
            Direction::Ingress => INGRESS_MAP,
            Direction::Egress => EGRESS_MAP,
        }
    }

    /// The header field holding the peer: the source of what comes in, the destination
    /// of what goes out.
    fn peer_field(self) -> &'static str {
        match self {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        }
    }

    /// An allowed packet is accepted on the way in; on the way out it returns to the
    /// forward chain, where the receiver's ingress rules still apply.
    fn allow(self) -> Stmt {
        match self {
            Direction::Ingress => accept(),
            Direction::Egress => Statement::Return(Some(Return {})),
        }
    }

    fn rules(self, policy: &SecurityPolicy) -> &[SecurityRule] {
        match self {
            Direction::Ingress => &policy.ingress,
            Direction::Egress => &policy.egress,
        }
    }

    fn chain(self, task_id: &str) -> String {
        format!("{}_{task_id}", self.prefix())
    }
}

fn guard_chain(task_id: &str) -> String {
    format!("guard_{task_id}")
}

/// One task's objects, as far as this process knows.
#[derive(Debug, Clone, Copy, Default)]
struct Installed {
    /// The key of the task's elements in the address maps, once known.
    address: Option<Ipv4Addr>,
}

/// The per-task rules of one bridge.
#[derive(Debug)]
pub(crate) struct TaskFirewall {
    ip: Table,
    bridge: Table,
    /// The default policy's ingress peers.
    subnet: Ipv4Net,
    tasks: Mutex<HashMap<String, Installed>>,
}

impl TaskFirewall {
    pub(crate) fn new(bridge: &str, subnet: Ipv4Net) -> Self {
        Self {
            ip: ip_table(bridge),
            bridge: bridge_table(bridge),
            subnet,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// The rules a task without a security policy gets: what the bridge allowed before
    /// security groups, ingress from the task subnet and any egress.
    pub(crate) fn default_policy(&self) -> SecurityPolicy {
        let all = |peer: Ipv4Net| SecurityRule {
            protocol: Protocol::All,
            ports: None,
            sources: vec![peer],
            groups: vec![],
        };
        SecurityPolicy {
            ingress: vec![all(self.subnet)],
            egress: vec![all(Ipv4Net::default())],
        }
    }

    /// Installs the task's guard and policy for `address`, replacing whatever the task
    /// had. Runs before the task's interface exists, so its first frame is filtered.
    pub(crate) async fn attach(
        &self,
        task_id: &str,
        address: Ipv4Addr,
        host_interface: &str,
        policy: &SecurityPolicy,
    ) -> Result<(), NetError> {
        check_policy(policy)?;
        // Recorded before applying, so a detach after a failure or a cancelled future
        // removes what the transaction may have installed.
        let previous = self.remember(task_id, Some(address));
        let mut batch = Batch::new();
        if let Some(old) = previous.filter(|old| *old != address) {
            for direction in Direction::BOTH {
                let chain = direction.chain(task_id);
                nft::reset_chain(&mut batch, self.ip.chain(&chain));
                nft::remove_jump(
                    &mut batch,
                    &self.ip,
                    direction.map(),
                    nft::address(old),
                    &chain,
                );
            }
        }
        self.policy_commands(&mut batch, task_id, policy);
        for direction in Direction::BOTH {
            batch.add(self.ip.jump_element(
                direction.map(),
                nft::address(address),
                &direction.chain(task_id),
            ));
        }
        let guard = guard_chain(task_id);
        nft::reset_chain(&mut batch, self.bridge.chain(&guard));
        for statements in guard_rules(address) {
            batch.add(self.bridge.rule(&guard, statements));
        }
        batch.add(
            self.bridge
                .jump_element(PORTS_MAP, string(host_interface), &guard),
        );
        self.commit(task_id, batch, policy).await
    }

    /// Replaces the task's security policy in one transaction.
    pub(crate) async fn apply(
        &self,
        task_id: &str,
        policy: &SecurityPolicy,
    ) -> Result<(), NetError> {
        check_policy(policy)?;
        let attached = self
            .lock()
            .get(task_id)
            .and_then(|installed| installed.address);
        if attached.is_none() {
            return Err(NetError::NotAttached {
                task_id: task_id.to_owned(),
            });
        }
        let mut batch = Batch::new();
        self.policy_commands(&mut batch, task_id, policy);
        self.commit(task_id, batch, policy).await
    }

    /// Removes every object of the task, in one transaction. Idempotent.
    ///
    /// Only a task this process attached or found by `load` has objects: the guard is
    /// keyed by the host interface name, which another task may share (see `names`).
    pub(crate) async fn detach(&self, task_id: &str, host_interface: &str) -> Result<(), NetError> {
        let Some(installed) = self.lock().get(task_id).copied() else {
            return Ok(());
        };
        let mut batch = Batch::new();
        self.removal_commands(&mut batch, task_id, host_interface, installed);
        apply(&batch, task_id).await?;
        self.lock().remove(task_id);
        Ok(())
    }

    /// Learns the objects of tasks already in the kernel (after an agent restart) and
    /// returns those tasks' ids.
    pub(crate) async fn load(&self) -> Result<Vec<String>, NetError> {
        let mut found: HashMap<String, Installed> = HashMap::new();
        for table in [&self.ip, &self.bridge] {
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
                detail: nft_detail(&source),
            })?;
            let listing: Value = serde_json::from_str(&listing)
                .map_err(|source| NetError::ParseFirewall { source })?;
            learn(&listing, &mut found);
        }
        let ids = found.keys().cloned().collect();
        self.lock().extend(found);
        Ok(ids)
    }

    /// Removes the objects of the listed tasks, whose interfaces are gone, at once.
    pub(crate) async fn remove_stale(&self, stale: &[(String, String)]) -> Result<(), NetError> {
        let Some((first, _)) = stale.first() else {
            return Ok(());
        };
        let mut batch = Batch::new();
        for (task_id, host_interface) in stale {
            let installed = self.lock().get(task_id).copied().unwrap_or_default();
            self.removal_commands(&mut batch, task_id, host_interface, installed);
        }
        apply(&batch, first).await?;
        let mut tasks = self.lock();
        for (task_id, _) in stale {
            tasks.remove(task_id);
            tracing::info!(
                task_id,
                "removed the firewall rules of a task without an interface"
            );
        }
        Ok(())
    }

    /// Commands that rebuild the task's two chains to implement `policy`.
    fn policy_commands(&self, batch: &mut Batch<'static>, task_id: &str, policy: &SecurityPolicy) {
        for direction in Direction::BOTH {
            let chain = direction.chain(task_id);
            nft::reset_chain(batch, self.ip.chain(&chain));
            for rule in direction.rules(policy) {
                if let Some(statements) = rule_statements(direction, rule) {
                    batch.add(self.ip.rule(&chain, statements));
                }
            }
            batch.add(self.ip.rule(&chain, vec![drop()]));
        }
    }

    fn removal_commands(
        &self,
        batch: &mut Batch<'static>,
        task_id: &str,
        host_interface: &str,
        installed: Installed,
    ) {
        for direction in Direction::BOTH {
            let chain = direction.chain(task_id);
            nft::reset_chain(batch, self.ip.chain(&chain));
            if let Some(address) = installed.address {
                nft::remove_jump(
                    batch,
                    &self.ip,
                    direction.map(),
                    nft::address(address),
                    &chain,
                );
            }
            batch.delete(NfListObject::Chain(self.ip.chain(&chain)));
        }
        let guard = guard_chain(task_id);
        nft::reset_chain(batch, self.bridge.chain(&guard));
        nft::remove_jump(
            batch,
            &self.bridge,
            PORTS_MAP,
            string(host_interface),
            &guard,
        );
        batch.delete(NfListObject::Chain(self.bridge.chain(&guard)));
    }

    async fn commit(
        &self,
        task_id: &str,
        batch: Batch<'static>,
        policy: &SecurityPolicy,
    ) -> Result<(), NetError> {
        let started = Instant::now();
        apply(&batch, task_id).await?;
        tracing::debug!(
            task_id,
            ingress_rules = policy.ingress.len(),
            egress_rules = policy.egress.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "task firewall rules applied"
        );
        Ok(())
    }

    /// Records the task's address; returns the one recorded before.
    fn remember(&self, task_id: &str, address: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        let mut tasks = self.lock();
        let installed = tasks.entry(task_id.to_owned()).or_default();
        std::mem::replace(&mut installed.address, address)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Installed>> {
        // The map is only ever updated in one statement: a panic cannot leave it torn.
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn apply(batch: &Batch<'static>, task_id: &str) -> Result<(), NetError> {
    let document = batch.clone().to_nftables();
    nftables::helper::apply_ruleset_async(&document)
        .await
        .map_err(|source| NetError::TaskFirewall {
            task_id: task_id.to_owned(),
            detail: nft_detail(&source),
        })
}

/// nft's own message, which `NftablesError`'s display leaves out.
fn nft_detail(error: &NftablesError) -> String {
    match error {
        NftablesError::NftFailed { stderr, stdout, .. } => {
            format!("{} {}", stderr.trim(), stdout.trim())
                .trim()
                .to_owned()
        }
        other => other.to_string(),
    }
}

fn check_policy(policy: &SecurityPolicy) -> Result<(), NetError> {
    let reversed = policy
        .ingress
        .iter()
        .chain(&policy.egress)
        .filter(|rule| matches!(rule.protocol, Protocol::Tcp | Protocol::Udp))
        .find_map(|rule| rule.ports.filter(|(low, high)| low > high));
    match reversed {
        Some((low, high)) => Err(NetError::InvalidPortRange { low, high }),
        None => Ok(()),
    }
}

/// A rule's peers as an anonymous set, overlapping prefixes merged (interval sets
/// reject overlaps); None when the rule has no peers and so matches nothing.
fn peers(rule: &SecurityRule) -> Option<Expr> {
    let truncated: Vec<Ipv4Net> = rule.sources.iter().map(Ipv4Net::trunc).collect();
    let items: Vec<SetItem<'static>> = Ipv4Net::aggregate(&truncated)
        .into_iter()
        .map(|peer| SetItem::Element(nft::network(peer)))
        .collect();
    (!items.is_empty()).then(|| Expression::Named(NamedExpression::Set(items)))
}

fn rule_statements(direction: Direction, rule: &SecurityRule) -> Option<Vec<Stmt>> {
    let mut statements = vec![matches(
        payload("ip", direction.peer_field()),
        Operator::EQ,
        peers(rule)?,
    )];
    let protocol = |name: &'static str| matches(meta(MetaKey::L4proto), Operator::EQ, string(name));
    match (rule.protocol, rule.ports) {
        (Protocol::All, _) => {}
        (Protocol::Icmp, _) => statements.push(protocol("icmp")),
        (Protocol::Tcp, None) => statements.push(protocol("tcp")),
        (Protocol::Udp, None) => statements.push(protocol("udp")),
        (Protocol::Tcp, Some((low, high))) => statements.push(matches(
            payload("tcp", "dport"),
            Operator::EQ,
            nft::ports(low, high),
        )),
        (Protocol::Udp, Some((low, high))) => statements.push(matches(
            payload("udp", "dport"),
            Operator::EQ,
            nft::ports(low, high),
        )),
    }
    statements.push(direction.allow());
    Some(statements)
}

/// The guard chain's rules: frames from the task's port carry its MAC and IPv4 address,
/// in Ethernet, ARP and IPv4 headers alike; other protocols (IPv6, VLAN tags) are dropped.
fn guard_rules(address: Ipv4Addr) -> Vec<Vec<Stmt>> {
    let mac = || string(format_mac(&task_mac(address)));
    let ip = || nft::address(address);
    let ether_type =
        |kind: &'static str| matches(payload("ether", "type"), Operator::EQ, string(kind));
    vec![
        vec![
            matches(payload("ether", "saddr"), Operator::NEQ, mac()),
            drop(),
        ],
        vec![
            matches(payload("arp", "saddr ether"), Operator::NEQ, mac()),
            drop(),
        ],
        vec![
            matches(payload("arp", "saddr ip"), Operator::NEQ, ip()),
            drop(),
        ],
        vec![ether_type("arp"), accept()],
        vec![matches(payload("ip", "saddr"), Operator::NEQ, ip()), drop()],
        vec![ether_type("ip"), accept()],
        vec![drop()],
    ]
}

/// Records the task objects of one table listing (`nft -j list table`) in `found`.
fn learn(listing: &Value, found: &mut HashMap<String, Installed>) {
    let objects = listing["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for object in objects {
        if let Some(chain) = object.get("chain") {
            let name = chain["name"].as_str().unwrap_or_default();
            let task = ["in_", "out_", "guard_"]
                .iter()
                .find_map(|prefix| name.strip_prefix(prefix))
                .filter(|id| validate_task_id(id).is_ok());
            if let Some(task) = task {
                found.entry(task.to_owned()).or_default();
            }
        } else if let Some(map) = object.get("map").filter(|map| map["name"] == INGRESS_MAP) {
            let elements = map["elem"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            for element in elements {
                let address = element[0].as_str().and_then(|text| text.parse().ok());
                let id = element[1]["jump"]["target"]
                    .as_str()
                    .and_then(|target| target.strip_prefix("in_"))
                    .filter(|id| validate_task_id(id).is_ok());
                if let (Some(address), Some(id)) = (address, id) {
                    found.entry(id.to_owned()).or_default().address = Some(address);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
