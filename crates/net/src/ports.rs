//! Port mappings of bridge-mode tasks: connections to a published port of any host
//! address are rewritten (DNAT) to the task's address and container port.
//!
//! Each task with published ports has, in the bridge's ip table (see `firewall` for the
//! base chains that dispatch to it):
//!
//! ```text
//! table ip skiff_<bridge>
//!   published_tcp map: <host port> : jump publish_<task>     (published_udp alike)
//!   chain publish_<task> { tcp dport <host port> dnat to <address>:<container port>; ... }
//! ```
//!
//! Connections from elsewhere arrive in the `dnat` chain (prerouting) and are then
//! forwarded to the task, where its ingress rules apply: a bridge task's policy allows
//! its published container ports from anywhere (the control plane builds it). The
//! host's own connections to its addresses pass the `dnat_local` chain (output) instead.
//! A connection to 127.0.0.1 needs two more things, the approach of kube-proxy: the
//! bridge routes loopback-addressed packets (`route_localnet`), and `postrouting`
//! masquerades loopback sources leaving through the bridge, so the task sees and answers
//! the gateway address. A task cannot use `route_localnet` to reach the host's loopback
//! services: the input chain drops everything tasks send to the host but the listed host
//! services, none of which is on a loopback address.
//!
//! Publishing and unpublishing are one nft transaction each, idempotent ("add, flush,
//! delete" removal, see `nft`). Each task's published ports (the keys of its map
//! elements) are kept in memory and recovered from the kernel by `load` at agent start.
//! The control plane never hands one host port to two live tasks, so map keys do not
//! collide.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};

use model::agent::{PortBinding, Protocol};
use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::NfListObject;
use nftables::stmt::{Operator, Statement, NAT};
use serde_json::Value;

use crate::firewall::{ip_table, Transport, PUBLISHED_TCP_MAP, PUBLISHED_UDP_MAP};
use crate::names::validate_task_id;
use crate::nft::{self, matches, payload, Table};
use crate::NetError;

/// One published host port: the key of a task's element in a `published_*` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HostPort {
    transport: Transport,
    port: u16,
}

impl HostPort {
    fn key(self) -> nft::Expr {
        Expression::Number(u32::from(self.port))
    }
}

fn publish_chain(task_id: &str) -> String {
    format!("publish_{task_id}")
}

/// The published ports of one bridge's tasks.
#[derive(Debug)]
pub(crate) struct TaskPorts {
    ip: Table,
    tasks: Mutex<HashMap<String, Vec<HostPort>>>,
}

