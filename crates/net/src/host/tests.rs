//! Scenarios against the real kernel, each in namespaces of its own (see `testing`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use netlink_packet_route::link::{LinkAttribute, LinkMessage};

use super::*;
use crate::testing::{
    connect, default_gateways, ipv4_addresses, isolated, link_message, listen_in, netlink_here,
    netlink_in, random_task_id, NamespaceFiles,
};

const BRIDGE: &str = "skiffbr0";

fn config() -> BridgeConfig {
    BridgeConfig {
        name: BRIDGE.to_owned(),
        subnet: "10.66.7.0/24".parse().expect("subnet"),
        ..BridgeConfig::default()
    }
}

fn task_address(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 66, 7, host)
}

fn attribute<T>(message: &LinkMessage, pick: impl Fn(&LinkAttribute) -> Option<T>) -> Option<T> {
    message.attributes.iter().find_map(pick)
}

/// Masquerade rules in the test bridge's table of the calling thread's namespace: one
/// for the task subnet going out, one for the host's loopback connections to published
/// ports.
fn masquerade_rules() -> usize {
    crate::testing::ruleset()["nftables"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|object| object.get("rule"))
        .filter(|rule| {
            rule["family"] == "ip"
                && rule["table"] == firewall::ip_table(BRIDGE).name.as_str()
                && rule["chain"] == firewall::POSTROUTING_CHAIN
                && rule["expr"].to_string().contains("masquerade")
        })
        .count()
}

#[test]
fn attached_tasks_reach_the_host_and_each_other_until_detached() {
    let (a, b) = (random_task_id(), random_task_id());
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&a, &b]);
        let network = HostNetwork::init(config()).await.expect("init");
        let gateway = network.gateway();
        assert_eq!(gateway, task_address(1));
        let first = network
            .attach(&a, task_address(10), None)
            .await
            .expect("attach a");
        let second = network
            .attach(&b, task_address(11), None)
            .await
            .expect("attach b");
        assert_eq!(
            first,
            TaskInterface {
                task_id: a.clone(),
                netns_path: PathBuf::from(format!("/run/netns/skiff-{a}")),
                host_interface: format!("sk{}", &a[..13]),
                mac_address: "0a:58:0a:42:07:0a".to_owned(),
                address: task_address(10),
                prefix_len: 24,
                gateway,
            }
        );

        let host = netlink_here();
        let bridge = link_message(&host, BRIDGE).await.expect("bridge");
        for task in [&first, &second] {
            assert!(task.netns_path.exists());
            let inside = netlink_in(&task.netns_path);
            let eth0 = link_message(&inside, "eth0")
                .await
                .expect("eth0 in the task namespace");
            let mac = attribute(&eth0, |a| match a {
                LinkAttribute::Address(mac) => Some(names::format_mac(&mac[..].try_into().ok()?)),
                _ => None,
            });
            assert_eq!(mac.as_deref(), Some(task.mac_address.as_str()));
            assert_eq!(
                ipv4_addresses(&inside, eth0.header.index).await,
                vec![(task.address, 24)]
            );
            assert_eq!(default_gateways(&inside).await, vec![gateway]);
            let veth = link_message(&host, &task.host_interface)
                .await
                .expect("host veth");
            let controller = attribute(&veth, |a| match a {
                LinkAttribute::Controller(index) => Some(*index),
                _ => None,
            });
            assert_eq!(
                controller,
                Some(bridge.header.index),
                "host veth is on the bridge"
            );
            // lo is up: a task can talk to itself on 127.0.0.1.
            let loopback = listen_in(&task.netns_path, Ipv4Addr::LOCALHOST);
            connect(Some(&task.netns_path), loopback.local_addr().expect("addr"))
                .expect("loopback inside the task");
        }

        // Host to task: the host's source address is the gateway on the bridge.
        let listener = listen_in(&first.netns_path, first.address);
        let target: SocketAddr = listener.local_addr().expect("addr");
        connect(None, target).expect("host reaches task a");
        assert_eq!(listener.accept().expect("accept").1.ip(), gateway);
        // Task to task, through the bridge.
        connect(Some(&second.netns_path), target).expect("task b reaches task a");
        assert_eq!(listener.accept().expect("accept").1.ip(), second.address);

        assert_eq!(masquerade_rules(), 2);
        let attached = network.attached_tasks().expect("attached tasks");
        assert!(
            attached.contains(&a) && attached.contains(&b),
            "{attached:?}"
        );

        network.detach(&a).await.expect("detach a");
        assert!(!first.netns_path.exists(), "namespace file removed");
        assert!(
            link_message(&host, &first.host_interface).await.is_none(),
            "veth removed"
        );
        assert!(!network
            .attached_tasks()
            .expect("attached tasks")
            .contains(&a));
        assert!(
            connect(None, target).is_err(),
            "a detached task is unreachable"
        );
        network.detach(&a).await.expect("detaching twice is fine");

        // The other task is untouched.
        let listener = listen_in(&second.netns_path, second.address);
        connect(None, listener.local_addr().expect("addr")).expect("host reaches task b");
        network.detach(&b).await.expect("detach b");
        assert!(link_message(&host, &second.host_interface).await.is_none());
    });
}

