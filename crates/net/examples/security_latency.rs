//! Measures `HostNetwork::apply_security` with many attached tasks.
//!
//! Needs root. Everything happens inside network and mount namespaces created for the
//! measurement (on a dedicated thread), so the machine's own network is never touched:
//!
//! ```text
//! cargo run --release -p net --example security_latency [tasks]
//! ```
//!
//! Attaches `tasks` tasks (default 500), each with a three-rule policy, then times 100
//! membership changes and 100 rule changes on one of them.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use model::agent::{Protocol, SecurityPolicy, SecurityRule};
use net::{BridgeConfig, HostNetwork};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Removes a namespace file left by an interrupted run.
struct NamespaceFile(PathBuf);

impl Drop for NamespaceFile {
    fn drop(&mut self) {
        // Both calls fail harmlessly when detach already removed the namespace.
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.0);
    }
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
    println!(
        "{what:>18}: p50 {:>9.2?}  p90 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
        at(0.5),
        at(0.9),
        at(0.99),
        samples[samples.len() - 1],
    );
}

fn address(index: usize) -> Ipv4Addr {
    let octets = u16::try_from(index + 2)
        .expect("fewer than 65000 tasks")
        .to_be_bytes();
    Ipv4Addr::new(10, 98, octets[0], octets[1])
}

/// A web task's policy: its group's members on 8080, a CIDR on 443, DNS out.
fn policy(members: &[Ipv4Addr], extra_rule: bool) -> SecurityPolicy {
    let rule = |protocol, ports, sources: Vec<Ipv4Net>| SecurityRule {
        protocol,
        ports,
        sources,
        groups: vec![],
    };
    let mut ingress = vec![
        rule(
            Protocol::Tcp,
            Some((8080, 8080)),
            members.iter().map(|&a| Ipv4Net::from(a)).collect(),
        ),
        rule(
            Protocol::Tcp,
            Some((443, 443)),
            vec!["192.0.2.0/24".parse().expect("net")],
        ),
    ];
    if extra_rule {
        ingress.push(rule(
            Protocol::Icmp,
            None,
            vec!["10.98.0.0/16".parse().expect("net")],
        ));
    }
    SecurityPolicy {
        ingress,
        egress: vec![rule(
            Protocol::Udp,
            Some((53, 53)),
            vec![Ipv4Net::default()],
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
    let members: Vec<Ipv4Addr> = (0..20).map(address).collect();
    let ids: Vec<String> = (0..tasks)
        .map(|_| format!("{:032x}", rand::random::<u128>()))
        .collect();
    let _files: Vec<NamespaceFile> = ids
        .iter()
        .map(|id| NamespaceFile(PathBuf::from(format!("/run/netns/skiff-{id}"))))
        .collect();
    let started = Instant::now();
    let mut attach = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let began = Instant::now();
        network
            .attach(id, address(index), Some(&policy(&members, false)))
            .await
            .expect("attach");
        attach.push(began.elapsed());
    }
    println!("{tasks} tasks attached in {:.1?}", started.elapsed());
    report("attach", attach);

    let target = &ids[0];
    let (mut refill, mut rebuild) = (Vec::new(), Vec::new());
    for round in 0..100 {
        let group = if round % 2 == 0 {
            &members[..10]
        } else {
            &members[..]
        };
        let began = Instant::now();
        network
            .apply_security(target, &policy(group, false))
            .await
            .expect("apply");
        refill.push(began.elapsed());
    }
    for round in 0..100 {
        let began = Instant::now();
        network
            .apply_security(target, &policy(&members, round % 2 == 0))
            .await
            .expect("apply");
        rebuild.push(began.elapsed());
    }
    report("membership change", refill);
    report("rule change", rebuild);

    let started = Instant::now();
    for id in &ids {
        network.detach(id).await.expect("detach");
    }
    println!("{tasks} tasks detached in {:.1?}", started.elapsed());
}

fn main() {
    let tasks = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("tasks must be a positive number"))
        .unwrap_or(500usize)
        .max(1);
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
            .expect("unshare network and mount namespaces (run as root)");
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
            .block_on(measure(tasks));
    })
    .join()
    .expect("measurement thread");
}
