//! The supervisor's inputs, written into the task directory by the sandbox driver.
//!
//! - [`TaskSpec`] (`spec.json`) is what the agent asks for: the task's containers, their
//!   ECS semantics (essential, dependsOn, stop timeout) and limits.
//! - [`RuntimeConfig`] (`supervisor.json`) is how the driver prepared the host for it: the
//!   OCI runtime to call, where each container's bundle is, and which memory cgroups to read
//!   OOM-kill counters from. Keeping it separate lets the driver change host details without
//!   touching the agent-facing spec.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Fargate's default `nofile` ulimit (soft, hard).
pub const DEFAULT_NOFILE: (u64, u64) = (65535, 65535);
/// ECS's default `stopTimeout`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default size at which a container log file is rotated.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;

/// One task: the unit the supervisor owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// 32 lowercase hex characters.
    pub task_id: String,
    /// Task CPU in ECS units: 1024 = 1 vCPU.
    pub cpu_units: u32,
    /// Task-level hard memory limit.
    pub memory_mib: u64,
    /// Network namespace shared by all the task's containers.
    pub netns_path: PathBuf,
    pub hostname: String,
    /// The task's address on the cluster network, written into `/etc/hosts`.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// The task's name server and search domains, written into `/etc/resolv.conf`; a task
    /// without them gets the host's resolver configuration.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    pub containers: Vec<ContainerSpec>,
}

/// How a task resolves names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// The one name server the task asks.
    pub nameserver: Ipv4Addr,
    /// Domains tried, in order, for names with no dot.
    pub search: Vec<String>,
}

/// One container of a task, with its entrypoint and command already resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    /// The container's root filesystem, already mounted by the agent.
    pub rootfs: PathBuf,
    #[serde(default)]
    pub readonly_rootfs: bool,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// `uid`, `uid:gid`, `name` or `name:group`; names resolve through the image's files.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default = "default_true")]
    pub essential: bool,
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    #[serde(default = "default_stop_timeout", with = "duration_millis")]
    pub stop_timeout: Duration,
    /// Container hard memory limit.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Container soft memory limit.
    #[serde(default)]
    pub memory_reservation_mib: Option<u64>,
    #[serde(default)]
    pub cpu_shares: Option<u32>,
    /// `nofile` (soft, hard); [`DEFAULT_NOFILE`] when absent.
    #[serde(default)]
    pub nofile: Option<(u64, u64)>,
    /// Capabilities added to Docker's default set, without the `CAP_` prefix.
    #[serde(default)]
    pub add_capabilities: Vec<String>,
    /// The container's health check, run inside it (see [`crate::health`]).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

/// An ECS container health check with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The argv run in the container with its user, environment and working directory.
    pub command: Vec<String>,
    /// Time between the end of one check and the start of the next.
    #[serde(with = "duration_millis")]
    pub interval: Duration,
    /// A check still running after this long is killed and counts as a failure.
    #[serde(with = "duration_millis")]
    pub timeout: Duration,
    /// Consecutive failures that make the container UNHEALTHY.
    pub retries: u32,
    /// Failures during this time after the container started do not count.
    #[serde(with = "duration_millis")]
    pub start_period: Duration,
}

impl ContainerSpec {
    /// A container with ECS defaults: essential, cwd `/`, 30 s stop timeout, no limits.
    pub fn new(name: impl Into<String>, rootfs: impl Into<PathBuf>, args: Vec<String>) -> Self {
        ContainerSpec {
            name: name.into(),
            rootfs: rootfs.into(),
            readonly_rootfs: false,
            args,
            env: Vec::new(),
            cwd: default_cwd(),
            user: None,
            essential: true,
            depends_on: Vec::new(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            memory_mib: None,
            memory_reservation_mib: None,
            cpu_shares: None,
            nofile: None,
            add_capabilities: Vec::new(),
            health_check: None,
        }
    }
}

/// An ECS `dependsOn` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub container: String,
    pub condition: Condition,
}

/// An ECS `dependsOn` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Condition {
    /// The dependency has been started.
    Start,
    /// The dependency has exited, whatever its exit code.
    Complete,
    /// The dependency has exited with code 0.
    Success,
    /// The dependency's health check passed; it must have one.
    Healthy,
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Condition::Start => "START",
            Condition::Complete => "COMPLETE",
            Condition::Success => "SUCCESS",
            Condition::Healthy => "HEALTHY",
        })
    }
}

/// How the driver prepared the host for the task (`supervisor.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    /// The OCI runtime binary (runc, crun).
    pub runtime: PathBuf,
    /// The runtime's state directory (`--root`).
    pub runtime_root: PathBuf,
    /// Rotate a container's log file when it reaches this size.
    pub log_max_bytes: u64,
    /// The task's memory cgroup directory, for OOM-kill counters.
    pub task_memory_cgroup: Option<PathBuf>,
    pub containers: Vec<ContainerRuntime>,
}

/// Where one container's bundle and memory cgroup are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRuntime {
    pub name: String,
    /// The runtime's container id.
    pub id: String,
    /// The OCI bundle directory holding `config.json`.
    pub bundle: PathBuf,
    /// The container's memory cgroup directory, for OOM-kill counters.
    pub memory_cgroup: Option<PathBuf>,
}

/// The runtime's container id for a task's container: unique per host.
pub fn container_id(task_id: &str, container: &str) -> String {
    format!("{task_id}-{container}")
}

fn default_cwd() -> String {
    "/".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_stop_timeout() -> Duration {
    DEFAULT_STOP_TIMEOUT
}

mod duration_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_spec_defaults_apply_when_fields_are_missing() {
        let json = r#"{"name":"app","rootfs":"/r","args":["sh"]}"#;
        let spec: ContainerSpec = serde_json::from_str(json).unwrap();
        assert!(spec.essential);
        assert_eq!(spec.cwd, "/");
        assert_eq!(spec.stop_timeout, DEFAULT_STOP_TIMEOUT);
        assert_eq!(spec, ContainerSpec::new("app", "/r", vec!["sh".into()]));
    }

    #[test]
    fn conditions_use_ecs_spelling() {
        let dep: Dependency =
            serde_json::from_str(r#"{"container":"db","condition":"SUCCESS"}"#).unwrap();
        assert_eq!(dep.condition, Condition::Success);
        assert_eq!(
            serde_json::to_string(&Condition::Healthy).unwrap(),
            "\"HEALTHY\""
        );
    }

    #[test]
    fn stop_timeout_round_trips_in_milliseconds() {
        let mut spec = ContainerSpec::new("a", "/r", vec![]);
        spec.stop_timeout = Duration::from_millis(2500);
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["stop_timeout"], 2500);
        let back: ContainerSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back.stop_timeout, Duration::from_millis(2500));
    }
}