#[test]
fn init_is_idempotent_and_repairs_the_bridge() {
    isolated(|| async {
        let first = HostNetwork::init(config()).await.expect("first init");
        let host = netlink_here();
        let bridge = link_message(&host, BRIDGE).await.expect("bridge");
        let mac = attribute(&bridge, |a| match a {
            LinkAttribute::Address(mac) => Some(mac.clone()),
            _ => None,
        });
        assert_eq!(
            mac,
            Some(vec![0x0a, 0x58, 10, 66, 7, 1]),
            "fixed bridge MAC"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read"),
            "1\n"
        );
        drop(first);

        // Drift: a stale address and another MAC address on the bridge, and the bridge down.
        host.address()
            .add(bridge.header.index, Ipv4Addr::new(192, 0, 2, 1).into(), 24)
            .execute()
            .await
            .expect("add stale address");
        host.link()
            .set(bridge.header.index)
            .down()
            .execute()
            .await
            .expect("set down");

        let second = HostNetwork::init(config()).await.expect("second init");
        let third = HostNetwork::init(config()).await.expect("third init");
        assert_eq!(second.bridge_index, bridge.header.index, "bridge reused");
        assert_eq!(third.bridge_index, bridge.header.index, "bridge reused");
        let mut addresses = ipv4_addresses(&host, bridge.header.index).await;
        addresses.sort();
        let mut expected = vec![(task_address(1), 24), (firewall::METADATA_ADDRESS, 32)];
        expected.sort();
        assert_eq!(
            addresses, expected,
            "the gateway and the metadata address only"
        );
        let refreshed = link_message(&host, BRIDGE).await.expect("bridge");
        assert!(refreshed
            .header
            .flags
            .contains(&netlink_packet_route::link::LinkFlag::Up));
        assert_eq!(
            masquerade_rules(),
            2,
            "the table is replaced, not appended to"
        );
    });
}

