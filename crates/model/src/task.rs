//! Tasks and their lifecycle.
//!
//! A task moves forward through ECS's states and never back:
//!
//! ```text
//!  PROVISIONING -> PENDING -> ACTIVATING -> RUNNING -> DEACTIVATING -> STOPPING
//!       |            |           |                                      |
//!       +------------+-----------+-----> (failure or stop request) ---->+
//!                                                                       v
//!                                                 DEPROVISIONING -> STOPPED
//! ```
//!
//! PROVISIONING: the network interface is being created. PENDING: the image is being
//! pulled and the root filesystems assembled. ACTIVATING: the sandbox starts.
//! RUNNING: the containers run. DEACTIVATING..STOPPING: containers are being stopped.
//! DEPROVISIONING: the sandbox, storage and interface are being released. A task may
//! skip states but never returns to an earlier one; `desiredStatus` is RUNNING until
//! someone (a user, the task's own exit, a failure) sets it to STOPPED.

use serde::{Deserialize, Serialize};

use crate::tag::Tag;
use crate::task_definition::KeyValue;
use crate::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    Provisioning,
    Pending,
    Activating,
    Running,
    Deactivating,
    Stopping,
    Deprovisioning,
    Stopped,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Provisioning => "PROVISIONING",
            TaskStatus::Pending => "PENDING",
            TaskStatus::Activating => "ACTIVATING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Deactivating => "DEACTIVATING",
            TaskStatus::Stopping => "STOPPING",
            TaskStatus::Deprovisioning => "DEPROVISIONING",
            TaskStatus::Stopped => "STOPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            TaskStatus::Provisioning,
            TaskStatus::Pending,
            TaskStatus::Activating,
            TaskStatus::Running,
            TaskStatus::Deactivating,
            TaskStatus::Stopping,
            TaskStatus::Deprovisioning,
            TaskStatus::Stopped,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// Whether a task in this state may move to `next`: only forward.
    pub fn can_become(self, next: TaskStatus) -> bool {
        next > self
    }

    /// The states counted as "pending" in cluster statistics.
    pub fn is_pending(self) -> bool {
        self < TaskStatus::Running
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_arn: String,
    pub cluster_arn: String,
    pub task_definition_arn: String,
    pub last_status: TaskStatus,
    pub desired_status: TaskStatus,
    pub launch_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_provider_name: Option<String>,
    pub platform_version: String,
    pub platform_family: String,
    pub cpu: String,
    pub memory: String,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub overrides: TaskOverride,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    pub version: u64,
    pub created_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_stopped_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connectivity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connectivity_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopping_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_stopped_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    pub health_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub enable_execute_command: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<crate::task_definition::EphemeralStorage>,
}

impl Task {
    /// The 32-hex id at the end of the task ARN.
    pub fn id(&self) -> &str {
        crate::arn::task_id(&self.task_arn)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub container_arn: String,
    pub task_arn: String,
    pub name: String,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_id: Option<String>,
    pub last_status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The container's ports published on the host (bridge mode).
    #[serde(default)]
    pub network_bindings: Vec<NetworkBinding>,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    pub health_status: String,
    pub cpu: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<String>,
}

/// A container port published on a host port, as ECS reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkBinding {
    /// The host address the port is published on: every address of the host.
    #[serde(rename = "bindIP")]
    pub bind_ip: String,
    pub container_port: u16,
    pub host_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    pub attachment_id: String,
    pub private_ipv4_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub details: Vec<KeyValue>,
}

impl Attachment {
    pub fn detail(&self, name: &str) -> Option<&str> {
        self.details
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.value.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskOverride {
    #[serde(default)]
    pub container_overrides: Vec<ContainerOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<crate::task_definition::EphemeralStorage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environment: Vec<KeyValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<u64>,
}

/// One entry of a `failures` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub arn: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a task stopped, as ECS's `stopCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCode {
    TaskFailedToStart,
    EssentialContainerExited,
    UserInitiated,
    ServiceSchedulerInitiated,
}

impl StopCode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopCode::TaskFailedToStart => "TaskFailedToStart",
            StopCode::EssentialContainerExited => "EssentialContainerExited",
            StopCode::UserInitiated => "UserInitiated",
            StopCode::ServiceSchedulerInitiated => "ServiceSchedulerInitiated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward() {
        assert!(TaskStatus::Provisioning.can_become(TaskStatus::Running));
        assert!(TaskStatus::Running.can_become(TaskStatus::Stopped));
        assert!(!TaskStatus::Running.can_become(TaskStatus::Pending));
        assert!(!TaskStatus::Stopped.can_become(TaskStatus::Stopped));
        assert_eq!(
            serde_json::to_string(&TaskStatus::Deprovisioning).unwrap(),
            "\"DEPROVISIONING\""
        );
        for s in ["PENDING", "RUNNING", "STOPPED"] {
            assert_eq!(TaskStatus::parse(s).unwrap().as_str(), s);
        }
    }
}
