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
//! Changes to the same kind of object are serialized (each is decided against the state
//! the previous one left): a task's objects under one lock, the member sets under
//! another, so a member update at a task's start does not hold up other attaches.
//! A rule's address ranges are inline (anonymous sets); its peer groups are named sets
//! shared by every rule that names them (see `groups`), so a group gaining or losing a
//! member is one element change, and a policy change rebuilds the task's two chains and
//! touches nothing else. Removal uses nft's "add, flush, delete" idiom, which works
//! whether or not an object exists, so a detach after a crash at any point of an attach
//! removes what it left.
//!
//! Policies arrive from two sides: the plan's at attach, and later updates from the
//! control plane, which may cross an attach in flight. Each update carries a version
//! (increasing, per process); a task's chains are rebuilt only for a version newer than
//! the one they hold, and an attach holds version 0, so whoever applies last cannot
//! bring back an older policy.
//!
//! Each task's address (the key of its map elements) and the member sets are kept in
//! memory and recovered from the kernel by `load` at agent start.

mod groups;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Instant;

use ipnet::Ipv4Net;
use model::agent::{Protocol, SecurityPolicy, SecurityRule};
use nftables::batch::Batch;
use nftables::expr::{Expression, MetaKey, NamedExpression, SetItem};
use nftables::schema::NfListObject;
use nftables::stmt::{Operator, Return, Statement};
use serde_json::Value;
use tokio::sync::Mutex;

use self::groups::GroupSets;

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
    /// The version of the policy its chains hold; 0 for the one given at attach.
    version: u64,
}

/// The per-task rules of one bridge.
#[derive(Debug)]
pub(crate) struct TaskFirewall {
    ip: Table,
    bridge: Table,
    /// The default policy's ingress peers.
    subnet: Ipv4Net,
    /// The tasks' objects; held across each transaction that changes them.
    tasks: Mutex<HashMap<String, Installed>>,
    /// The member sets; held across each transaction that changes them. Taken before
    /// `tasks` when both are needed.
    groups: Mutex<GroupSets>,
}