#[test]
fn leaving_traffic_is_masqueraded_and_unsolicited_inbound_is_dropped() {
    let task = random_task_id();
    isolated(move || async move {
        let upstream_dir = tempfile::tempdir().expect("temp dir");
        let upstream_path = upstream_dir.path().join("upstream");
        let _files = NamespaceFiles(vec![upstream_path.clone()]);
        let _task_files = NamespaceFiles::for_tasks(&[&task]);
        let network = HostNetwork::init(config()).await.expect("init");
        let attached = network
            .attach(&task, task_address(20), None)
            .await
            .expect("attach");

        // An "outside" network: a namespace behind a veth that is not the bridge.
        let (upstream_fd, connection, upstream) = netns::create(upstream_path.clone())
            .await
            .expect("upstream namespace");
        tokio::spawn(connection);
        let host = netlink_here();
        let mut request = host.link().add().veth("uplink0".into(), "eth0".into());
        // `veth(a, b)` names the peer `a`; put it in the upstream namespace.
        for attribute in &mut request.message_mut().attributes {
            if let LinkAttribute::LinkInfo(infos) = attribute {
                for info in infos {
                    if let netlink_packet_route::link::LinkInfo::Data(
                        netlink_packet_route::link::InfoData::Veth(
                            netlink_packet_route::link::InfoVeth::Peer(peer),
                        ),
                    ) = info
                    {
                        peer.attributes
                            .push(LinkAttribute::NetNsFd(upstream_fd.as_raw_fd()));
                    }
                }
            }
        }
        request.execute().await.expect("create uplink veth");
        let uplink = link::find(&host, "eth0")
            .await
            .expect("find")
            .expect("uplink host end");
        let outside_host = Ipv4Addr::new(198, 51, 100, 1);
        let outside_peer = Ipv4Addr::new(198, 51, 100, 2);
        link::ensure_only_ipv4_addresses(&host, uplink.index, "eth0", &[(outside_host, 24)])
            .await
            .expect("address uplink");
        link::set_up(&host, uplink.index, "eth0", None)
            .await
            .expect("uplink up");
        let peer = link::find(&upstream, "uplink0")
            .await
            .expect("find")
            .expect("upstream end");
        link::ensure_only_ipv4_addresses(&upstream, peer.index, "uplink0", &[(outside_peer, 24)])
            .await
            .expect("address upstream");
        link::set_up(&upstream, peer.index, "uplink0", None)
            .await
            .expect("upstream up");
        upstream
            .route()
            .add()
            .v4()
            .destination_prefix(network.subnet().network(), network.subnet().prefix_len())
            .gateway(outside_host)
            .execute()
            .await
            .expect("route to the task subnet");

        // Outbound: the outside sees the host's address, not the task's.
        let outside = listen_in(&upstream_path, outside_peer);
        connect(
            Some(&attached.netns_path),
            outside.local_addr().expect("addr"),
        )
        .expect("task reaches the outside");
        assert_eq!(outside.accept().expect("accept").1.ip(), outside_host);

        // Inbound: a connection forwarded from outside to the task is dropped.
        let listener = listen_in(&attached.netns_path, attached.address);
        let dialled = connect(Some(&upstream_path), listener.local_addr().expect("addr"));
        assert!(
            dialled.is_err(),
            "unsolicited inbound connection was let through"
        );

        network.detach(&task).await.expect("detach");
    });
}

#[test]
fn attach_rebuilds_a_half_made_attachment() {
    let task = random_task_id();
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&task]);
        let network = HostNetwork::init(config()).await.expect("init");
        // What a crash between the steps of `attach` leaves: a namespace file that is not
        // mounted, and a host veth of the task whose peer is not in it.
        let host = netlink_here();
        let host_name = names::host_interface(&task);
        host.link()
            .add()
            // The second name is the one `address` applies to.
            .veth("leftover0".into(), host_name.clone())
            .address(names::host_mac(&task).to_vec())
            .execute()
            .await
            .expect("leftover veth");
        let netns_path = PathBuf::from(format!("/run/netns/skiff-{task}"));
        std::fs::write(&netns_path, b"").expect("leave a plain namespace file");

        let again = network
            .attach(&task, task_address(31), None)
            .await
            .expect("re-attach");
        assert_eq!(again.address, task_address(31));
        assert!(
            link::find(&host, "leftover0")
                .await
                .expect("find")
                .is_none(),
            "old pair gone"
        );
        let listener = listen_in(&again.netns_path, again.address);
        connect(None, listener.local_addr().expect("addr")).expect("host reaches the task");

        // Attaching an intact attachment again rebuilds it as well.
        let third = network
            .attach(&task, task_address(32), None)
            .await
            .expect("attach again");
        let listener = listen_in(&third.netns_path, third.address);
        connect(None, listener.local_addr().expect("addr")).expect("host reaches the task");
        network.detach(&task).await.expect("detach");
    });
}

