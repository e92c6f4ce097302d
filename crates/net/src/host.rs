//! The host side of task networking: one bridge, and one attachment per task.
//!
//! `HostNetwork::init` converges the host onto the configuration and can run any number of
//! times (every agent start does): bridge created or reused, gateway address set (stale
//! addresses removed), link up, IPv4 forwarding on, bridge-wide nftables rules refilled,
//! rules of tasks whose interface is gone removed (those of running tasks stay).
//!
//! An attachment is built in this order, so that a crash at any point leaves pieces that
//! the next `attach` or `detach` of the same task recognises and removes:
//!
//! ```text
//!  0. nftables                the task's guard and security rules, keyed by its host
//!                             interface name and address (see `security`)
//!  1. /run/netns/skiff-<id>   named namespace (a thread unshares it and opens a netlink
//!                             socket inside it)
//!  2. sk<13 hex> <=> eth0     veth pair in one request: host end up on the bridge with a
//!                             MAC address derived from the task id, task end created
//!                             inside the namespace
//!  3. inside the namespace    lo up, address on eth0, eth0 up, default route via gateway
//! ```
//!
//! Detaching deletes the host end (which takes the task end with it), the namespace, and
//! last the rules. The host end is deleted only if its MAC address is the task's: names keep
//! 13 of the task id's 32 digits and the MAC 10 more, so this check is what keeps one task
//! from ever tearing down another's interface. Deleting a veth is the slow step (the
//! kernel waits for RCU callbacks: 15-40 ms on the development hosts) but it is
//! synchronous on purpose: once `detach` returns the task is off the bridge, even if a
//! leaked process still pins its namespace. Operations on one task must not run
//! concurrently; on different tasks they may.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use ipnet::Ipv4Net;
use model::agent::{PortBinding, SecurityPolicy};
use netlink_packet_route::link::InfoKind;
use nix::errno::Errno;
use rtnetlink::Handle;
use tokio::task::JoinHandle;

use crate::error::netlink_errno;
use crate::firewall::{self, BaseRules, HostService};
use crate::link::{self, TaskAddressing, VethPair};
use crate::names::{
    self, format_mac, host_interface, host_mac, netns_name, task_mac, validate_task_id,
};
use crate::ports::TaskPorts;
use crate::security::TaskFirewall;
use crate::{netns, NetError};

/// Name of the bridge when none is configured.
pub const DEFAULT_BRIDGE: &str = "skiff0";
/// Task subnet when none is configured.
pub const DEFAULT_SUBNET: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 89, 0, 0), 16);

/// Which bridge and subnet the host's tasks use, and what of the host they may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Bridge interface name, 1-15 bytes.
    pub name: String,
    /// Task subnet; its first host address is the gateway, on the bridge.
    pub subnet: Ipv4Net,
    /// The host's services tasks may connect to; every other connection from a task to
    /// any address of the host is dropped. Defaults to `firewall::default_host_services`.
    pub host_services: Vec<HostService>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_BRIDGE.to_owned(),
            subnet: DEFAULT_SUBNET,
            host_services: firewall::default_host_services(),
        }
    }
}

/// A task's network attachment, as `HostNetwork::attach` made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInterface {
    pub task_id: String,
    /// The named network namespace to run the task in.
    pub netns_path: PathBuf,
    /// Host end of the veth pair, on the bridge.
    pub host_interface: String,
    /// MAC address of the task's `eth0`, `0a:58:` and the address octets, lower case.
    pub mac_address: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// The host's task network: a bridge, its NAT rules, and per-task attachments.
///
/// Dropping it closes its netlink connection; the bridge, the rules and the attachments
/// stay, so a restarted agent finds them (see `attached_tasks`).
#[derive(Debug)]
pub struct HostNetwork {
    bridge: String,
    bridge_index: u32,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    netns_dir: PathBuf,
    firewall: TaskFirewall,
    ports: TaskPorts,
    handle: Handle,
    connection: JoinHandle<()>,
}

