//! The task resolver: a DNS server on the bridge gateway, port 53 (UDP and TCP), which
//! every task's `/etc/resolv.conf` names.
//!
//! ```text
//!  task netns                                  host (agent)
//!  resolv.conf: nameserver <gateway>            socket bound to <gateway>:53
//!               search <cluster>.local           |
//!  wget http://web/                              v
//!   -> web.<cluster>.local A?  ---------->  Catalog: longest zone that holds the name
//!                                            |- local.  ServiceNames: the control plane's
//!                                            |          table, authoritative
//!                                            '- .       ForwardAuthority: the host's
//!                                                       name servers, cached
//! ```
//!
//! `local.` answers from the table [`ServiceNames`] holds: `<service>.<cluster>.local`
//! to the addresses of the service's running tasks that are not UNHEALTHY, replaced
//! whole by every `ToAgent::Names`. A name in the table has A records (all of them,
//! rotated per query) and no others: its AAAA is an empty NOERROR, so clients that ask
//! both go on with the IPv4 answer. Any other name under `local.` is NXDOMAIN, except
//! the labels above a service name (`<cluster>.local`), which exist without records.
//! Negative answers carry the zone's SOA, whose minimum is the same short TTL.
//!
//! Every other query is forwarded to the host's name servers, read from the host's
//! `/etc/resolv.conf` when the agent starts. The agent runs on the host, so a loopback
//! server such as systemd-resolved's `127.0.0.53` works from it, where it would not from
//! inside a task. The firewall lets tasks reach the gateway's port 53
//! (`net::default_host_services`); nothing else of the host answers them there.
//!
//! The server is started on every agent start, like the metadata endpoint: tasks that
//! outlive an agent keep their `resolv.conf`, and the control plane sends the table
//! again after the new agent's `Hello`.

mod names;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::authority::{AuthorityObject, Catalog};
use hickory_server::proto::rr::{LowerName, Name};
use hickory_server::resolver::config::NameServerConfigGroup;
use hickory_server::resolver::system_conf::parse_resolv_conf;
use hickory_server::store::forwarder::{ForwardAuthority, ForwardConfig};
use hickory_server::ServerFuture;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};

pub(crate) use names::ServiceNames;

/// The resolver's port, as tasks dial it on the gateway.
const DNS_PORT: u16 = 53;
/// The zone of service names.
const ZONE: &str = "local.";
/// A TCP connection idle for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the host's resolver configuration is.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(
        "cannot listen on {address} ({transport}) for the task resolver: stop whatever holds \
         port {DNS_PORT} on all addresses, or make it listen on its own addresses only \
         (dnsmasq's bind-interfaces, for example)"
    )]
    Listen {
        address: SocketAddr,
        transport: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot forward queries to the host's name servers ({reason}): check {HOST_RESOLV_CONF}"
    )]
    Upstream { reason: String },
}

/// The search domain of a cluster's service names: `<cluster>.local`, lower case.
pub(crate) fn search_domain(cluster: &str) -> String {
    format!(
        "{}.{}",
        cluster.to_ascii_lowercase(),
        ZONE.trim_end_matches('.')
    )
}

/// Serves the resolver on `gateway:53` until the process ends, forwarding to the name
/// servers of the host's `/etc/resolv.conf`.
pub(crate) async fn start(gateway: Ipv4Addr, names: Arc<ServiceNames>) -> Result<(), DnsError> {
    let address = SocketAddr::V4(SocketAddrV4::new(gateway, DNS_PORT));
    let udp = UdpSocket::bind(address)
        .await
        .map_err(|source| DnsError::Listen {
            address,
            transport: "udp",
            source,
        })?;
    let tcp = listen_tcp(address).map_err(|source| DnsError::Listen {
        address,
        transport: "tcp",
        source,
    })?;
    let resolv_conf = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
    let upstream = host_upstream(&resolv_conf, gateway.into());
    // Each server is listed once per transport, side by side.
    let mut upstreams: Vec<SocketAddr> = upstream
        .name_servers
        .iter()
        .map(|server| server.socket_addr)
        .collect();
    upstreams.dedup();
    if upstreams.is_empty() {
        tracing::warn!(
            path = HOST_RESOLV_CONF,
            "no name servers for the task resolver to forward to: tasks can resolve only service names"
        );
    }
    tracing::info!(%address, ?upstreams, "task resolver listening");
    let mut server = serve(udp, tcp, names, upstream)?;
    tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            tracing::error!(%address, error = %e, "the task resolver stopped");
        }
    });
    Ok(())
}

/// A listening TCP socket that a restarted agent can bind again at once.
fn listen_tcp(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(1024)
}

/// Answers queries on the given sockets: `local.` from `names`, the rest through
/// `upstream`. Dropping the returned server closes the sockets.
pub(crate) fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    names: Arc<ServiceNames>,
    upstream: ForwardConfig,
) -> Result<ServerFuture<Catalog>, DnsError> {
    let forwarder = ForwardAuthority::builder_tokio(upstream)
        .build()
        .map_err(|reason| DnsError::Upstream { reason })?;
    let mut catalog = Catalog::new();
    catalog.upsert(
        LowerName::from(Name::root()),
        vec![Arc::new(forwarder) as Arc<dyn AuthorityObject>],
    );
    catalog.upsert(names.origin().clone(), vec![names]);
    let mut server = ServerFuture::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE_TIMEOUT);
    Ok(server)
}

/// The name servers and options of a host's `resolv.conf`, less `own` (the resolver
/// itself, which must not forward to itself). A negative answer from one server is
/// final, as for the host's own lookups.
fn host_upstream(resolv_conf: &str, own: IpAddr) -> ForwardConfig {
    let Ok((config, options)) = parse_resolv_conf(resolv_conf) else {
        return ForwardConfig {
            name_servers: NameServerConfigGroup::new(),
            options: None,
        };
    };
    let name_servers: Vec<_> = config
        .name_servers()
        .iter()
        .filter(|server| server.socket_addr.ip() != own)
        .cloned()
        .map(|mut server| {
            server.trust_negative_responses = true;
            server
        })
        .collect();
    ForwardConfig {
        name_servers: name_servers.into(),
        options: Some(options),
    }
}

#[cfg(test)]
mod tests;
