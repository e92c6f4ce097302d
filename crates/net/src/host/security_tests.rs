//! Security groups, anti-spoofing and host protection against real traffic, each scenario
//! in namespaces of its own (see `testing`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use model::agent::{Protocol, SecurityPolicy, SecurityRule};

use super::*;
use crate::testing::{
    connect, in_netns, isolated, listen_in, netlink_here, netlink_in, random_task_id, ruleset,
    NamespaceFiles,
};

/// How long a datagram that should arrive may take.
const UDP_WAIT: Duration = Duration::from_millis(1500);

fn config(bridge: &str) -> BridgeConfig {
    BridgeConfig {
        name: bridge.to_owned(),
        subnet: "10.66.7.0/24".parse().expect("subnet"),
        ..BridgeConfig::default()
    }
}

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 66, 7, host)
}

fn net(text: &str) -> Ipv4Net {
    text.parse().expect("network")
}

fn rule(protocol: Protocol, ports: Option<(u16, u16)>, sources: &[&str]) -> SecurityRule {
    SecurityRule {
        protocol,
        ports,
        sources: sources.iter().map(|source| net(source)).collect(),
        groups: vec![],
    }
}

fn tcp_listener(task: &TaskInterface, port: u16) -> TcpListener {
    let address = task.address;
    in_netns(&task.netns_path, move || {
        TcpListener::bind((address, port)).expect("bind tcp")
    })
}

fn udp_listener(task: &TaskInterface, port: u16) -> UdpSocket {
    let address = task.address;
    in_netns(&task.netns_path, move || {
        let socket = UdpSocket::bind((address, port)).expect("bind udp");
        socket.set_read_timeout(Some(UDP_WAIT)).expect("timeout");
        socket
    })
}

fn tcp_reaches(from: Option<&Path>, target: SocketAddr) -> bool {
    connect(from, target).is_ok()
}

/// Sends a few datagrams from `source` (an address of the namespace `from`) and reports
/// whether `listener` got one.
fn udp_reaches(from: &Path, source: Ipv4Addr, listener: &UdpSocket) -> bool {
    let target = listener.local_addr().expect("addr");
    in_netns(from, move || {
        let socket = UdpSocket::bind((source, 0)).expect("bind sender");
        for _ in 0..3 {
            // A send may fail while ARP resolves; the datagrams after it then go out.
            let _ = socket.send_to(b"ping", target);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut buffer = [0u8; 16];
    let received = listener.recv_from(&mut buffer).is_ok();
    // Drain the other copies so the next check starts clean.
    listener.set_nonblocking(true).expect("nonblocking");
    while listener.recv_from(&mut buffer).is_ok() {}
    listener.set_nonblocking(false).expect("blocking");
    received
}

/// Whether the ruleset still names the task anywhere: chains, sets, map elements.
fn ruleset_mentions(task_id: &str) -> bool {
    ruleset().to_string().contains(task_id)
}

#[test]
fn security_groups_allow_only_what_their_rules_say() {
    let (a, b, c) = (random_task_id(), random_task_id(), random_task_id());
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&a, &b, &c]);
        let network = HostNetwork::init(config("skiffsg1")).await.expect("init");
        // A: a web server. Its group lets its own members (A, B) in on 8000-8010, a CIDR
        // holding C in on udp/5353; it may only send udp/5353 to C.
        let web = SecurityPolicy {
            ingress: vec![
                rule(
                    Protocol::Tcp,
                    Some((8000, 8010)),
                    &["10.66.7.10/32", "10.66.7.11/32"],
                ),
                rule(Protocol::Udp, Some((5353, 5353)), &["10.66.7.12/30"]),
            ],
            egress: vec![rule(Protocol::Udp, Some((5353, 5353)), &["10.66.7.12/32"])],
        };
        let task_a = network
            .attach(&a, ip(10), Some(&web))
            .await
            .expect("attach a");
        // B: no policy, the bridge's defaults.
        let task_b = network.attach(&b, ip(11), None).await.expect("attach b");
        // C: everything in from the subnet; out, any TCP and udp/5353 to A.
        let open = SecurityPolicy {
            ingress: vec![rule(Protocol::All, None, &["10.66.7.0/24"])],
            egress: vec![
                rule(Protocol::Tcp, None, &["0.0.0.0/0"]),
                rule(Protocol::Udp, Some((5353, 5353)), &["10.66.7.10/32"]),
            ],
        };
        let task_c = network
            .attach(&c, ip(12), Some(&open))
            .await
            .expect("attach c");

        let in_range = tcp_listener(&task_a, 8005);
        let out_of_range = tcp_listener(&task_a, 8011);
        let target = in_range.local_addr().expect("addr");
        assert!(
            tcp_reaches(Some(&task_b.netns_path), target),
            "member B in range"
        );
        // The reply leaves A although A's egress allows no TCP: connections are stateful.
        assert!(
            !tcp_reaches(
                Some(&task_b.netns_path),
                out_of_range.local_addr().expect("addr")
            ),
            "port outside the range"
        );
        assert!(
            !tcp_reaches(Some(&task_c.netns_path), target),
            "C is not a member"
        );

        let a_udp = udp_listener(&task_a, 5353);
        assert!(
            udp_reaches(&task_c.netns_path, task_c.address, &a_udp),
            "C is in the CIDR"
        );
        assert!(
            !udp_reaches(&task_b.netns_path, task_b.address, &a_udp),
            "B is not"
        );

        // A's egress: udp/5353 to C only, nothing to B, no TCP at all.
        let c_udp = udp_listener(&task_c, 5353);
        let b_udp = udp_listener(&task_b, 5353);
        assert!(
            udp_reaches(&task_a.netns_path, task_a.address, &c_udp),
            "A to C allowed"
        );
        assert!(
            !udp_reaches(&task_a.netns_path, task_a.address, &b_udp),
            "A to B not"
        );
        let c_tcp = listen_in(&task_c.netns_path, task_c.address);
        assert!(
            !tcp_reaches(Some(&task_a.netns_path), c_tcp.local_addr().expect("addr")),
            "A may not open TCP connections"
        );

        // Protocol all: C takes TCP and UDP from B; B (defaults) takes them from C...
        assert!(tcp_reaches(
            Some(&task_b.netns_path),
            c_tcp.local_addr().expect("addr")
        ));
        assert!(udp_reaches(&task_b.netns_path, task_b.address, &c_udp));
        let b_tcp = listen_in(&task_b.netns_path, task_b.address);
        assert!(tcp_reaches(
            Some(&task_c.netns_path),
            b_tcp.local_addr().expect("addr")
        ));
        // ...but C sends UDP to A only.
        assert!(!udp_reaches(&task_c.netns_path, task_c.address, &b_udp));
        // The host reaches every task whatever its rules.
        assert!(tcp_reaches(None, out_of_range.local_addr().expect("addr")));

        for task in [&a, &b, &c] {
            network.detach(task).await.expect("detach");
        }
    });
}

