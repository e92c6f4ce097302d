//! Measures `HostNetwork::attach` and `detach` latency.
//!
//! Needs root. Everything happens inside network and mount namespaces created for the
//! measurement (on a dedicated thread), so the machine's own network is never touched:
//!
//! ```text
//! cargo run --release -p net --example attach_latency [iterations]
//! ```

mod common;

use std::net::Ipv4Addr;
use std::time::Instant;

use net::{BridgeConfig, HostNetwork};

use common::{report, NamespaceFile};

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
        let _file = NamespaceFile::of(&task_id);
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
    let iterations = common::count_arg("iterations", 200);
    common::run_isolated(move || measure(iterations));
}
