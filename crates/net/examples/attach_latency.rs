//! Measures `HostNetwork::attach` and `detach` latency.
//!
//! Needs root. Everything happens inside network and mount namespaces created for the
//! measurement (on a dedicated thread), so the machine's own network is never touched:
//!
//! ```text
//! cargo run --release -p net --example attach_latency [iterations]
//! ```

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use net::{BridgeConfig, HostNetwork};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Removes a namespace file left by an interrupted iteration.
struct NamespaceFile(PathBuf);

impl Drop for NamespaceFile {
    fn drop(&mut self) {
        // Both calls fail harmlessly when detach already removed the namespace.
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.0);
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[rank]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{what:>14}: mean {mean:>9.2?}  p50 {:>9.2?}  p90 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
    );
}

async fn measure(iterations: usize) {
    let config = BridgeConfig {
        name: "skiffbench0".to_owned(),
        subnet: "10.99.0.0/16".parse().expect("subnet"),
        ..BridgeConfig::default()
    };
    let started = Instant::now();
    let network = HostNetwork::init(config).await.expect("init");
    println!("init (bridge + nft table): {:.2?}", started.elapsed());

    let (mut attach, mut detach, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iterations {
        let task_id = format!("{:032x}", rand::random::<u128>());
        let _file = NamespaceFile(PathBuf::from(format!("/run/netns/skiff-{task_id}")));
        let octets = u16::try_from(i + 2)
            .expect("fewer than 65000 iterations")
            .to_be_bytes();
        let address = Ipv4Addr::new(10, 99, octets[0], octets[1]);

        let started = Instant::now();
        network
            .attach(&task_id, address, None)
            .await
            .expect("attach");
        let attached = started.elapsed();
        network.detach(&task_id).await.expect("detach");
        let total = started.elapsed();
        attach.push(attached);
        detach.push(total - attached);
        both.push(total);
    }
    println!("{iterations} iterations");
    report("attach", attach);
    report("detach", detach);
    report("attach+detach", both);
}

fn main() {
    let iterations = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("iterations must be a positive number"))
        .unwrap_or(200usize)
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
            .block_on(measure(iterations));
    })
    .join()
    .expect("measurement thread");
}
