//! rtnetlink requests for the bridge, the veth pairs and the task side of each pair.
//!
//! Each function issues a handful of requests on a caller-provided handle: the host's
//! long-lived connection, or a connection opened inside a task namespace (see `netns`).
//! Requests carry everything they can in one message, so attaching costs a few round
//! trips and no process: one request creates the veth pair with the host end tagged by
//! its MAC address, enslaved to the bridge and up, and the task end already named `eth0`,
//! with its MAC address, inside the task namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridge, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlag, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::AddressFamily;
use nix::errno::Errno;
use rtnetlink::Handle;

use crate::error::netlink_errno;
use crate::NetError;

/// The kernel gives `lo` this index in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: u32 = 1;
/// Name of the task's interface inside its namespace.
pub(crate) const TASK_INTERFACE: &str = "eth0";

/// What the crate needs to know about an existing link.
#[derive(Debug)]
pub(crate) struct Link {
    pub index: u32,
    pub kind: Option<InfoKind>,
    pub mac: Option<Vec<u8>>,
    /// Operational state `Up`: carrier on, and the kernel has processed it.
    pub operational: bool,
}

impl Link {
    fn from_message(message: LinkMessage) -> Self {
        let mut link = Link {
            index: message.header.index,
            kind: None,
            mac: None,
            operational: false,
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::Address(mac) => link.mac = Some(mac),
                LinkAttribute::OperState(state) => link.operational = state == State::Up,
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.into_iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

/// The link called `name`, if there is one.
pub(crate) async fn find(handle: &Handle, name: &str) -> Result<Option<Link>, NetError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(message) => Ok(message.map(Link::from_message)),
        Err(error) if netlink_errno(&error) == Some(Errno::ENODEV) => Ok(None),
        Err(error) => Err(NetError::netlink(format!("looking up link {name:?}"))(
            error,
        )),
    }
}

/// Creates a bridge with a fixed MAC address: a bridge otherwise takes the lowest MAC of
/// its ports, which changes the gateway's MAC as tasks come and go.
pub(crate) async fn create_bridge(
    handle: &Handle,
    name: &str,
    mac: [u8; 6],
) -> Result<(), NetError> {
    handle
        .link()
        .add()
        .bridge(name.to_owned())
        .address(mac.to_vec())
        .execute()
        .await
        .map_err(NetError::netlink(format!("creating bridge {name:?}")))
}

/// Makes bridge `index` (called `name`, for messages) pass its IPv4 frames through the IP
/// netfilter hooks: the bridge's own `nf_call_iptables`, which leaves the namespace-wide
/// `bridge-nf-call-iptables` sysctl, and so other bridges, alone.
pub(crate) async fn enable_bridge_netfilter(
    handle: &Handle,
    index: u32,
    name: &str,
) -> Result<(), NetError> {
    let mut request = handle.link().set(index);
    request
        .message_mut()
        .attributes
        .push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::NfCallIpTables(1)])),
        ]));
    request.execute().await.map_err(NetError::netlink(format!(
        "letting bridge {name:?} pass IPv4 traffic to nftables (nf_call_iptables)"
    )))
}

/// Brings link `index` (called `name`, for messages) up, and sets its MAC address to
/// `mac` in the same request if one is given.
pub(crate) async fn set_up(
    handle: &Handle,
    index: u32,
    name: &str,
    mac: Option<[u8; 6]>,
) -> Result<(), NetError> {
    let mut request = handle.link().set(index).up();
    if let Some(mac) = mac {
        request = request.address(mac.to_vec());
    }
    request
        .execute()
        .await
        .map_err(NetError::netlink(format!("bringing link {name:?} up")))
}

/// Makes `wanted` (address, prefix length) the only IPv4 addresses of link `index`,
/// keeping those already there.
pub(crate) async fn ensure_only_ipv4_addresses(
    handle: &Handle,
    index: u32,
    name: &str,
    wanted: &[(Ipv4Addr, u8)],
) -> Result<(), NetError> {
    let existing: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(NetError::netlink(format!("listing addresses of {name:?}")))?;
    let mut present = Vec::new();
    for message in existing {
        if message.header.family != AddressFamily::Inet || message.header.index != index {
            continue;
        }
        let Some(stale) = ipv4_local(&message) else {
            continue;
        };
        if wanted.contains(&(stale, message.header.prefix_len)) {
            present.push((stale, message.header.prefix_len));
            continue;
        }
        tracing::warn!(
            interface = name,
            address = %stale,
            prefix_len = message.header.prefix_len,
            "removing a stale IPv4 address"
        );
        handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(NetError::netlink(format!("removing {stale} from {name:?}")))?;
    }
    for &(address, prefix_len) in wanted.iter().filter(|w| !present.contains(w)) {
        handle
            .address()
            .add(index, IpAddr::V4(address), prefix_len)
            .execute()
            .await
            .map_err(NetError::netlink(format!(
                "adding {address}/{prefix_len} to {name:?}"
            )))?;
    }
    Ok(())
}

