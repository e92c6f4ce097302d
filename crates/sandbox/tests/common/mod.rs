//! Test harness for the container driver: busybox root filesystems, throwaway network
//! namespaces, and guards that clean up supervisors, runtime state and cgroups even when
//! a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use sandbox::cgroup::Hierarchy;
use sandbox::{
    ContainerDriver, ContainerSpec, DriverConfig, SupervisorClient, TaskPhase, TaskSpec, TaskStatus,
};

pub const RUNC: &str = "/usr/sbin/runc";
pub const CGROUP_PARENT: &str = "skiff-test";

/// A fresh 32-hex task id.
pub fn task_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .replace('-', "")
}

/// A directory with busybox and its applets: enough of a root filesystem for tests.
pub fn busybox_rootfs(parent: &Path, name: &str) -> PathBuf {
    let root = parent.join(name);
    for dir in ["bin", "proc", "dev", "sys", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    root
}

/// A network namespace bind-mounted on a file, unmounted on drop.
pub struct Netns {
    pub path: PathBuf,
}

impl Netns {
    pub fn new(dir: &Path) -> Netns {
        let path = dir.join("netns");
        std::fs::write(&path, "").unwrap();
        let target = path.clone();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
        })
        .join()
        .unwrap();
        Netns { path }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// One test's driver on temporary directories. Dropping it tears down every task it
/// launched: supervisor, runtime containers, cgroups, network namespace.
pub struct Harness {
    pub temp: tempfile::TempDir,
    pub driver: ContainerDriver,
    pub netns: Netns,
    tasks: std::sync::Mutex<Vec<TaskSpec>>,
}

impl Harness {
    pub fn new() -> Harness {
        let temp = tempfile::tempdir().unwrap();
        let netns = Netns::new(temp.path());
        let driver = ContainerDriver::new(config(
            &temp.path().join("state"),
            &temp.path().join("runc"),
        ))
        .unwrap();
        Harness {
            temp,
            driver,
            netns,
            tasks: Default::default(),
        }
    }

    pub fn rootfs(&self, name: &str) -> PathBuf {
        busybox_rootfs(self.temp.path(), name)
    }

    pub fn container(&self, name: &str, script: &str) -> ContainerSpec {
        ContainerSpec::new(
            name,
            self.rootfs(name),
            vec!["/bin/sh".into(), "-c".into(), script.into()],
        )
    }

    pub fn task(&self, containers: Vec<ContainerSpec>) -> TaskSpec {
        TaskSpec {
            task_id: task_id(),
            cpu_units: 1024,
            memory_mib: 512,
            netns_path: self.netns.path.clone(),
            hostname: "skiff-test-host".into(),
            address: Some("10.9.0.2".parse().unwrap()),
            dns: None,
            containers,
        }
    }

    /// A tracked (cleaned up at the end) task of one container that idles until SIGTERM.
    pub fn idle_task(&self) -> TaskSpec {
        let spec =
            self.task(vec![self.container(
                "idle",
                "trap 'exit 0' TERM; while true; do sleep 1; done",
            )]);
        self.track(&spec);
        spec
    }

    /// Registers `spec` for cleanup, then launches it.
    pub async fn launch(&self, spec: TaskSpec) -> SupervisorClient {
        self.tasks.lock().unwrap().push(spec.clone());
        self.driver.launch(spec).await.unwrap()
    }

    pub fn track(&self, spec: &TaskSpec) {
        self.tasks.lock().unwrap().push(spec.clone());
    }
}

pub fn config(state_root: &Path, runtime_root: &Path) -> DriverConfig {
    let mut config = DriverConfig::new(state_root).unwrap();
    config.runtime = RUNC.into();
    config.runtime_root = runtime_root.to_owned();
    config.cgroup_parent = CGROUP_PARENT.into();
    config.supervisor_program = env!("CARGO_BIN_EXE_skiff-supervisor").into();
    config.supervisor_args = Vec::new();
    config
}

impl Drop for Harness {
    fn drop(&mut self) {
        for spec in self.tasks.lock().unwrap().iter() {
            let dir = self.driver.task_dir(&spec.task_id);
            if let Some(pid) = supervisor_pid(dir.root()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            for container in &spec.containers {
                let _ = Command::new(RUNC)
                    .arg("--root")
                    .arg(&self.driver.config().runtime_root)
                    .args([
                        "delete",
                        "--force",
                        &format!("{}-{}", spec.task_id, container.name),
                    ])
                    .output();
            }
            if let Err(error) = self.driver.cgroups().remove(&spec.task_id) {
                eprintln!("cleanup of task {}: {error}", spec.task_id);
            }
        }
        // The shared parent goes once the last test is done with it.
        for hierarchy in Hierarchy::mounted().unwrap_or_default() {
            let _ = std::fs::remove_dir(hierarchy.mount_point.join(CGROUP_PARENT));
        }
    }
}

/// The pid of the live supervisor serving `task_dir`, if any.
pub fn supervisor_pid(task_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(task_dir.join("supervisor.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = task_dir.as_os_str().as_encoded_bytes();
    cmdline
        .windows(needle.len())
        .any(|w| w == needle)
        .then_some(pid)
}

/// Follows the task to its final status.
pub async fn wait_stopped(client: &SupervisorClient) -> TaskStatus {
    let watch = async {
        let stream = client.watch().await.unwrap();
        futures::pin_mut!(stream);
        let mut last = None;
        while let Some(status) = stream.next().await {
            last = Some(status);
        }
        last.expect("a watch yields at least the current status")
    };
    let status = tokio::time::timeout(Duration::from_secs(120), watch)
        .await
        .expect("task did not stop in time");
    assert_eq!(status.phase, TaskPhase::Stopped, "{status:?}");
    status
}

/// Waits until `check` holds for the task's status.
pub async fn wait_for(
    client: &SupervisorClient,
    check: impl Fn(&TaskStatus) -> bool,
) -> TaskStatus {
    for _ in 0..1200 {
        let status = client.status().await.unwrap();
        if check(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached: {:?}", client.status().await);
}

/// All log messages of a container, joined by newlines.
pub fn log_text(client: &SupervisorClient, container: &str) -> String {
    client
        .logs(container, None)
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect::<Vec<_>>()
        .join("\n")
}