#[test]
fn rule_and_member_changes_apply_to_running_tasks_at_once() {
    let (a, c) = (random_task_id(), random_task_id());
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&a, &c]);
        let network = HostNetwork::init(config("skiffsg2")).await.expect("init");
        let group = "sg-0a1b2c3d4e5f6".to_owned();
        let from_group = SecurityPolicy {
            ingress: vec![SecurityRule {
                groups: vec![group.clone()],
                ..rule(Protocol::Tcp, Some((8000, 8000)), &[])
            }],
            egress: vec![rule(Protocol::All, None, &["0.0.0.0/0"])],
        };
        let members =
            |addresses: &[Ipv4Addr]| BTreeMap::from([(group.clone(), addresses.to_vec())]);
        let policies = |policy: &SecurityPolicy| BTreeMap::from([(a.clone(), policy.clone())]);
        let task_a = network
            .attach(&a, ip(10), Some(&from_group))
            .await
            .expect("attach a");
        let task_c = network.attach(&c, ip(12), None).await.expect("attach c");
        let listener = tcp_listener(&task_a, 8000);
        let target = listener.local_addr().expect("addr");
        assert!(
            !tcp_reaches(Some(&task_c.netns_path), target),
            "the set starts empty"
        );

        // C joins the group: only the set changes, A's rules stay as they are.
        let rebuilt = network
            .update_security(Some(&members(&[ip(10), ip(12)])), &BTreeMap::new(), 1)
            .await
            .expect("update");
        assert!(rebuilt.is_empty());
        assert!(tcp_reaches(Some(&task_c.netns_path), target), "C joined");
        // A connection open when C leaves stays up; new ones are refused.
        let open = connect(Some(&task_c.netns_path), target).expect("connect");
        network
            .update_security(Some(&members(&[ip(10)])), &BTreeMap::new(), 2)
            .await
            .expect("update");
        assert!(!tcp_reaches(Some(&task_c.netns_path), target), "C left");
        drop(open);

        // A rule naming C's address: A's chains rebuilt.
        let mut wider = from_group.clone();
        wider
            .ingress
            .push(rule(Protocol::All, None, &["10.66.7.12/32"]));
        let rebuilt = network
            .update_security(None, &policies(&wider), 3)
            .await
            .expect("update");
        assert_eq!(rebuilt, std::slice::from_ref(&a));
        assert!(tcp_reaches(Some(&task_c.netns_path), target), "rule added");
        // An update older than what A holds changes nothing.
        let rebuilt = network
            .update_security(None, &policies(&SecurityPolicy::default()), 2)
            .await
            .expect("update");
        assert!(rebuilt.is_empty(), "version 2 after version 3");
        assert!(
            tcp_reaches(Some(&task_c.netns_path), target),
            "still allowed"
        );
        network
            .update_security(
                Some(&BTreeMap::new()),
                &policies(&SecurityPolicy::default()),
                4,
            )
            .await
            .expect("update");
        assert!(
            !tcp_reaches(Some(&task_c.netns_path), target),
            "no rules, no traffic"
        );
        let objects = ruleset()["nftables"].as_array().expect("objects").clone();
        let rules: Vec<String> = objects
            .iter()
            .filter(|object| object["rule"]["chain"] == format!("in_{a}").as_str())
            .map(|object| object["rule"]["expr"].to_string())
            .collect();
        assert_eq!(
            rules,
            [r#"[{"drop":null}]"#],
            "an empty policy drops everything"
        );
        assert!(
            !objects
                .iter()
                .any(|object| object["set"]["name"] == group.as_str()),
            "the set of a group no policy names is deleted"
        );
        // A task not attached here is skipped, not an error.
        let missing = random_task_id();
        let rebuilt = network
            .update_security(
                None,
                &BTreeMap::from([(missing, SecurityPolicy::default())]),
                5,
            )
            .await
            .expect("update");
        assert!(rebuilt.is_empty());

        // Timing, for the report: membership flips, one element each.
        network
            .update_security(Some(&members(&[ip(10)])), &policies(&from_group), 6)
            .await
            .expect("update");
        let mut samples = Vec::new();
        for round in 0..100u64 {
            let addresses = if round % 2 == 0 {
                vec![ip(10), ip(12)]
            } else {
                vec![ip(10)]
            };
            let started = Instant::now();
            network
                .update_security(Some(&members(&addresses)), &BTreeMap::new(), 7 + round)
                .await
                .expect("update");
            samples.push(started.elapsed());
        }
        samples.sort_unstable();
        println!("member update p50 {:?} p99 {:?}", samples[50], samples[98]);

        assert!(matches!(
            network
                .update_security(
                    None,
                    &policies(&SecurityPolicy {
                        ingress: vec![rule(Protocol::Tcp, Some((90, 80)), &[])],
                        egress: vec![],
                    }),
                    200
                )
                .await,
            Err(NetError::InvalidPortRange { low: 90, high: 80 })
        ));
        assert!(matches!(
            network
                .update_security(
                    Some(&BTreeMap::from([("x; flush ruleset".to_owned(), vec![])])),
                    &BTreeMap::new(),
                    201
                )
                .await,
            Err(NetError::InvalidGroupId { .. })
        ));
        for task in [&a, &c] {
            network.detach(task).await.expect("detach");
        }
    });
}