#[test]
fn another_tasks_host_interface_is_never_touched() {
    let owner = random_task_id();
    // Same first 13 digits, so the same host interface name.
    let intruder = format!("{}{}", &owner[..13], &random_task_id()[13..]);
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&owner, &intruder]);
        let network = HostNetwork::init(config()).await.expect("init");
        let owned = network
            .attach(&owner, task_address(40), None)
            .await
            .expect("attach owner");
        let refused = network.attach(&intruder, task_address(41), None).await;
        assert!(
            matches!(refused, Err(NetError::HostInterfaceTaken { .. })),
            "{refused:?}"
        );
        assert!(
            !Path::new(&format!("/run/netns/skiff-{intruder}")).exists(),
            "the failed attachment was cleaned up"
        );
        network.detach(&intruder).await.expect("detach intruder");
        let listener = listen_in(&owned.netns_path, owned.address);
        connect(None, listener.local_addr().expect("addr")).expect("owner still reachable");
        network.detach(&owner).await.expect("detach owner");
    });
}

#[test]
fn invalid_requests_are_rejected_before_touching_anything() {
    isolated(|| async {
        let bad_name = BridgeConfig {
            name: "this-name-is-too-long".to_owned(),
            ..config()
        };
        assert!(matches!(
            HostNetwork::init(bad_name).await,
            Err(NetError::InvalidBridgeName { .. })
        ));
        let tiny = BridgeConfig {
            subnet: "10.66.7.0/31".parse().expect("subnet"),
            ..config()
        };
        assert!(matches!(
            HostNetwork::init(tiny).await,
            Err(NetError::SubnetTooSmall { .. })
        ));

        let host = netlink_here();
        host.link()
            .add()
            .veth("notabridge".into(), "notabridge1".into())
            .execute()
            .await
            .expect("veth");
        let clash = BridgeConfig {
            name: "notabridge".to_owned(),
            ..config()
        };
        assert!(matches!(
            HostNetwork::init(clash).await,
            Err(NetError::NotABridge { ref kind, .. }) if kind == "veth"
        ));

        let network = HostNetwork::init(config()).await.expect("init");
        let task = random_task_id();
        for (task_id, address) in [
            ("not-a-task-id", task_address(50)),
            (task.as_str(), Ipv4Addr::new(10, 66, 8, 1)),
            (task.as_str(), task_address(0)),
            (task.as_str(), task_address(1)),
            (task.as_str(), task_address(255)),
        ] {
            let result = network.attach(task_id, address, None).await;
            assert!(
                matches!(
                    result,
                    Err(NetError::InvalidTaskId { .. }
                        | NetError::AddressOutsideSubnet { .. }
                        | NetError::ReservedAddress { .. })
                ),
                "{task_id} {address}: {result:?}"
            );
        }
        assert!(!network.attached_tasks().expect("list").contains(&task));
        assert!(matches!(
            network.detach("../etc").await,
            Err(NetError::InvalidTaskId { .. })
        ));
    });
}

#[test]
fn a_failed_attach_leaves_nothing_behind() {
    let task = random_task_id();
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&task]);
        let network = HostNetwork::init(config()).await.expect("init");
        let host = netlink_here();
        let bridge = link::find(&host, BRIDGE)
            .await
            .expect("find")
            .expect("bridge");
        host.link()
            .del(bridge.index)
            .execute()
            .await
            .expect("delete the bridge");

        let result = network.attach(&task, task_address(60), None).await;
        assert!(
            matches!(result, Err(NetError::Netlink { .. })),
            "{result:?}"
        );
        let host_name = names::host_interface(&task);
        assert!(
            link::find(&host, &host_name).await.expect("find").is_none(),
            "veth left"
        );
        assert!(
            !network.attached_tasks().expect("list").contains(&task),
            "netns left"
        );
    });
}