fn ipv4_local(message: &AddressMessage) -> Option<Ipv4Addr> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            AddressAttribute::Local(IpAddr::V4(address)) => Some(*address),
            _ => None,
        })
}

/// A veth pair between the host bridge and a task namespace.
pub(crate) struct VethPair<'a> {
    /// Name of the host end.
    pub host_name: &'a str,
    /// MAC address of the host end, which identifies the owning task.
    pub host_mac: [u8; 6],
    pub bridge_index: u32,
    /// MAC address of the task end.
    pub task_mac: [u8; 6],
    /// Descriptor of the task namespace, where the task end is created as `eth0`.
    pub task_netns: RawFd,
}

/// Creates the pair in one request: the host end with its MAC address, enslaved to the
/// bridge and up; the task end created directly inside the task namespace as `eth0`, with
/// its MAC address. (Moving an interface between namespaces afterwards would cost
/// the kernel RCU grace periods: tens of milliseconds.) Errors are returned raw so the
/// caller can recognise EEXIST.
pub(crate) async fn create_veth(
    handle: &Handle,
    pair: &VethPair<'_>,
) -> Result<(), rtnetlink::Error> {
    // The task end cannot be created up: the kernel opens it before its peer exists and
    // fails with ENOTCONN. `configure_task_side` brings it up.
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(TASK_INTERFACE.to_owned()),
        LinkAttribute::Address(pair.task_mac.to_vec()),
        LinkAttribute::NetNsFd(pair.task_netns),
    ];
    let mut request = handle.link().add();
    let message = request.message_mut();
    message.header.flags.push(LinkFlag::Up);
    message.header.change_mask.push(LinkFlag::Up);
    message.attributes = vec![
        LinkAttribute::IfName(pair.host_name.to_owned()),
        LinkAttribute::Address(pair.host_mac.to_vec()),
        LinkAttribute::Controller(pair.bridge_index),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    request.execute().await
}

/// Deletes link `index` (called `name`, for messages); a link already gone is fine.
pub(crate) async fn delete(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(error) if netlink_errno(&error) == Some(Errno::ENODEV) => Ok(()),
        Err(error) => Err(NetError::netlink(format!("deleting link {name:?}"))(error)),
    }
}

/// How long `wait_until_operational` waits before giving up.
const OPERATIONAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between two looks at the link.
const OPERATIONAL_POLL: Duration = Duration::from_millis(1);

/// Waits until link `name` is operationally up; returns false if it is not after a
/// second.
///
/// A veth end brought up before its peer, or a bridge that had lost its carrier with its
/// last port, only gets its transmit queue back when the kernel's linkwatch worker
/// processes the carrier change, asynchronously. Until then it drops packets: an ARP
/// request lost this way costs the task's first connection a one second retransmit.
/// Linkwatch publishes the operational state just before it activates the device, so this
/// state marks the end of that window, usually within a millisecond.
pub(crate) async fn wait_until_operational(handle: &Handle, name: &str) -> Result<bool, NetError> {
    let deadline = Instant::now() + OPERATIONAL_TIMEOUT;
    loop {
        match find(handle, name).await? {
            Some(link) if link.operational => return Ok(true),
            _ if Instant::now() >= deadline => return Ok(false),
            _ => tokio::time::sleep(OPERATIONAL_POLL).await,
        }
    }
}

/// Addressing of a task's `eth0`.
pub(crate) struct TaskAddressing {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// Configures the task side through `handle`, a connection inside the task namespace:
/// `lo` up, the address on `eth0`, `eth0` up, and the default route via the gateway.
pub(crate) async fn configure_task_side(
    handle: &Handle,
    netns: &std::path::Path,
    addressing: &TaskAddressing,
) -> Result<(), NetError> {
    let eth0 =
        find(handle, TASK_INTERFACE)
            .await?
            .ok_or_else(|| NetError::TaskInterfaceMissing {
                name: TASK_INTERFACE.to_owned(),
                netns: netns.to_owned(),
            })?;
    set_up(handle, LOOPBACK_INDEX, "lo", None).await?;
    handle
        .address()
        .add(
            eth0.index,
            IpAddr::V4(addressing.address),
            addressing.prefix_len,
        )
        .execute()
        .await
        .map_err(NetError::netlink(format!(
            "adding {}/{} to {TASK_INTERFACE} in {netns:?}",
            addressing.address, addressing.prefix_len
        )))?;
    set_up(handle, eth0.index, TASK_INTERFACE, None).await?;
    handle
        .route()
        .add()
        .v4()
        .gateway(addressing.gateway)
        .output_interface(eth0.index)
        .execute()
        .await
        .map_err(NetError::netlink(format!(
            "adding the default route via {} in {netns:?}",
            addressing.gateway
        )))
}
