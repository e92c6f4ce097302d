//! The protocol between the control plane and a node agent (version 1).
//!
//! The agent never reads the store: everything it knows arrives as a [`ToAgent`] message
//! and everything it learns goes back as a [`FromAgent`] message. The control plane owns
//! the decisions (placement, addresses, desired state); the agent owns the host (images,
//! interfaces, sandboxes) and reports what actually happened.
//!
//! ```text
//!  control                                  agent
//!     | <------------- Hello{agent} ----------- |  on (re)connect
//!     | -------------- Sync{tasks} -----------> |  every task placed on this agent
//!     | -------------- Launch{plan} ----------> |  RunTask
//!     | -------------- Stop{id, reason} ------> |  StopTask
//!     | <------------- Report{task} ----------- |  each state change
//!     | -------------- Forget{id} ------------> |  stopped task past retention
//!     | -------------- Security{update} ------> |  group members or rules changed
//!     | -------------- Names{table} ----------> |  service tasks came or went
//! ```
//!
//! `Sync` lists tasks by plan: a task the agent does not know that never got past
//! PROVISIONING is launched; one that did is reported STOPPED (lost with its host); a
//! task the agent runs that the list omits is stopped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::task::TaskStatus;
use crate::task_definition::HealthCheck;
use crate::Timestamp;

pub const PROTOCOL_VERSION: u32 = 1;

/// Everything an agent needs to run one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPlan {
    pub task_id: String,
    pub task_arn: String,
    pub cluster: String,
    pub family: String,
    pub revision: u32,
    pub cpu_units: u32,
    pub memory_mib: u32,
    pub ephemeral_storage_gib: u32,
    pub network: NetworkPlan,
    pub containers: Vec<ContainerPlan>,
    /// The task's last known status when this plan is (re)sent.
    pub last_status: TaskStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub subnet_id: String,
    pub attachment_id: String,
    /// The task's security group ids; absent in plans persisted before security groups
    /// (those tasks are in their VPC's default group).
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The rules of those groups as the control plane compiled them when it sent the
    /// plan; later changes arrive as [`ToAgent::Security`]. None (plans from before
    /// security groups) keeps the bridge's defaults: all egress allowed, ingress allowed
    /// from the task subnet only.
    #[serde(default)]
    pub security: Option<SecurityPolicy>,
    /// awsvpc in plans persisted before bridge mode.
    #[serde(default)]
    pub mode: NetworkMode,
    /// Container ports published on the host (bridge mode only), host ports assigned.
    #[serde(default)]
    pub port_bindings: Vec<PortBinding>,
}

/// How a task is networked. Either way it has its own namespace and address on the
/// host bridge; they differ in how it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Reached at its own address, as its security groups allow.
    #[default]
    Awsvpc,
    /// Reached through host ports its port mappings publish; no security groups.
    Bridge,
}

/// One container port published on a host port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    pub container_name: String,
    pub container_port: u16,
    pub host_port: u16,
    /// `Tcp` or `Udp`.
    pub protocol: Protocol,
}

/// The effective rules of a task's security groups, as the control plane resolved them:
/// a packet is allowed when any rule of its direction matches it (rules only allow).
/// Replies to allowed connections are always allowed; everything else is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SecurityPolicy {
    /// Connections other tasks and hosts may open to the task.
    pub ingress: Vec<SecurityRule>,
    /// Connections the task may open.
    pub egress: Vec<SecurityRule>,
}

/// One allow rule of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityRule {
    pub protocol: Protocol,
    /// Inclusive destination port range for TCP and UDP; for ICMP, the one ICMP type
    /// allowed (the range's low end, every code of it). None allows every port or type.
    /// Ignored for `All`.
    pub ports: Option<(u16, u16)>,
    /// The peer address ranges: sources of ingress, destinations of egress.
    pub sources: Vec<Ipv4Net>,
    /// Peer security groups: their member tasks' addresses are peers too. Members are
    /// sent apart from policies ([`SecurityUpdate::members`]), so a task joining or
    /// leaving a group changes one set on the agent, not every policy naming the group.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A change to the firewall state of an agent's tasks. The agent applies members first
/// (so policies may name groups that just gained a set), then policies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SecurityUpdate {
    /// Every group some task's policy names, each with its complete member list (the
    /// addresses of its tasks not yet stopped); the agent drops the sets of groups left
    /// out.
    pub members: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Tasks whose policy changed, each with its complete new policy; after a `Sync`,
    /// every task.
    pub policies: BTreeMap<String, SecurityPolicy>,
}

/// The IP protocol a security rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
}

/// One container with its task definition and overrides already merged. Fields left
/// empty fall back to the image's configuration on the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub entry_point: Vec<String>,
    pub command: Option<Vec<String>>,
    pub environment: Vec<(String, String)>,
    pub working_directory: Option<String>,
    pub user: Option<String>,
    pub essential: bool,
    pub depends_on: Vec<(String, String)>,
    pub readonly_root_filesystem: bool,
    pub stop_timeout_secs: u32,
    pub cpu: u32,
    pub memory_mib: Option<u64>,
    pub memory_reservation_mib: Option<u64>,
    pub nofile: Option<(u64, u64)>,
    pub add_capabilities: Vec<String>,
    /// The container's health check; absent in plans persisted before health checks.
    #[serde(default)]
    pub health_check: Option<HealthCheckPlan>,
}

/// A container health check as the agent runs it: the command resolved to an argv and
/// ECS's defaults applied to every duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckPlan {
    /// `CMD`'s arguments, or `["/bin/sh", "-c", <string>]` for `CMD-SHELL`.
    pub command: Vec<String>,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    /// Consecutive failures that make the container UNHEALTHY.
    pub retries: u32,
    /// Failures during this time after the container started do not count.
    pub start_period_secs: u32,
}