#[test]
fn tasks_cannot_forge_their_address_or_mac() {
    let (a, c) = (random_task_id(), random_task_id());
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&a, &c]);
        let network = HostNetwork::init(config("skiffsg3")).await.expect("init");
        let task_a = network.attach(&a, ip(10), None).await.expect("attach a");
        let task_c = network.attach(&c, ip(12), None).await.expect("attach c");
        let listener = udp_listener(&task_a, 7000);
        assert!(
            udp_reaches(&task_c.netns_path, task_c.address, &listener),
            "control"
        );

        // Another source address inside C's namespace, as a compromised task would add.
        let inside = netlink_in(&task_c.netns_path);
        let eth0 = link::find(&inside, "eth0")
            .await
            .expect("find")
            .expect("eth0");
        let forged = ip(99);
        inside
            .address()
            .add(eth0.index, forged.into(), 24)
            .execute()
            .await
            .expect("add a forged address");
        assert!(
            !udp_reaches(&task_c.netns_path, forged, &listener),
            "a forged source address got through"
        );
        assert!(
            udp_reaches(&task_c.netns_path, task_c.address, &listener),
            "real one still works"
        );

        // Another MAC address on C's eth0.
        inside
            .link()
            .set(eth0.index)
            .address(vec![0x0a, 0x58, 10, 66, 7, 99])
            .execute()
            .await
            .expect("change the MAC");
        assert!(
            !udp_reaches(&task_c.netns_path, task_c.address, &listener),
            "a forged MAC address got through"
        );
        for task in [&a, &c] {
            network.detach(task).await.expect("detach");
        }
    });
}