impl TaskPorts {
    pub(crate) fn new(bridge: &str) -> Self {
        Self {
            ip: ip_table(bridge),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes exactly `bindings` for the task at `address`, replacing what it
    /// published before, in one transaction.
    pub(crate) async fn publish(
        &self,
        task_id: &str,
        address: Ipv4Addr,
        bindings: &[PortBinding],
    ) -> Result<(), NetError> {
        let published: Vec<(HostPort, u16)> = bindings
            .iter()
            .filter_map(|binding| {
                let transport = match binding.protocol {
                    Protocol::Tcp => Transport::Tcp,
                    Protocol::Udp => Transport::Udp,
                    other => {
                        tracing::warn!(task_id, protocol = ?other, host_port = binding.host_port, "only tcp and udp ports can be published; skipping");
                        return None;
                    }
                };
                let port = binding.host_port;
                Some((HostPort { transport, port }, binding.container_port))
            })
            .collect();
        let keys: Vec<HostPort> = published.iter().map(|(key, _)| *key).collect();
        // Recorded before applying, so an unpublish after a failure removes what the
        // transaction may have installed.
        let previous = self.lock().insert(task_id.to_owned(), keys.clone());
        let previous = previous.unwrap_or_default();
        if previous.is_empty() && keys.is_empty() {
            self.lock().remove(task_id);
            return Ok(());
        }
        let chain = publish_chain(task_id);
        let mut batch = Batch::new();
        nft::reset_chain(&mut batch, self.ip.chain(&chain));
        for old in previous.iter().filter(|old| !keys.contains(old)) {
            let map = old.transport.published_map();
            nft::remove_jump(&mut batch, &self.ip, map, old.key(), &chain);
        }
        for (key, container_port) in &published {
            batch.add(self.ip.rule(
                &chain,
                vec![
                    matches(
                        payload(key.transport.name(), "dport"),
                        Operator::EQ,
                        key.key(),
                    ),
                    Statement::DNAT(Some(NAT {
                        addr: Some(nft::address(address)),
                        family: None,
                        port: Some(Expression::Number(u32::from(*container_port))),
                        flags: None,
                    })),
                ],
            ));
            batch.add(
                self.ip
                    .jump_element(key.transport.published_map(), key.key(), &chain),
            );
        }
        nft::apply_for_task(&batch, task_id).await?;
        tracing::debug!(task_id, ports = keys.len(), "task ports published");
        Ok(())
    }

    /// Removes the task's published ports, in one transaction. Idempotent.
    pub(crate) async fn unpublish(&self, task_id: &str) -> Result<(), NetError> {
        let Some(keys) = self.lock().get(task_id).cloned() else {
            return Ok(());
        };
        let mut batch = Batch::new();
        self.removal_commands(&mut batch, task_id, &keys);
        nft::apply_for_task(&batch, task_id).await?;
        self.lock().remove(task_id);
        Ok(())
    }

    /// Learns the published ports already in the kernel (after an agent restart) and
    /// returns the ids of the tasks they belong to.
    pub(crate) async fn load(&self) -> Result<Vec<String>, NetError> {
        let listing = nft::list_table(&self.ip).await?;
        let found = learn(&listing);
        let ids = found.keys().cloned().collect();
        self.lock().extend(found);
        Ok(ids)
    }

    /// Removes the published ports of the listed tasks, whose interfaces are gone, at
    /// once; tasks without published ports are skipped.
    pub(crate) async fn remove_stale(&self, stale: &[String]) -> Result<(), NetError> {
        let known: Vec<(&String, Vec<HostPort>)> = {
            let tasks = self.lock();
            stale
                .iter()
                .filter_map(|id| Some((id, tasks.get(id)?.clone())))
                .collect()
        };
        let Some((first, _)) = known.first() else {
            return Ok(());
        };
        let mut batch = Batch::new();
        for (task_id, keys) in &known {
            self.removal_commands(&mut batch, task_id, keys);
        }
        nft::apply_for_task(&batch, first).await?;
        let mut tasks = self.lock();
        for (task_id, _) in known {
            tasks.remove(task_id);
            tracing::info!(
                task_id,
                "removed the published ports of a task without an interface"
            );
        }
        Ok(())
    }

    fn removal_commands(&self, batch: &mut Batch<'static>, task_id: &str, keys: &[HostPort]) {
        let chain = publish_chain(task_id);
        nft::reset_chain(batch, self.ip.chain(&chain));
        for key in keys {
            let map = key.transport.published_map();
            nft::remove_jump(batch, &self.ip, map, key.key(), &chain);
        }
        batch.delete(NfListObject::Chain(self.ip.chain(&chain)));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<HostPort>>> {
        // The map is only ever updated in one statement: a panic cannot leave it torn.
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The tasks' published ports in an ip table listing (`nft -j list table`): a task's
/// chain, and the elements of the `published_*` maps that jump to it.
fn learn(listing: &Value) -> HashMap<String, Vec<HostPort>> {
    let mut found: HashMap<String, Vec<HostPort>> = HashMap::new();
    let objects = listing["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let task_of = |chain: &str| {
        chain
            .strip_prefix("publish_")
            .filter(|id| validate_task_id(id).is_ok())
            .map(str::to_owned)
    };
    for object in objects {
        if let Some(task) = object
            .get("chain")
            .and_then(|c| task_of(c["name"].as_str()?))
        {
            found.entry(task).or_default();
        } else if let Some(map) = object.get("map") {
            let transport = match map["name"].as_str() {
                Some(PUBLISHED_TCP_MAP) => Transport::Tcp,
                Some(PUBLISHED_UDP_MAP) => Transport::Udp,
                _ => continue,
            };
            let elements = map["elem"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            for element in elements {
                let port = element[0].as_u64().and_then(|p| u16::try_from(p).ok());
                let task = element[1]["jump"]["target"].as_str().and_then(task_of);
                if let (Some(port), Some(task)) = (port, task) {
                    found
                        .entry(task)
                        .or_default()
                        .push(HostPort { transport, port });
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests;
