//! The crate's error type.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use nix::errno::Errno;

/// Why a host or task networking operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("task id {task_id:?} is not 32 lowercase hex digits: pass the id from the task ARN")]
    InvalidTaskId { task_id: String },

    #[error("bridge name {name:?} is not a valid interface name because {reason}: use 1-15 characters without '/', ':' or whitespace")]
    InvalidBridgeName { name: String, reason: &'static str },

    #[error("subnet {subnet} leaves no address for tasks besides the gateway: use a prefix length of /30 or shorter")]
    SubnetTooSmall { subnet: Ipv4Net },

    #[error("task address {address} is outside the task subnet {subnet}: allocate task addresses from {subnet}")]
    AddressOutsideSubnet { address: Ipv4Addr, subnet: Ipv4Net },

    #[error("task address {address} is the network, gateway or broadcast address of {subnet}: allocate another host address")]
    ReservedAddress { address: Ipv4Addr, subnet: Ipv4Net },

    #[error("link {name:?} exists but is a {kind} interface, not a bridge: delete it or configure another bridge name")]
    NotABridge { name: String, kind: String },

    #[error("host interface {name:?} already exists and does not belong to task {task_id} (its MAC address differs): detach the task that owns it, or delete the interface if it is stale")]
    HostInterfaceTaken { name: String, task_id: String },

    #[error(
        "bridge {name:?} disappeared right after it was created: another process is deleting it"
    )]
    BridgeVanished { name: String },

    #[error("interface {name:?} is missing from network namespace {netns:?} right after it was created: another process is changing the namespace")]
    TaskInterfaceMissing { name: String, netns: PathBuf },

    #[error("cannot open a netlink route socket: run the agent as root (CAP_NET_ADMIN)")]
    NetlinkSocket { source: io::Error },

    #[error("netlink request failed while {action}")]
    Netlink {
        action: String,
        source: Box<rtnetlink::Error>,
    },

    #[error("cannot prepare {path:?} for named network namespaces: run the agent as root (CAP_SYS_ADMIN) with /run writable")]
    NetnsRunDir { path: PathBuf, source: io::Error },

    #[error("cannot {action} network namespace {path:?}: check that the agent runs as root and that nothing else manages this file")]
    Namespace {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("cannot list network namespaces in {path:?}")]
    ListNamespaces { path: PathBuf, source: io::Error },

    #[error(
        "cannot start a thread for network namespace work: the process is out of threads or memory"
    )]
    SpawnThread { source: io::Error },

    #[error("the network namespace worker thread panicked: this is a bug, the panic message is in the agent's log")]
    ThreadPanicked,

    #[error(
        "cannot enable {setting} through {path:?}: run the agent as root with /proc/sys writable"
    )]
    Sysctl {
        setting: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("cannot install the nftables tables `ip skiff_<bridge>` and `bridge skiff_<bridge>`: check that `nft` is on PATH and the kernel has nf_tables with NAT and bridge support")]
    Firewall {
        source: nftables::helper::NftablesError,
    },

    #[error("cannot update the nftables rules of task {task_id}: {detail}; restarting the agent reinstalls the bridge's tables")]
    TaskFirewall { task_id: String, detail: String },

    #[error("cannot list the nftables tables `skiff_<bridge>` to find the rules of running tasks: {detail}; check that `nft list ruleset` works for the agent's user (root)")]
    ListFirewall { detail: String },

    #[error("nft listed the tables `skiff_<bridge>` in JSON this agent cannot read: check that nft is version 1.0 or newer")]
    ParseFirewall { source: serde_json::Error },

    #[error("security rule port range {low}-{high} is reversed: give the lower port first")]
    InvalidPortRange { low: u16, high: u16 },

    #[error("security group id {group:?} is not of the form sg-<letters and digits>, and the control plane only creates such ids: the update was refused whole; report it as a bug with the server's log")]
    InvalidGroupId { group: String },

    #[error("cannot apply a security group update: {detail}; the tasks keep their previous rules and the agent retries; if it keeps failing, check `nft list ruleset` and the kernel log")]
    SecurityUpdate { detail: String },
}

impl NetError {
    /// Wraps a failed rtnetlink request; `action` completes "netlink request failed while ...".
    pub(crate) fn netlink(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Self {
        let action = action.into();
        move |source| Self::Netlink {
            action,
            source: Box::new(source),
        }
    }
}

/// The errno carried by a netlink error reply, if the error is one.
pub(crate) fn netlink_errno(error: &rtnetlink::Error) -> Option<Errno> {
    match error {
        rtnetlink::Error::NetlinkError(message) => {
            message.code.map(|code| Errno::from_raw(-code.get()))
        }
        _ => None,
    }
}