impl TaskFirewall {
    pub(crate) fn new(bridge: &str, subnet: Ipv4Net) -> Self {
        Self {
            ip: ip_table(bridge),
            bridge: bridge_table(bridge),
            subnet,
            tasks: Mutex::new(HashMap::new()),
            groups: Mutex::new(GroupSets::default()),
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
        let mut tasks = self.tasks.lock().await;
        // Recorded before applying, so a detach after a failure or a cancelled future
        // removes what the transaction may have installed.
        let installed = tasks.entry(task_id.to_owned()).or_default();
        let previous = std::mem::replace(
            installed,
            Installed {
                address: Some(address),
                version: 0,
            },
        )
        .address;
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
        let started = Instant::now();
        // The member sets the policy names are created if missing, without the member
        // sets' lock: the control plane's member updates name every group some policy
        // names, and the next one records them.
        nft::apply_for_task(&batch, task_id).await?;
        tracing::debug!(
            task_id,
            ingress_rules = policy.ingress.len(),
            egress_rules = policy.egress.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "task firewall rules installed"
        );
        Ok(())
    }

    /// Applies a security update in one transaction: `members` (when given, every group
    /// some policy names) brought into the member sets, and each policy of `policies`
    /// whose task is attached and holds an older version than `version`. Returns the
    /// tasks whose chains were rebuilt. Sets of groups `members` leaves out are then
    /// deleted, in a transaction of their own that may fail while an older policy still
    /// names them (the next update retries).
    pub(crate) async fn update(
        &self,
        members: Option<&BTreeMap<String, Vec<Ipv4Addr>>>,
        policies: &BTreeMap<String, SecurityPolicy>,
        version: u64,
    ) -> Result<Vec<String>, NetError> {
        for policy in policies.values() {
            check_policy(policy)?;
        }
        if let Some(members) = members {
            groups::check_group_ids(members.keys())?;
        }
        let started = Instant::now();
        let mut groups = self.groups.lock().await;
        // Member changes alone (a task starting or stopping) leave attaches free to run.
        let mut tasks = match policies.is_empty() {
            true => None,
            false => Some(self.tasks.lock().await),
        };
        let mut batch = Batch::new();
        if let Some(members) = members {
            groups.update_commands(&mut batch, &self.ip, members);
        }
        let rebuilt: Vec<String> = policies
            .iter()
            .filter(|(task_id, _)| {
                tasks
                    .as_ref()
                    .and_then(|t| t.get(*task_id))
                    .is_some_and(|installed| {
                        installed.address.is_some() && installed.version < version
                    })
            })
            .map(|(task_id, policy)| {
                self.policy_commands(&mut batch, task_id, policy);
                task_id.clone()
            })
            .collect();
        if let Err(detail) = nft::apply(&batch).await {
            if let Some(members) = members {
                groups.unknown(members.keys().cloned());
            }
            return Err(NetError::SecurityUpdate { detail });
        }
        if let Some(members) = members {
            groups.installed(members);
        }
        for task_id in &rebuilt {
            groups.learn(policy_groups(&policies[task_id]).cloned());
            if let Some(installed) = tasks.as_mut().and_then(|t| t.get_mut(task_id)) {
                installed.version = version;
            }
        }
        std::mem::drop(tasks);
        if let Some(members) = members {
            let stale = groups.stale(members);
            if !stale.is_empty() {
                let mut removal = Batch::new();
                GroupSets::removal_commands(&mut removal, &self.ip, &stale);
                match nft::apply(&removal).await {
                    Ok(()) => groups.removed(&stale),
                    Err(detail) => tracing::debug!(%detail, "member sets still in use are kept"),
                }
            }
        }
        tracing::debug!(
            groups = members.map_or(0, BTreeMap::len),
            policies = rebuilt.len(),
            version,
            elapsed_us = started.elapsed().as_micros() as u64,
            "security update applied"
        );
        Ok(rebuilt)
    }

    /// Removes every object of the task, in one transaction. Idempotent.
    ///
    /// Only a task this process attached or found by `load` has objects: the guard is
    /// keyed by the host interface name, which another task may share (see `names`).
    pub(crate) async fn detach(&self, task_id: &str, host_interface: &str) -> Result<(), NetError> {
        let mut tasks = self.tasks.lock().await;
        let Some(installed) = tasks.get(task_id).copied() else {
            return Ok(());
        };
        let mut batch = Batch::new();
        self.removal_commands(&mut batch, task_id, host_interface, installed);
        nft::apply_for_task(&batch, task_id).await?;
        tasks.remove(task_id);
        Ok(())
    }

    /// Learns the objects of tasks already in the kernel (after an agent restart) and
    /// returns those tasks' ids.
    pub(crate) async fn load(&self) -> Result<Vec<String>, NetError> {
        let mut found: HashMap<String, Installed> = HashMap::new();
        let mut sets = Vec::new();
        for table in [&self.ip, &self.bridge] {
            let listing = nft::list_table(table).await?;
            learn(&listing, &mut found, &mut sets);
        }
        let ids = found.keys().cloned().collect();
        self.groups.lock().await.learn(sets);
        self.tasks.lock().await.extend(found);
        Ok(ids)
    }

    /// Removes the objects of the listed tasks, whose interfaces are gone, at once.
    pub(crate) async fn remove_stale(&self, stale: &[(String, String)]) -> Result<(), NetError> {
        let Some((first, _)) = stale.first() else {
            return Ok(());
        };
        let mut tasks = self.tasks.lock().await;
        let mut batch = Batch::new();
        for (task_id, host_interface) in stale {
            let installed = tasks.get(task_id).copied().unwrap_or_default();
            self.removal_commands(&mut batch, task_id, host_interface, installed);
        }
        nft::apply_for_task(&batch, first).await?;
        for (task_id, _) in stale {
            tasks.remove(task_id);
            tracing::info!(
                task_id,
                "removed the firewall rules of a task without an interface"
            );
        }
        Ok(())
    }

    /// Commands that rebuild the task's two chains to implement `policy`, creating the
    /// member sets it names if missing.
    fn policy_commands(&self, batch: &mut Batch<'static>, task_id: &str, policy: &SecurityPolicy) {
        groups::ensure_commands(batch, &self.ip, policy_groups(policy));
        for direction in Direction::BOTH {
            let chain = direction.chain(task_id);
            nft::reset_chain(batch, self.ip.chain(&chain));
            for rule in direction.rules(policy) {
                for statements in rule_statements(direction, rule) {
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
}

/// The groups whose members a policy's rules name as peers.
fn policy_groups(policy: &SecurityPolicy) -> impl Iterator<Item = &String> {
    policy
        .ingress
        .iter()
        .chain(&policy.egress)
        .flat_map(|rule| &rule.groups)
}

fn check_policy(policy: &SecurityPolicy) -> Result<(), NetError> {
    groups::check_group_ids(policy_groups(policy))?;
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

/// A rule's address ranges as an anonymous set, overlapping prefixes merged (interval
/// sets reject overlaps); None when it has none.
fn ranges(rule: &SecurityRule) -> Option<Expr> {
    let truncated: Vec<Ipv4Net> = rule.sources.iter().map(Ipv4Net::trunc).collect();
    let items: Vec<SetItem<'static>> = Ipv4Net::aggregate(&truncated)
        .into_iter()
        .map(|peer| SetItem::Element(nft::network(peer)))
        .collect();
    (!items.is_empty()).then(|| Expression::Named(NamedExpression::Set(items)))
}

/// The nft rules of one security rule: one per kind of peer, its address ranges and
/// each of its groups' member sets; none when it has no peers and so matches nothing.
fn rule_statements(direction: Direction, rule: &SecurityRule) -> Vec<Vec<Stmt>> {
    let traffic = traffic_statements(rule);
    ranges(rule)
        .into_iter()
        .chain(rule.groups.iter().map(|group| groups::reference(group)))
        .map(|peers| {
            let mut statements = vec![matches(
                payload("ip", direction.peer_field()),
                Operator::EQ,
                peers,
            )];
            statements.extend(traffic.iter().cloned());
            statements.push(direction.allow());
            statements
        })
        .collect()
}

/// The protocol and port matches of a rule.
fn traffic_statements(rule: &SecurityRule) -> Vec<Stmt> {
    let mut statements = Vec::new();
    let protocol = |name: &'static str| matches(meta(MetaKey::L4proto), Operator::EQ, string(name));
    match (rule.protocol, rule.ports) {
        (Protocol::All, _) => {}
        (Protocol::Icmp, None) => statements.push(protocol("icmp")),
        (Protocol::Icmp, Some((kind, _))) => statements.push(matches(
            payload("icmp", "type"),
            Operator::EQ,
            Expression::Number(u32::from(kind)),
        )),
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
    statements
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

/// Records the task objects and member sets of one table listing (`nft -j list table`).
fn learn(listing: &Value, found: &mut HashMap<String, Installed>, sets: &mut Vec<String>) {
    let objects = listing["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for object in objects {
        if let Some(name) = object["set"]["name"]
            .as_str()
            .filter(|name| groups::is_group_id(name))
        {
            sets.push(name.to_owned());
        } else if let Some(chain) = object.get("chain") {
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
