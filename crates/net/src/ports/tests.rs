//! Published ports against the real kernel, each scenario in namespaces of its own (see
//! `testing`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use model::agent::{PortBinding, Protocol};

use crate::testing::{connect, in_netns, isolated, random_task_id, ruleset, NamespaceFiles};
use crate::{BridgeConfig, HostNetwork, TaskInterface};

fn config(bridge: &str) -> BridgeConfig {
    BridgeConfig {
        name: bridge.to_owned(),
        subnet: "10.66.9.0/24".parse().expect("subnet"),
        ..BridgeConfig::default()
    }
}

fn tcp(container_port: u16, host_port: u16) -> PortBinding {
    PortBinding {
        container_name: "app".to_owned(),
        container_port,
        host_port,
        protocol: Protocol::Tcp,
    }
}

/// A listener on the task's `port`, inside its namespace.
fn serve(task: &TaskInterface, port: u16) -> TcpListener {
    let address = task.address;
    in_netns(&task.netns_path, move || {
        TcpListener::bind((address, port)).expect("bind in the task")
    })
}

/// Connects to `target` from the host, has the task's `listener` answer, and returns the
/// peer address the task saw.
fn round_trip(target: SocketAddr, listener: &TcpListener) -> Ipv4Addr {
    let mut client = connect(None, target).unwrap_or_else(|e| panic!("connect {target}: {e}"));
    let (mut server, peer) = listener.accept().expect("accept");
    server.write_all(b"hello").expect("write");
    let mut answer = [0u8; 5];
    client.read_exact(&mut answer).expect("read");
    assert_eq!(&answer, b"hello");
    match peer.ip() {
        std::net::IpAddr::V4(peer) => peer,
        other => panic!("IPv6 peer {other}"),
    }
}

/// Whether the ruleset names the task's DNAT chain anywhere: the chain or map elements.
fn published(task_id: &str) -> bool {
    ruleset()
        .to_string()
        .contains(&format!("publish_{task_id}"))
}

#[test]
fn published_ports_reach_the_task_from_loopback_and_host_addresses_until_detached() {
    let (task_id, peer_id) = (random_task_id(), random_task_id());
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&task_id, &peer_id]);
        let lo = crate::testing::netlink_here();
        let loopback = crate::link::find(&lo, "lo")
            .await
            .expect("find")
            .expect("lo");
        crate::link::set_up(&lo, loopback.index, "lo", None)
            .await
            .expect("lo up");
        let network = HostNetwork::init(config("skiffpt0")).await.expect("init");
        let gateway = network.gateway();
        let task = network
            .attach(&task_id, Ipv4Addr::new(10, 66, 9, 10), None)
            .await
            .expect("attach");
        let web = serve(&task, 80);
        let admin = serve(&task, 81);
        network
            .publish(&task_id, task.address, &[tcp(80, 18080), tcp(81, 18081)])
            .await
            .expect("publish");
        // Publishing again is idempotent, and drops what the new list leaves out.
        network
            .publish(&task_id, task.address, &[tcp(80, 18080)])
            .await
            .expect("publish again");

        let from_loopback = round_trip(SocketAddr::from((Ipv4Addr::LOCALHOST, 18080)), &web);
        assert_eq!(from_loopback, gateway, "loopback sources are masqueraded");
        let from_gateway = round_trip(SocketAddr::from((gateway, 18080)), &web);
        assert_eq!(from_gateway, gateway);
        assert!(
            connect(None, SocketAddr::from((Ipv4Addr::LOCALHOST, 18081))).is_err(),
            "18081 was unpublished"
        );
        drop(admin);
        // Another task reaches the published port on the gateway.
        let other = network
            .attach(&peer_id, Ipv4Addr::new(10, 66, 9, 20), None)
            .await
            .expect("attach peer");
        let target = SocketAddr::from((gateway, 18080));
        let mut client = connect(Some(&other.netns_path), target).expect("peer connects");
        let (mut server, peer) = web.accept().expect("accept");
        assert_eq!(peer.ip(), other.address);
        server.write_all(b"hi").expect("write");
        let mut answer = [0u8; 2];
        client
            .read_exact(&mut answer)
            .expect("the reply comes back through the DNAT");
        network.detach(&peer_id).await.expect("detach peer");

        // An agent restart finds the published ports; detach removes them.
        drop(network);
        let network = HostNetwork::init(config("skiffpt0"))
            .await
            .expect("restart");
        assert!(published(&task_id), "a restart keeps running tasks' ports");
        round_trip(SocketAddr::from((Ipv4Addr::LOCALHOST, 18080)), &web);
        network.detach(&task_id).await.expect("detach");
        assert!(!published(&task_id), "detach left DNAT rules behind");
        assert!(connect(None, SocketAddr::from((Ipv4Addr::LOCALHOST, 18080))).is_err());
        network
            .detach(&task_id)
            .await
            .expect("detach is idempotent");
    });
}

#[test]
fn a_restart_removes_the_ports_of_tasks_whose_interface_is_gone() {
    let task_id = random_task_id();
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&task_id]);
        let network = HostNetwork::init(config("skiffpt1")).await.expect("init");
        let task = network
            .attach(&task_id, Ipv4Addr::new(10, 66, 9, 11), None)
            .await
            .expect("attach");
        network
            .publish(&task_id, task.address, &[tcp(53, 15353)])
            .await
            .expect("publish");
        drop(network);
        let host = crate::testing::netlink_here();
        let veth = crate::link::find(&host, &task.host_interface)
            .await
            .expect("find")
            .expect("veth");
        crate::link::delete(&host, veth.index, &task.host_interface)
            .await
            .expect("delete veth");
        assert!(published(&task_id));
        let _network = HostNetwork::init(config("skiffpt1"))
            .await
            .expect("restart");
        assert!(!published(&task_id), "reconcile left DNAT rules behind");
    });
}
