//! Task networking on one host: a bridge, a network namespace and veth pair per task, and
//! NAT for traffic leaving the host.
//!
//! ```text
//!   agent's network namespace                        task namespace /run/netns/skiff-<id>
//!  +---------------------------------------------+   +-------------------------------+
//!  | skiff0: bridge, gateway <subnet>.1          |   | eth0: task address, MAC       |
//!  |   +-- sk<13 hex of id> ===== veth ==========|===|       0a:58:<address octets>  |
//!  |   +-- sk<...>  (other tasks)                |   | default via gateway; lo up    |
//!  | nftables `ip skiff_<bridge>`: masquerade    |   +-------------------------------+
//!  |   subnet leaving via any other interface    |
//!  +---------------------------------------------+
//! ```
//!
//! [`HostNetwork::init`] sets up the bridge, forwarding and the nftables table once per
//! agent start; [`HostNetwork::attach`] and [`HostNetwork::detach`] build and remove one
//! task's attachment with a few netlink round trips on long-lived or per-namespace
//! sockets, no processes. Links, addresses and routes go through rtnetlink; only the
//! nftables rules, installed by `init`, drive the `nft` binary.
//!
//! Modules: `host` (the public API and the attach/detach sequence), `netns` (named
//! namespaces and the threads that create them), `link` (rtnetlink requests), `firewall`
//! (forwarding and nftables), `names` (names and addresses derived from task ids).

mod error;
mod firewall;
mod host;
mod link;
mod names;
mod netns;
#[cfg(test)]
mod testing;

pub use error::NetError;
pub use host::{BridgeConfig, HostNetwork, TaskInterface, DEFAULT_BRIDGE, DEFAULT_SUBNET};
