//! What the net crate's latency examples share: an isolated place to run (fresh network
//! and mount namespaces on a dedicated thread, so the machine's own network is never
//! touched), clean-up of namespace files an interrupted run leaves, and the report line.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Removes a task's namespace file left by an interrupted run.
pub struct NamespaceFile(pub PathBuf);

impl NamespaceFile {
    /// The namespace file `HostNetwork` makes for `task_id` with the default config.
    pub fn of(task_id: &str) -> Self {
        NamespaceFile(PathBuf::from(format!("/run/netns/skiff-{task_id}")))
    }
}

impl Drop for NamespaceFile {
    fn drop(&mut self) {
        // Both calls fail harmlessly when detach already removed the namespace.
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The first command-line argument as a positive count, or `default`.
pub fn count_arg(what: &str, default: usize) -> usize {
    std::env::args()
        .nth(1)
        .map(|arg| {
            arg.parse()
                .unwrap_or_else(|_| panic!("{what} must be a positive number"))
        })
        .unwrap_or(default)
        .max(1)
}

/// Prints mean, p50, p90, p99 and max of `samples`.
pub fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{what:>18}: mean {mean:>9.2?}  p50 {:>9.2?}  p90 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
        at(0.5),
        at(0.9),
        at(0.99),
        samples[samples.len() - 1],
    );
}

/// Runs `measure` on a thread of its own inside new network and mount namespaces (needs
/// root), with mounts kept from propagating back to the host.
pub fn run_isolated<F: Future<Output = ()>>(measure: impl FnOnce() -> F + Send + 'static) {
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
            .block_on(measure());
    })
    .join()
    .expect("measurement thread");
}
