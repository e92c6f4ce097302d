//! Compiles the store's security groups and tasks into what agents enforce and answer:
//! each task's policy, each referenced group's members, and the service name table.
//!
//! A policy holds the rules of the task's groups as they are written: a rule naming a
//! peer group names it in the policy too, and the group's members travel apart. So a
//! policy changes only when its groups' rules do, and a task starting or stopping changes
//! the member lists alone.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use model::agent::{NetworkMode, Protocol, SecurityPolicy, SecurityRule};
use model::task::TaskStatus;
use model::vpc::{IpProtocol, RulePeer, SecurityGroup, SecurityGroupRule};

use crate::services::service_name;
use crate::TaskRecord;

/// Everything the agents need to know about the network, as of one reading of the store.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Compiled {
    /// Every group some policy names as a peer, with the addresses of its tasks.
    pub members: BTreeMap<String, Vec<Ipv4Addr>>,
    /// The policy of every awsvpc task not yet stopped.
    pub policies: BTreeMap<String, SecurityPolicy>,
    /// `<service>.<cluster>.local` to the addresses of its tasks that take traffic.
    pub names: BTreeMap<String, Vec<Ipv4Addr>>,
}

/// The policy of a task in `groups`: every rule of every group, once.
pub(crate) fn task_policy<'g>(
    groups: impl IntoIterator<Item = &'g SecurityGroup>,
) -> SecurityPolicy {
    let mut policy = SecurityPolicy::default();
    for group in groups {
        for (rules, compiled) in [
            (&group.ingress, &mut policy.ingress),
            (&group.egress, &mut policy.egress),
        ] {
            for rule in rules.iter().map(security_rule) {
                if !compiled.contains(&rule) {
                    compiled.push(rule);
                }
            }
        }
    }
    policy
}

/// Compiles `tasks` (any status; stopped ones are skipped) against `groups` (by id).
/// Tasks recorded without groups are in `default_groups`, their VPC's default group.
pub(crate) fn compile(
    tasks: &[TaskRecord],
    groups: &BTreeMap<String, SecurityGroup>,
    default_groups: &[String],
) -> Compiled {
    let mut compiled = Compiled::default();
    let mut addresses: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for record in tasks {
        let (task, network) = (&record.task, &record.plan.network);
        if task.last_status == TaskStatus::Stopped {
            continue;
        }
        if let Some(name) = taking_traffic(record) {
            compiled
                .names
                .entry(name)
                .or_default()
                .push(network.address);
        }
        if network.mode != NetworkMode::Awsvpc {
            continue;
        }
        let ids = if network.security_groups.is_empty() {
            default_groups
        } else {
            &network.security_groups
        };
        for id in ids {
            addresses.entry(id).or_default().push(network.address);
        }
        let policy = task_policy(ids.iter().filter_map(|id| groups.get(id)));
        compiled
            .policies
            .insert(record.plan.task_id.clone(), policy);
    }
    for policy in compiled.policies.values() {
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for group in &rule.groups {
                compiled.members.entry(group.clone()).or_insert_with(|| {
                    let mut members = addresses.get(group.as_str()).cloned().unwrap_or_default();
                    members.sort_unstable();
                    members.dedup();
                    members
                });
            }
        }
    }
    for members in compiled.names.values_mut() {
        members.sort_unstable();
    }
    compiled
}

/// The name a service task answers to while it takes traffic: running, meant to keep
/// running, and not unhealthy.
fn taking_traffic(record: &TaskRecord) -> Option<String> {
    let task = &record.task;
    let service = service_name(task)?;
    let serving = task.last_status == TaskStatus::Running
        && task.desired_status == TaskStatus::Running
        && task.health_status != "UNHEALTHY";
    serving.then(|| format!("{service}.{}.local", record.plan.cluster).to_ascii_lowercase())
}

fn security_rule(rule: &SecurityGroupRule) -> SecurityRule {
    let (protocol, ports) = match rule.protocol {
        IpProtocol::All => (Protocol::All, None),
        // from_port holds the ICMP type, -1 for any.
        IpProtocol::Icmp => (
            Protocol::Icmp,
            u16::try_from(rule.from_port).ok().map(|kind| (kind, kind)),
        ),
        IpProtocol::Tcp => (Protocol::Tcp, port_range(rule)),
        IpProtocol::Udp => (Protocol::Udp, port_range(rule)),
    };
    let (sources, groups) = match &rule.peer {
        RulePeer::Cidr(net) => (vec![*net], vec![]),
        RulePeer::Group(id) => (vec![], vec![id.clone()]),
    };
    SecurityRule {
        protocol,
        ports,
        sources,
        groups,
    }
}

/// A TCP or UDP rule's ports; None for every port. Rules are validated when written,
/// so their ports are within 0-65535.
fn port_range(rule: &SecurityGroupRule) -> Option<(u16, u16)> {
    let low = u16::try_from(rule.from_port).unwrap_or(0);
    let high = u16::try_from(rule.to_port).unwrap_or(u16::MAX);
    (low, high).ne(&(0, u16::MAX)).then_some((low, high))
}
