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
//! ```
//!
//! `Sync` lists tasks by plan: a task the agent does not know that never got past
//! PROVISIONING is launched; one that did is reported STOPPED (lost with its host); a
//! task the agent runs that the list omits is stopped.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::task::TaskStatus;
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToAgent {
    Sync { tasks: Vec<TaskPlan> },
    Launch { plan: TaskPlan },
    Stop { task_id: String, reason: String },
    Forget { task_id: String },
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
}