impl HealthCheckPlan {
    /// ECS's default `interval`.
    pub const DEFAULT_INTERVAL_SECS: u32 = 30;
    /// ECS's default `timeout`.
    pub const DEFAULT_TIMEOUT_SECS: u32 = 5;
    /// ECS's default `retries`.
    pub const DEFAULT_RETRIES: u32 = 3;

    /// Resolves a task definition's `healthCheck`. None when the command is neither
    /// `CMD` nor `CMD-SHELL` followed by something to run (registration rejects those).
    pub fn resolve(check: &HealthCheck) -> Option<Self> {
        let command = match check.command.split_first() {
            Some((kind, args)) if kind == "CMD" && !args.is_empty() => args.to_vec(),
            Some((kind, args)) if kind == "CMD-SHELL" && !args.is_empty() => {
                vec!["/bin/sh".to_owned(), "-c".to_owned(), args.join(" ")]
            }
            _ => return None,
        };
        Some(HealthCheckPlan {
            command,
            interval_secs: check.interval.unwrap_or(Self::DEFAULT_INTERVAL_SECS),
            timeout_secs: check.timeout.unwrap_or(Self::DEFAULT_TIMEOUT_SECS),
            retries: check.retries.unwrap_or(Self::DEFAULT_RETRIES),
            start_period_secs: check.start_period.unwrap_or(0),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToAgent {
    Sync {
        tasks: Vec<TaskPlan>,
    },
    Launch {
        plan: Box<TaskPlan>,
    },
    Stop {
        task_id: String,
        reason: String,
    },
    Forget {
        task_id: String,
    },
    /// Security group members and task policies that changed; after a `Sync`, the
    /// complete state.
    Security(SecurityUpdate),
    /// The names the agent's resolver answers inside tasks, `<service>.<cluster>.local`
    /// (lower case) to the addresses of the service's running tasks that are not
    /// unhealthy; the complete table, sent whenever it changes and after a `Sync`.
    Names {
        names: BTreeMap<String, Vec<Ipv4Addr>>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromAgent {
    Hello { agent_id: String, version: u32 },
    Report(TaskReport),
}

/// What an agent knows of one task. Fields are only ever filled in, never cleared: the
/// control plane merges a report into the task record.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskReport {
    pub task_arn: String,
    pub last_status: Option<TaskStatus>,
    pub pull_started_at: Option<Timestamp>,
    pub pull_stopped_at: Option<Timestamp>,
    pub connectivity_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub execution_stopped_at: Option<Timestamp>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    pub mac_address: Option<String>,
    pub containers: Vec<ContainerReport>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ContainerReport {
    pub name: String,
    /// PENDING, RUNNING or STOPPED.
    pub last_status: String,
    pub runtime_id: Option<String>,
    pub image_digest: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// HEALTHY, UNHEALTHY or UNKNOWN; None for a container without a health check.
    /// Unlike the other fields this one is not fill-only: it moves back and forth
    /// between HEALTHY and UNHEALTHY, and every report carries the latest value.
    #[serde(default)]
    pub health_status: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(command: &[&str]) -> HealthCheck {
        HealthCheck {
            command: command.iter().map(|s| s.to_string()).collect(),
            interval: None,
            timeout: None,
            retries: None,
            start_period: None,
        }
    }

    #[test]
    fn health_checks_resolve_commands_and_defaults() {
        let shell = HealthCheckPlan::resolve(&check(&["CMD-SHELL", "test -f /ok"])).unwrap();
        assert_eq!(shell.command, ["/bin/sh", "-c", "test -f /ok"]);
        assert_eq!(
            (
                shell.interval_secs,
                shell.timeout_secs,
                shell.retries,
                shell.start_period_secs
            ),
            (30, 5, 3, 0)
        );
        let mut exec = check(&["CMD", "/bin/check", "--fast"]);
        exec.interval = Some(5);
        exec.timeout = Some(2);
        exec.retries = Some(1);
        exec.start_period = Some(60);
        let exec = HealthCheckPlan::resolve(&exec).unwrap();
        assert_eq!(exec.command, ["/bin/check", "--fast"]);
        assert_eq!(
            (
                exec.interval_secs,
                exec.timeout_secs,
                exec.retries,
                exec.start_period_secs
            ),
            (5, 2, 1, 60)
        );
        assert_eq!(HealthCheckPlan::resolve(&check(&["CMD"])), None);
        assert_eq!(HealthCheckPlan::resolve(&check(&["NONE"])), None);
        assert_eq!(HealthCheckPlan::resolve(&check(&[])), None);
    }

    #[test]
    fn plans_and_reports_from_before_health_checks_still_parse() {
        let report: ContainerReport =
            serde_json::from_str(r#"{"name":"a","last_status":"RUNNING","runtime_id":null,"image_digest":null,"exit_code":null,"reason":null}"#)
                .unwrap();
        assert_eq!(report.health_status, None);
        let plan = ContainerPlan {
            name: "a".into(),
            image: "i".into(),
            entry_point: vec![],
            command: None,
            environment: vec![],
            working_directory: None,
            user: None,
            essential: true,
            depends_on: vec![],
            readonly_root_filesystem: false,
            stop_timeout_secs: 30,
            cpu: 0,
            memory_mib: None,
            memory_reservation_mib: None,
            nofile: None,
            add_capabilities: vec![],
            health_check: None,
        };
        let mut json = serde_json::to_value(&plan).unwrap();
        json.as_object_mut().unwrap().remove("health_check");
        assert_eq!(serde_json::from_value::<ContainerPlan>(json).unwrap(), plan);
    }
}
