//! Task networking on one host: a bridge, a network namespace and veth pair per task, NAT
//! for traffic leaving the host, and per-task security groups enforced with nftables.
//!
//! ```text
//!   agent's network namespace                        task namespace /run/netns/skiff-<id>
//!  +---------------------------------------------+   +-------------------------------+
//!  | skiff0: bridge, gateway <subnet>.1          |   | eth0: task address, MAC       |
//!  |   +-- sk<13 hex of id> ===== veth ==========|===|       0a:58:<address octets>  |
//!  |   +-- sk<...>  (other tasks)                |   | default via gateway; lo up    |
//!  | nftables `ip skiff_<bridge>`: masquerade,   |   +-------------------------------+
//!  |   host protection, per-task security groups |
//!  | nftables `bridge skiff_<bridge>`: per-port  |
//!  |   anti-spoofing (MAC, ARP, IPv4 source)     |
//!  +---------------------------------------------+
//! ```
//!
//! [`HostNetwork::init`] sets up the bridge, forwarding and the bridge-wide nftables rules
//! once per agent start; [`HostNetwork::attach`] and [`HostNetwork::detach`] build and
//! remove one task's attachment with a few netlink round trips on long-lived or
//! per-namespace sockets and one `nft` run for its rules;
//! [`HostNetwork::update_security`] applies the control plane's security group changes
//! (member sets and running tasks' rules) with one `nft` run.
//! Links, addresses and routes go through rtnetlink, nftables through `nft`'s JSON.
//!
//! Modules: `host` (the public API and the attach/detach sequence), `netns` (named
//! namespaces and the threads that create them), `link` (rtnetlink requests), `firewall`
//! (forwarding and the bridge-wide rules), `security` (each task's rules and the groups'
//! member sets), `ports` (each bridge-mode task's published ports), `nft`
//! (nftables JSON building blocks), `names` (names and addresses derived from task ids).

mod error;
mod firewall;
mod host;
mod link;
mod names;
mod netns;
mod nft;
mod ports;
mod security;
#[cfg(test)]
mod testing;

pub use error::NetError;
pub use firewall::{
    default_host_services, HostService, ServiceAddress, Transport, METADATA_ADDRESS,
};
pub use host::{BridgeConfig, HostNetwork, TaskInterface, DEFAULT_BRIDGE, DEFAULT_SUBNET};
