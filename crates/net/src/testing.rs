//! Test harness: every scenario runs in network and mount namespaces of its own.
//!
//! `isolated` runs a scenario on a fresh thread that first unshares its network namespace
//! (so bridges, veths, nftables tables and sysctls it creates never touch the machine's)
//! and its mount namespace with `/` made a slave (so the namespace bind mounts it makes
//! never appear outside). When the thread exits both namespaces die, taking the task
//! namespaces mounted in them and every interface with them. What outlives the thread is
//! files: namespace files under the shared `/run/netns`, removed by `NamespaceFiles` even
//! when the scenario panics.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::AddressFamily;
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::netns;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `scenario` on a current-thread runtime, on a thread in private network and mount
/// namespaces; a panic in the scenario fails the calling test.
pub(crate) fn isolated<F, Fut>(scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).expect("unshare net+mnt");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .expect("make / a recursive slave");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(scenario());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// A random task id: tests share `/run/netns` with each other and the machine.
pub(crate) fn random_task_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Removes the listed namespace files (unmounting them first) when dropped.
pub(crate) struct NamespaceFiles(pub Vec<PathBuf>);

impl NamespaceFiles {
    pub(crate) fn for_tasks(task_ids: &[&str]) -> Self {
        Self(
            task_ids
                .iter()
                .map(|id| Path::new(netns::NETNS_RUN_DIR).join(format!("skiff-{id}")))
                .collect(),
        )
    }
}

impl Drop for NamespaceFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            if let Err(error) = netns::remove(path) {
                eprintln!("cannot clean up {}: {error}", path.display());
            }
        }
    }
}

/// Runs `work` on a thread that has entered the named network namespace `path`.
/// Sockets it creates stay in that namespace.
pub(crate) fn in_netns<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let file = std::fs::File::open(path).expect("open netns file");
    std::thread::spawn(move || {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
        work()
    })
    .join()
    .expect("netns thread")
}

/// A netlink handle inside the named namespace `path`; its connection runs on the
/// current runtime.
pub(crate) fn netlink_in(path: &Path) -> rtnetlink::Handle {
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle, _) = in_netns(path, move || {
        let _reactor = runtime.enter();
        rtnetlink::new_connection().expect("netlink connection")
    });
    tokio::spawn(connection);
    handle
}

/// A netlink handle in the calling thread's namespace.
pub(crate) fn netlink_here() -> rtnetlink::Handle {
    let (connection, handle, _) = rtnetlink::new_connection().expect("netlink connection");
    tokio::spawn(connection);
    handle
}

/// IPv4 addresses of link `index` as (address, prefix length).
pub(crate) async fn ipv4_addresses(handle: &rtnetlink::Handle, index: u32) -> Vec<(Ipv4Addr, u8)> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .expect("list addresses");
    messages
        .into_iter()
        .filter(|message| {
            message.header.family == AddressFamily::Inet && message.header.index == index
        })
        .filter_map(|message| {
            let prefix_len = message.header.prefix_len;
            message
                .attributes
                .into_iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Local(std::net::IpAddr::V4(address)) => {
                        Some((address, prefix_len))
                    }
                    _ => None,
                })
        })
        .collect()
}

/// Gateways of the IPv4 default routes in the main table.
pub(crate) async fn default_gateways(handle: &rtnetlink::Handle) -> Vec<Ipv4Addr> {
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(rtnetlink::IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .expect("list routes");
    routes
        .into_iter()
        .filter(|route| route.header.destination_prefix_length == 0)
        .filter_map(|route| {
            route
                .attributes
                .into_iter()
                .find_map(|attribute| match attribute {
                    RouteAttribute::Gateway(RouteAddress::Inet(gateway)) => Some(gateway),
                    _ => None,
                })
        })
        .collect()
}

/// Connects to `target` from a socket created in the namespace `from` (or here). The
/// timeout outlasts one SYN retransmission, so a loaded machine does not fail the test;
/// the latency example measures how fast it really is.
pub(crate) fn connect(from: Option<&Path>, target: SocketAddr) -> std::io::Result<TcpStream> {
    let dial = move || TcpStream::connect_timeout(&target, CONNECT_TIMEOUT);
    match from {
        Some(path) => in_netns(path, dial),
        None => dial(),
    }
}

/// A TCP listener on `address`, port chosen by the kernel, in the namespace `path`.
pub(crate) fn listen_in(path: &Path, address: Ipv4Addr) -> TcpListener {
    in_netns(path, move || {
        TcpListener::bind((address, 0)).expect("bind listener")
    })
}

/// The raw link message of `name`, if it exists.
pub(crate) async fn link_message(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Option<netlink_packet_route::link::LinkMessage> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(message) => message,
        Err(error) if crate::error::netlink_errno(&error) == Some(nix::errno::Errno::ENODEV) => {
            None
        }
        Err(error) => panic!("looking up {name}: {error}"),
    }
}

/// The calling thread's namespace's whole nftables ruleset, as nft's JSON.
pub(crate) fn ruleset() -> serde_json::Value {
    let text = nftables::helper::get_current_ruleset_raw(
        nftables::helper::DEFAULT_NFT,
        ["-j", "list", "ruleset"],
    )
    .expect("nft list ruleset");
    serde_json::from_str(&text).expect("nft JSON")
}