impl HostNetwork {
    /// Creates or reuses the bridge with the gateway address, brings it up, enables IPv4
    /// forwarding, (re)installs the bridge-wide nftables rules and removes the rules of
    /// tasks whose interface is gone (the rules of the others stay in force). Idempotent.
    ///
    /// Works in the calling thread's network namespace; needs a tokio runtime with IO
    /// enabled, and root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
    pub async fn init(config: BridgeConfig) -> Result<Self, NetError> {
        if let Some(reason) = names::interface_name_problem(&config.name) {
            return Err(NetError::InvalidBridgeName {
                name: config.name,
                reason,
            });
        }
        let subnet = config.subnet.trunc();
        let gateway = match (subnet.prefix_len() <= 30, subnet.hosts().next()) {
            (true, Some(gateway)) => gateway,
            _ => return Err(NetError::SubnetTooSmall { subnet }),
        };
        let bridge = config.name.clone();
        let netns_dir = PathBuf::from(netns::NETNS_RUN_DIR);
        netns::prepare_run_dir(&netns_dir)?;

        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(|source| NetError::NetlinkSocket { source })?;
        let connection = tokio::spawn(connection);
        // From here on, dropping `network` closes the connection on every error path.
        let mut network = Self {
            bridge,
            bridge_index: 0,
            subnet,
            gateway,
            netns_dir,
            firewall: TaskFirewall::new(&config.name, subnet),
            ports: TaskPorts::new(&config.name),
            handle,
            connection,
        };
        network.bridge_index = network.ensure_bridge().await?;
        firewall::enable_ip_forwarding()?;
        firewall::enable_route_localnet(&network.bridge)?;
        firewall::install(&BaseRules {
            bridge: &network.bridge,
            subnet,
            gateway,
            services: &config.host_services,
        })
        .await?;
        network.remove_stale_rules().await?;
        tracing::info!(
            bridge = %network.bridge,
            subnet = %subnet,
            gateway = %gateway,
            "task network ready"
        );
        Ok(network)
    }

    /// The gateway address, on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The task subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// The bridge interface name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Creates the task's namespace and veth pair, configures `address` in it, and
    /// enforces `security` (None: the bridge's defaults, ingress from the task subnet and
    /// any egress) and anti-spoofing from the first frame: the rules are in place before
    /// the interface exists.
    ///
    /// Idempotent for one task: whatever an earlier attachment left is torn down first and
    /// rebuilt. On failure the partial attachment is removed; if the future is dropped
    /// midway, the next `attach` or `detach` of the task removes what it left.
    pub async fn attach(
        &self,
        task_id: &str,
        address: Ipv4Addr,
        security: Option<&SecurityPolicy>,
    ) -> Result<TaskInterface, NetError> {
        let started = Instant::now();
        validate_task_id(task_id)?;
        self.check_task_address(address)?;
        let netns_path = self.netns_path(task_id);
        let host_name = host_interface(task_id);
        let default_policy;
        let policy = match security {
            Some(policy) => policy,
            None => {
                default_policy = self.firewall.default_policy();
                &default_policy
            }
        };
        // The rules are keyed by the host interface name: refuse another task's early.
        if let Some(existing) = link::find(&self.handle, &host_name).await? {
            if existing.mac.as_deref() != Some(&host_mac(task_id)[..]) {
                return Err(NetError::HostInterfaceTaken {
                    name: host_name,
                    task_id: task_id.to_owned(),
                });
            }
        }
        if let Err(error) = self
            .firewall
            .attach(task_id, address, &host_name, policy)
            .await
        {
            self.detach_after_failure(task_id).await;
            return Err(error);
        }
        if netns::remove(&netns_path)? {
            tracing::info!(task_id, "replacing a leftover network namespace");
        }

        let (netns_fd, connection, task_handle) = netns::create(netns_path.clone()).await?;
        // The connection ends once `task_handle` is dropped at the end of this function.
        tokio::spawn(connection);
        let mac = task_mac(address);
        let pair = VethPair {
            host_name: &host_name,
            host_mac: host_mac(task_id),
            bridge_index: self.bridge_index,
            task_mac: mac,
            task_netns: netns_fd.as_raw_fd(),
        };
        let addressing = TaskAddressing {
            address,
            prefix_len: self.subnet.prefix_len(),
            gateway: self.gateway,
        };
        let built = async {
            self.create_veth(task_id, &pair).await?;
            link::configure_task_side(&task_handle, &netns_path, &addressing).await?;
            // The host end came up before eth0, and the bridge may just have gained its
            // first port: see `wait_until_operational`.
            let (host_end, bridge) = futures::try_join!(
                link::wait_until_operational(&self.handle, &host_name),
                link::wait_until_operational(&self.handle, &self.bridge),
            )?;
            if !(host_end && bridge) {
                tracing::warn!(
                    task_id,
                    host_interface = %host_name,
                    bridge = %self.bridge,
                    "interfaces not operational after a second: the task's first packets may be dropped"
                );
            }
            Ok(())
        }
        .await;
        drop(netns_fd);
        if let Err(error) = built {
            self.detach_after_failure(task_id).await;
            return Err(error);
        }

        tracing::debug!(
            task_id,
            address = %address,
            host_interface = %host_name,
            elapsed_us = started.elapsed().as_micros() as u64,
            "task attached"
        );
        Ok(TaskInterface {
            task_id: task_id.to_owned(),
            netns_path,
            host_interface: host_name,
            mac_address: format_mac(&mac),
            address,
            prefix_len: addressing.prefix_len,
            gateway: self.gateway,
        })
    }

