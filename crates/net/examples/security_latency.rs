//! Measures security group updates (`HostNetwork::update_security`) with many tasks.
//!
//! Needs root. Everything happens inside network and mount namespaces created for the
//! measurement (on a dedicated thread), so the machine's own network is never touched:
//!
//! ```text
//! cargo run --release -p net --example security_latency [tasks]
//! ```
//!
//! Attaches `tasks` tasks (default 500), all members of one group whose rules admit its
//! own members (as a VPC's default group does), adding each to the group's member set as
//! the control plane does; then times 100 membership changes, 20 rule changes of the
//! group (every task's rules rebuilt in one update) and 100 rule changes of one task.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use ipnet::Ipv4Net;
use model::agent::{Protocol, SecurityPolicy, SecurityRule};
use net::{BridgeConfig, HostNetwork};

use common::{report, NamespaceFile};

fn address(index: usize) -> Ipv4Addr {
    let octets = u16::try_from(index + 2)
        .expect("fewer than 65000 tasks")
        .to_be_bytes();
    Ipv4Addr::new(10, 98, octets[0], octets[1])
}

const GROUP: &str = "sg-0bench0web0";

/// A web task's policy: its group's members on 8080, a CIDR on 443 (and ICMP from the
/// subnet with `extra_rule`), DNS out.
fn policy(extra_rule: bool) -> SecurityPolicy {
    let rule = |protocol, ports, sources: Vec<Ipv4Net>, groups: Vec<String>| SecurityRule {
        protocol,
        ports,
        sources,
        groups,
    };
    let mut ingress = vec![
        rule(
            Protocol::Tcp,
            Some((8080, 8080)),
            vec![],
            vec![GROUP.to_owned()],
        ),
        rule(
            Protocol::Tcp,
            Some((443, 443)),
            vec!["192.0.2.0/24".parse().expect("net")],
            vec![],
        ),
    ];
    if extra_rule {
        ingress.push(rule(
            Protocol::Icmp,
            None,
            vec!["10.98.0.0/16".parse().expect("net")],
            vec![],
        ));
    }
    SecurityPolicy {
        ingress,
        egress: vec![rule(
            Protocol::Udp,
            Some((53, 53)),
            vec![Ipv4Net::default()],
            vec![],
        )],
    }
}

async fn measure(tasks: usize) {
    let config = BridgeConfig {
        name: "skiffsgbench0".to_owned(),
        subnet: "10.98.0.0/16".parse().expect("subnet"),
        ..BridgeConfig::default()
    };
    let network = HostNetwork::init(config).await.expect("init");
    let ids: Vec<String> = (0..tasks)
        .map(|_| format!("{:032x}", rand::random::<u128>()))
        .collect();
    let _files: Vec<NamespaceFile> = ids.iter().map(|id| NamespaceFile::of(id)).collect();
    let members =
        |count: usize| BTreeMap::from([(GROUP.to_owned(), (0..count).map(address).collect())]);
    let mut version = 0u64;
    let started = Instant::now();
    let (mut attach, mut join) = (Vec::new(), Vec::new());
    for (index, id) in ids.iter().enumerate() {
        let began = Instant::now();
        network
            .attach(id, address(index), Some(&policy(false)))
            .await
            .expect("attach");
        attach.push(began.elapsed());
        version += 1;
        let began = Instant::now();
        network
            .update_security(Some(&members(index + 1)), &BTreeMap::new(), version)
            .await
            .expect("join");
        join.push(began.elapsed());
    }
    println!("{tasks} tasks attached in {:.1?}", started.elapsed());
    report("attach", attach);
    report("member added", join);

    let mut flips = Vec::new();
    for round in 0..100 {
        let count = if round % 2 == 0 { tasks - 1 } else { tasks };
        version += 1;
        let began = Instant::now();
        network
            .update_security(Some(&members(count)), &BTreeMap::new(), version)
            .await
            .expect("membership");
        flips.push(began.elapsed());
    }
    report("membership change", flips);

    let mut group_rules = Vec::new();
    for round in 0..20 {
        let all: BTreeMap<String, SecurityPolicy> = ids
            .iter()
            .map(|id| (id.clone(), policy(round % 2 == 0)))
            .collect();
        version += 1;
        let began = Instant::now();
        let rebuilt = network
            .update_security(Some(&members(tasks)), &all, version)
            .await
            .expect("group rule change");
        assert_eq!(rebuilt.len(), tasks);
        group_rules.push(began.elapsed());
    }
    report(&format!("rule change x{tasks}"), group_rules);

    let target = &ids[0];
    let mut one = Vec::new();
    for round in 0..100 {
        version += 1;
        let began = Instant::now();
        network
            .update_security(
                None,
                &BTreeMap::from([(target.clone(), policy(round % 2 == 0))]),
                version,
            )
            .await
            .expect("rule change");
        one.push(began.elapsed());
    }
    report("rule change x1", one);

    let started = Instant::now();
    for id in &ids {
        network.detach(id).await.expect("detach");
    }
    println!("{tasks} tasks detached in {:.1?}", started.elapsed());
}

fn main() {
    let tasks = common::count_arg("tasks", 500);
    common::run_isolated(move || measure(tasks));
}