#[test]
fn tasks_reach_only_the_host_services_skiff_exposes() {
    let task = random_task_id();
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&task]);
        let network = HostNetwork::init(config("skiffsg4")).await.expect("init");
        let attached = network.attach(&task, ip(10), None).await.expect("attach");
        let host = netlink_here();
        let lo = link::find(&host, "lo").await.expect("find").expect("lo");
        link::set_up(&host, lo.index, "lo", None)
            .await
            .expect("lo up");
        for address in [firewall::METADATA_ADDRESS, Ipv4Addr::new(192, 0, 2, 1)] {
            host.address()
                .add(lo.index, address.into(), 32)
                .execute()
                .await
                .expect("host address");
        }
        let gateway = network.gateway();
        let from = Some(attached.netns_path.as_path());

        let resolver = TcpListener::bind((gateway, 53)).expect("bind 53");
        assert!(
            tcp_reaches(from, resolver.local_addr().expect("addr")),
            "DNS over TCP"
        );
        let metadata = TcpListener::bind((firewall::METADATA_ADDRESS, 80)).expect("bind 80");
        assert!(
            tcp_reaches(from, metadata.local_addr().expect("addr")),
            "metadata"
        );
        let dns = UdpSocket::bind((gateway, 53)).expect("bind udp 53");
        dns.set_read_timeout(Some(UDP_WAIT)).expect("timeout");
        assert!(
            udp_reaches(&attached.netns_path, attached.address, &dns),
            "DNS over UDP"
        );

        let private = TcpListener::bind((gateway, 0)).expect("bind");
        assert!(
            !tcp_reaches(from, private.local_addr().expect("addr")),
            "other port"
        );
        let elsewhere = TcpListener::bind((Ipv4Addr::new(192, 0, 2, 1), 53)).expect("bind");
        assert!(
            !tcp_reaches(from, elsewhere.local_addr().expect("addr")),
            "other address"
        );
        let wildcard = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        let port = wildcard.local_addr().expect("addr").port();
        assert!(
            !tcp_reaches(from, SocketAddr::from((gateway, port))),
            "wildcard listener"
        );
        // The host still talks to the task, and the task's replies come back.
        let inside = listen_in(&attached.netns_path, attached.address);
        assert!(tcp_reaches(None, inside.local_addr().expect("addr")));
        network.detach(&task).await.expect("detach");
    });
}

#[test]
fn detach_and_restart_leave_no_rules_of_gone_tasks() {
    let (kept, vanished, detached) = (random_task_id(), random_task_id(), random_task_id());
    isolated(move || async move {
        let _files = NamespaceFiles::for_tasks(&[&kept, &vanished, &detached]);
        let network = HostNetwork::init(config("skiffsg5")).await.expect("init");
        let closed = SecurityPolicy {
            ingress: vec![rule(Protocol::Tcp, Some((22, 22)), &["10.66.7.0/24"])],
            egress: vec![rule(Protocol::All, None, &["0.0.0.0/0"])],
        };
        let task_kept = network
            .attach(&kept, ip(10), Some(&closed))
            .await
            .expect("attach");
        let task_gone = network
            .attach(&vanished, ip(11), Some(&closed))
            .await
            .expect("attach");
        network
            .attach(&detached, ip(12), Some(&closed))
            .await
            .expect("attach");
        network.detach(&detached).await.expect("detach");
        assert!(!ruleset_mentions(&detached), "detach left rules behind");

        // The agent dies; one task's interface vanishes meanwhile.
        drop(network);
        let host = netlink_here();
        let veth = link::find(&host, &task_gone.host_interface)
            .await
            .expect("find")
            .expect("veth");
        link::delete(&host, veth.index, &task_gone.host_interface)
            .await
            .expect("delete veth");
        assert!(ruleset_mentions(&vanished));

        let network = HostNetwork::init(config("skiffsg5"))
            .await
            .expect("restart");
        assert!(!ruleset_mentions(&vanished), "reconcile left rules behind");
        assert!(
            ruleset_mentions(&kept),
            "a running task's rules were removed"
        );
        // The running task's rules are still in force, and manageable after the restart.
        let listener = listen_in(&task_kept.netns_path, task_kept.address);
        let probe = network
            .attach(&vanished, ip(11), None)
            .await
            .expect("re-attach");
        assert!(!tcp_reaches(
            Some(&probe.netns_path),
            listener.local_addr().expect("addr")
        ));
        let open = SecurityPolicy {
            ingress: vec![rule(Protocol::All, None, &["10.66.7.0/24"])],
            ..closed
        };
        let rebuilt = network
            .update_security(None, &BTreeMap::from([(kept.clone(), open)]), 1)
            .await
            .expect("update after restart");
        assert_eq!(rebuilt, std::slice::from_ref(&kept));
        assert!(tcp_reaches(
            Some(&probe.netns_path),
            listener.local_addr().expect("addr")
        ));
        for task in [&kept, &vanished] {
            network.detach(task).await.expect("detach");
            assert!(!ruleset_mentions(task));
        }
        assert_eq!(
            ruleset()["nftables"]
                .as_array()
                .expect("objects")
                .iter()
                .filter_map(|object| object.get("chain"))
                .count(),
            6,
            "only the base chains are left"
        );
    });
}