    /// Applies a security update atomically (one nft transaction): `members` (when
    /// given, the complete member lists of every group some policy names) into the
    /// groups' sets, and each of `policies` whose task is attached here and holds a
    /// policy older than `version`. Returns the tasks whose rules were replaced.
    /// Connections already established stay up, as with AWS security groups.
    pub async fn update_security(
        &self,
        members: Option<&BTreeMap<String, Vec<Ipv4Addr>>>,
        policies: &BTreeMap<String, SecurityPolicy>,
        version: u64,
    ) -> Result<Vec<String>, NetError> {
        for task_id in policies.keys() {
            validate_task_id(task_id)?;
        }
        self.firewall.update(members, policies, version).await
    }

    /// Publishes exactly `bindings` of the attached task at `address` on every address of
    /// the host (bridge mode; see `ports`), replacing what it published before, in one
    /// nft run. `detach` unpublishes them.
    pub async fn publish(
        &self,
        task_id: &str,
        address: Ipv4Addr,
        bindings: &[PortBinding],
    ) -> Result<(), NetError> {
        validate_task_id(task_id)?;
        self.check_task_address(address)?;
        self.ports.publish(task_id, address, bindings).await
    }

    /// Removes the task's veth pair, namespace, published ports and firewall rules.
    /// Idempotent: missing pieces are fine.
    pub async fn detach(&self, task_id: &str) -> Result<(), NetError> {
        let started = Instant::now();
        validate_task_id(task_id)?;
        let host_name = host_interface(task_id);
        match link::find(&self.handle, &host_name).await? {
            Some(existing) if existing.mac.as_deref() == Some(&host_mac(task_id)[..]) => {
                link::delete(&self.handle, existing.index, &host_name).await?;
            }
            Some(_) => tracing::warn!(
                task_id,
                host_interface = %host_name,
                "leaving an interface that belongs to another task"
            ),
            None => {}
        }
        netns::remove(&self.netns_path(task_id))?;
        self.ports.unpublish(task_id).await?;
        // Last: until the interface is gone, the rules keep the task in bounds.
        self.firewall.detach(task_id, &host_name).await?;
        tracing::debug!(
            task_id,
            elapsed_us = started.elapsed().as_micros() as u64,
            "task detached"
        );
        Ok(())
    }

    /// Ids of the tasks that have a namespace, for garbage collection after a restart.
    pub fn attached_tasks(&self) -> Result<Vec<String>, NetError> {
        netns::list(&self.netns_dir)
    }

    async fn detach_after_failure(&self, task_id: &str) {
        if let Err(cleanup) = self.detach(task_id).await {
            tracing::warn!(task_id, error = %cleanup, "cannot remove a failed attachment");
        }
    }

