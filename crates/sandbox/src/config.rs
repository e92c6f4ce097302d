//! Configuration of the container driver.

use std::path::PathBuf;
use std::time::Duration;

use supervisor::spec::DEFAULT_LOG_MAX_BYTES;

use crate::SandboxError;

/// Where the container driver keeps its state and which programs it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// One task directory per task lives here.
    pub state_root: PathBuf,
    /// The OCI runtime binary: runc, or crun on pure cgroup v2 hosts.
    pub runtime: PathBuf,
    /// The runtime's state directory (`--root`).
    pub runtime_root: PathBuf,
    /// Task cgroups are `<cgroup_parent>/<task-id>` in every hierarchy.
    pub cgroup_parent: String,
    /// The supervisor program; normally the running `skiff` binary.
    pub supervisor_program: PathBuf,
    /// Arguments before `--task-dir DIR`; normally `["supervise"]`.
    pub supervisor_args: Vec<String>,
    /// Rotate container logs at this size.
    pub log_max_bytes: u64,
    /// Most processes a task may run at once.
    pub pids_limit: u64,
    /// How long a new supervisor has to answer on its socket.
    pub ready_timeout: Duration,
}

impl DriverConfig {
    /// Defaults for a host: runc, `skiff` cgroups, and this executable as the supervisor
    /// (`<current exe> supervise --task-dir DIR`).
    pub fn new(state_root: impl Into<PathBuf>) -> Result<Self, SandboxError> {
        let exe = std::env::current_exe().map_err(SandboxError::io("locate", "/proc/self/exe"))?;
        Ok(DriverConfig {
            state_root: state_root.into(),
            runtime: PathBuf::from("/usr/sbin/runc"),
            runtime_root: PathBuf::from("/run/skiff/runc"),
            cgroup_parent: "skiff".to_owned(),
            supervisor_program: exe,
            supervisor_args: vec!["supervise".to_owned()],
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            pids_limit: 16384,
            ready_timeout: Duration::from_secs(10),
        })
    }
}
