//! Task cgroups on cgroup v1, hybrid and v2 hosts, behind one trait.
//!
//! The driver creates `<parent>/<task-id>` with the task's limits; the runtime creates
//! each container's `<parent>/<task-id>/<container>` from the OCI `cgroupsPath` with the
//! container's own limits, so containers are always bounded by their task.
//!
//! The layout is detected at run time from `/proc/self/mountinfo`: if a v1 `memory`
//! hierarchy is mounted the host is v1 or hybrid (runc uses the v1 controllers there, and
//! so do we), otherwise it must be pure v2. Removal does not trust either backend's view:
//! it walks every mounted cgroup hierarchy (v1 controllers, named hierarchies such as
//! `name=systemd`, and a hybrid host's cgroup2), kills whatever still runs in the task's
//! subtree, and removes the directories bottom-up.

mod v1;
mod v2;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use v1::CgroupV1;
pub use v2::CgroupV2;

use crate::SandboxError;

/// What the task cgroup enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskLimits {
    /// 1024 = one CPU's worth of CFS quota.
    pub cpu_units: u32,
    pub memory_mib: u64,
    pub pids_limit: u64,
}

/// CFS period used for task CPU quotas.
pub const CPU_PERIOD_US: u64 = 100_000;

impl TaskLimits {
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * 1024 * 1024
    }

    /// `cpu_units / 1024` CPUs per period, at least 1 ms.
    pub fn cpu_quota_us(&self) -> u64 {
        (u64::from(self.cpu_units) * CPU_PERIOD_US / 1024).max(1000)
    }
}

/// A cgroup layout: creates and removes task cgroups.
pub trait CgroupBackend: Send + Sync + std::fmt::Debug {
    /// Creates the task cgroup with its limits.
    fn create(&self, task_id: &str, limits: &TaskLimits) -> Result<(), SandboxError>;
    /// The memory cgroup directory of the task or of one of its containers.
    fn memory_dir(&self, task_id: &str, container: Option<&str>) -> PathBuf;
    /// Whether memory+swap can be limited (so containers get no swap).
    fn swap_limit_supported(&self) -> bool;
    /// The OCI `cgroupsPath` for a container.
    fn container_path(&self, task_id: &str, container: &str) -> String;
    /// Kills every process left in the task's cgroups and removes them everywhere.
    fn remove(&self, task_id: &str) -> Result<(), SandboxError>;
    /// Whether any directory of the task's cgroup remains in any hierarchy.
    fn exists(&self, task_id: &str) -> bool;
}

/// Picks the backend for this host.
pub fn detect(parent: &str) -> Result<Box<dyn CgroupBackend>, SandboxError> {
    let mounts = Hierarchy::mounted()?;
    if let Some(v1) = CgroupV1::from_mounts(parent, &mounts) {
        tracing::debug!(backend = "v1", "detected cgroup layout");
        return Ok(Box::new(v1));
    }
    if let Some(v2) = CgroupV2::from_mounts(parent, &mounts) {
        tracing::debug!(backend = "v2", "detected cgroup layout");
        return Ok(Box::new(v2));
    }
    Err(SandboxError::NoCgroupHierarchy)
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    /// `cgroup2`, or `cgroup` for v1.
    pub unified: bool,
    /// v1 controllers (and `name=` options) of the mount.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    /// Every cgroup hierarchy mounted in this mount namespace.
    pub fn mounted() -> Result<Vec<Hierarchy>, SandboxError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(SandboxError::io("read", path))?;
        Ok(parse_mountinfo(&text))
    }
}

fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let super_options = right.nth(1).unwrap_or("");
            let unified = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let controllers = if unified {
                Vec::new()
            } else {
                super_options
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro") && !o.contains("xattr") && *o != "clone_children"
                    })
                    .map(str::to_owned)
                    .collect()
            };
            Some(Hierarchy {
                mount_point: PathBuf::from(unescape(mount_point)),
                unified,
                controllers,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Writes one cgroup control file.
pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<(), SandboxError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|source| SandboxError::Cgroup { path, source })
}

pub(crate) fn create_dir(dir: &Path) -> Result<(), SandboxError> {
    fs::create_dir_all(dir).map_err(|source| SandboxError::Cgroup {
        path: dir.to_owned(),
        source,
    })
}

/// Removes `<hierarchy>/<relative>` in every mounted hierarchy.
pub(crate) fn remove_everywhere(relative: &Path) -> Result<(), SandboxError> {
    for hierarchy in Hierarchy::mounted()? {
        let dir = hierarchy.mount_point.join(relative);
        if dir.is_dir() {
            kill_all(&dir)?;
            remove_tree(&dir)?;
        }
    }
    Ok(())
}

/// Whether `<hierarchy>/<relative>` exists in any mounted hierarchy.
pub(crate) fn exists_anywhere(relative: &Path) -> bool {
    Hierarchy::mounted()
        .map(|all| all.iter().any(|h| h.mount_point.join(relative).exists()))
        .unwrap_or(false)
}

fn subtree(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_owned()];
    let mut index = 0;
    while index < dirs.len() {
        if let Ok(entries) = fs::read_dir(&dirs[index]) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        index += 1;
    }
    dirs
}

fn procs(dirs: &[PathBuf]) -> Vec<i32> {
    dirs.iter()
        .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// SIGKILLs every process in the subtree until none is left (processes can fork while
/// being killed, so this loops), for at most five seconds.
fn kill_all(dir: &Path) -> Result<(), SandboxError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = procs(&subtree(dir));
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(SandboxError::CgroupBusy {
                path: dir.to_owned(),
            });
        }
        for pid in pids {
            tracing::info!(pid, cgroup = %dir.display(), "killing leftover process");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the subtree deepest first; a cgroup whose last process just died can report
/// EBUSY for a moment, so retry briefly.
fn remove_tree(dir: &Path) -> Result<(), SandboxError> {
    let mut dirs = subtree(dir);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        let mut attempts = 0;
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                Err(error) if attempts < 50 && error.raw_os_error() == Some(libc::EBUSY) => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => return Err(SandboxError::Cgroup { path: dir, source }),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
40 25 0:29 / /mnt/with\\040space rw - ext4 /dev/sda1 rw
";

    #[test]
    fn parses_v1_controllers_and_the_unified_mount() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 4);
        assert!(mounts[0].unified && mounts[0].mount_point == Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(mounts[1].controllers, ["name=systemd"]);
        assert_eq!(mounts[3].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            mounts[3].mount_point,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
    }

    #[test]
    fn limits_convert_to_cgroup_units() {
        let limits = TaskLimits {
            cpu_units: 256,
            memory_mib: 512,
            pids_limit: 100,
        };
        assert_eq!(limits.cpu_quota_us(), 25_000);
        assert_eq!(limits.memory_bytes(), 512 << 20);
        assert_eq!(
            TaskLimits {
                cpu_units: 4096,
                ..limits
            }
            .cpu_quota_us(),
            400_000
        );
        assert_eq!(
            TaskLimits {
                cpu_units: 1,
                ..limits
            }
            .cpu_quota_us(),
            1000
        );
    }
}