    /// Removes the rules of tasks whose host interface is gone (a crash between the
    /// steps of an attach or a detach, or an interface deleted behind the agent's back).
    async fn remove_stale_rules(&self) -> Result<(), NetError> {
        let mut stale = Vec::new();
        let mut tasks = self.firewall.load().await?;
        tasks.extend(self.ports.load().await?);
        tasks.sort_unstable();
        tasks.dedup();
        for task_id in tasks {
            let host_name = host_interface(&task_id);
            let present = link::find(&self.handle, &host_name)
                .await?
                .is_some_and(|link| link.mac.as_deref() == Some(&host_mac(&task_id)[..]));
            if !present {
                stale.push((task_id, host_name));
            }
        }
        let stale_ids: Vec<String> = stale.iter().map(|(id, _)| id.clone()).collect();
        self.ports.remove_stale(&stale_ids).await?;
        self.firewall.remove_stale(&stale).await
    }

    fn netns_path(&self, task_id: &str) -> PathBuf {
        self.netns_dir.join(netns_name(task_id))
    }

    fn check_task_address(&self, address: Ipv4Addr) -> Result<(), NetError> {
        let subnet = self.subnet;
        if !subnet.contains(&address) {
            return Err(NetError::AddressOutsideSubnet { address, subnet });
        }
        if address == subnet.network() || address == subnet.broadcast() || address == self.gateway {
            return Err(NetError::ReservedAddress { address, subnet });
        }
        Ok(())
    }

    /// Creates or reuses the bridge, sets its address and MAC address, brings it up;
    /// returns its index.
    async fn ensure_bridge(&self) -> Result<u32, NetError> {
        let name = &self.bridge;
        let mac = task_mac(self.gateway);
        let bridge = match link::find(&self.handle, name).await? {
            Some(existing) if existing.kind == Some(InfoKind::Bridge) => existing,
            Some(existing) => {
                return Err(NetError::NotABridge {
                    name: name.clone(),
                    kind: existing
                        .kind
                        .map_or_else(|| "plain".to_owned(), |kind| kind.to_string()),
                })
            }
            None => {
                link::create_bridge(&self.handle, name, mac).await?;
                tracing::info!(bridge = %name, "created the task bridge");
                link::find(&self.handle, name)
                    .await?
                    .ok_or_else(|| NetError::BridgeVanished { name: name.clone() })?
            }
        };
        let prefix_len = self.subnet.prefix_len();
        // The gateway, and the task metadata endpoint's address (the agent serves it there).
        let addresses = [(self.gateway, prefix_len), (crate::METADATA_ADDRESS, 32)];
        link::ensure_only_ipv4_addresses(&self.handle, bridge.index, name, &addresses).await?;
        link::enable_bridge_netfilter(&self.handle, bridge.index, name).await?;
        // The MAC follows the gateway address, which changes with the configured subnet.
        let new_mac = (bridge.mac.as_deref() != Some(&mac[..])).then_some(mac);
        link::set_up(&self.handle, bridge.index, name, new_mac).await?;
        Ok(bridge.index)
    }

    /// Creates the pair. An interface in the way with the same name and MAC address can
    /// only be a leftover of this task: it is deleted and the creation retried once.
    async fn create_veth(&self, task_id: &str, pair: &VethPair<'_>) -> Result<(), NetError> {
        let fail = || {
            NetError::netlink(format!(
                "creating veth pair {} for task {task_id} on bridge {}",
                pair.host_name, self.bridge
            ))
        };
        match link::create_veth(&self.handle, pair).await {
            Ok(()) => return Ok(()),
            Err(error) if netlink_errno(&error) == Some(Errno::EEXIST) => {}
            Err(error) => return Err(fail()(error)),
        }
        match link::find(&self.handle, pair.host_name).await? {
            Some(existing) if existing.mac.as_deref() == Some(&pair.host_mac[..]) => {
                tracing::info!(task_id, host_interface = %pair.host_name, "replacing a leftover veth pair");
                link::delete(&self.handle, existing.index, pair.host_name).await?;
            }
            Some(_) => {
                return Err(NetError::HostInterfaceTaken {
                    name: pair.host_name.to_owned(),
                    task_id: task_id.to_owned(),
                })
            }
            // Gone in the meantime: nothing to delete.
            None => {}
        }
        link::create_veth(&self.handle, pair).await.map_err(fail())
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
