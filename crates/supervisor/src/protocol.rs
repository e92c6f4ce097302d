//! The supervisor control protocol, shared by the supervisor and its clients.
//!
//! Transport: the unix socket `task-dir/supervisor.sock` (a virtio-serial port inside a
//! microVM). Framing: one JSON object per line. Every message carries `"v": 1`; a peer
//! that receives another version answers with an `error` and closes the connection.
//!
//! ```text
//! client                                  supervisor
//! {"v":1,"op":"status"}              ->   {"v":1,"type":"status","status":{..}}
//! {"v":1,"op":"stop","reason":"..."} ->   {"v":1,"type":"accepted"}   (stop begins)
//! {"v":1,"op":"watch"}               ->   {"v":1,"type":"status",..}  current status,
//!                                         {"v":1,"type":"status",..}  one per change,
//!                                         ...                         until phase=Stopped,
//!                                                                     then EOF
//! ```
//!
//! One request per connection keeps both sides trivial: clients connect per call.
//!
//! Compatibility: fields are only ever added, with serde defaults, so that older and
//! newer peers read each other's statuses within version 1 (container `health` was added
//! this way; peers that predate it ignore it).

use serde::{Deserialize, Serialize};

use crate::SupervisorError;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Stop { reason: String },
    Watch,
}

/// A supervisor reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Status { status: TaskStatus },
    Accepted,
    Error { message: String },
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    body: T,
}

/// Serializes `message` as one protocol line, newline included.
pub fn encode<T: Serialize>(message: &T) -> String {
    #[derive(Serialize)]
    struct Borrowed<'a, T> {
        v: u32,
        #[serde(flatten)]
        body: &'a T,
    }
    let mut line = serde_json::to_string(&Borrowed {
        v: PROTOCOL_VERSION,
        body: message,
    })
    .expect("protocol messages always serialize");
    line.push('\n');
    line
}

/// Parses one protocol line, checking its version.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &str) -> Result<T, SupervisorError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let version: Version = serde_json::from_str(line).map_err(SupervisorError::Protocol)?;
    if version.v != PROTOCOL_VERSION {
        return Err(SupervisorError::ProtocolVersion { got: version.v });
    }
    let envelope: Envelope<T> = serde_json::from_str(line).map_err(SupervisorError::Protocol)?;
    Ok(envelope.body)
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskPhase {
    /// Containers are being created or wait for their dependencies.
    Starting,
    /// Every container that will run has been started.
    Running,
    /// Containers are being signalled; the supervisor exits once all have exited.
    Stopping,
    /// Every container has exited or will never start. Final.
    Stopped,
}

/// Why a task stopped, as ECS's `stopCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCode {
    TaskFailedToStart,
    EssentialContainerExited,
    UserInitiated,
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Waiting for its dependencies.
    Pending,
    /// Created by the runtime, not started yet.
    Created,
    Running,
    Exited,
    /// Will never start: a dependency failed, or the task stopped first.
    NotStarted,
}

impl ContainerState {
    /// Whether the container will never run again.
    pub fn is_final(self) -> bool {
        matches!(self, ContainerState::Exited | ContainerState::NotStarted)
    }
}

/// One container's status. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: ContainerState,
    pub pid: Option<i32>,
    pub exit_code: Option<i32>,
    pub oom_killed: bool,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub reason: Option<String>,
    /// The health check's verdict; None for a container without a health check. It
    /// keeps its last value once the container has stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ContainerHealth>,
}

/// A container's health, as ECS's `healthStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthStatus {
    /// No verdict yet: no check has passed, and fewer than `retries` counted failures.
    Unknown,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    /// ECS's spelling: `HEALTHY`, `UNHEALTHY`, `UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Unknown => "UNKNOWN",
            HealthStatus::Healthy => "HEALTHY",
            HealthStatus::Unhealthy => "UNHEALTHY",
        }
    }
}

/// A container's health and the check that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerHealth {
    pub status: HealthStatus,
    /// When `status` last changed, in milliseconds since the Unix epoch.
    pub since: u64,
    /// The exit code of the check that set `status`; None before the first check and
    /// for a check that timed out.
    pub exit_code: Option<i32>,
    /// The start of that check's output (stdout and stderr), at most
    /// [`crate::health::MAX_OUTPUT`] bytes.
    pub output: String,
}

/// The whole task's status, as written to `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub phase: TaskPhase,
    pub stop_code: Option<StopCode>,
    pub stopped_reason: Option<String>,
    pub containers: Vec<ContainerStatus>,
}

impl TaskStatus {
    pub fn container(&self, name: &str) -> Option<&ContainerStatus> {
        self.containers.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_versioned_lines() {
        let line = encode(&Request::Stop {
            reason: "scale in".into(),
        });
        assert_eq!(line, "{\"v\":1,\"op\":\"stop\",\"reason\":\"scale in\"}\n");
        assert_eq!(
            decode::<Request>(&line).unwrap(),
            Request::Stop {
                reason: "scale in".into()
            }
        );
        assert_eq!(
            decode::<Request>("{\"v\":1,\"op\":\"watch\"}").unwrap(),
            Request::Watch
        );
    }

    #[test]
    fn statuses_without_health_still_parse() {
        let old = r#"{"name":"app","state":"Running","pid":7,"exit_code":null,"oom_killed":false,"started_at":1,"finished_at":null,"reason":null}"#;
        let status: ContainerStatus = serde_json::from_str(old).unwrap();
        assert_eq!(status.health, None);
        assert!(!serde_json::to_string(&status).unwrap().contains("health"));
        assert_eq!(
            serde_json::to_value(HealthStatus::Unhealthy).unwrap(),
            HealthStatus::Unhealthy.as_str()
        );
    }

    #[test]
    fn other_versions_are_refused() {
        let err = decode::<Request>("{\"v\":2,\"op\":\"status\"}").unwrap_err();
        assert!(
            matches!(err, SupervisorError::ProtocolVersion { got: 2 }),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert!(matches!(
            decode::<Request>("status"),
            Err(SupervisorError::Protocol(_))
        ));
        assert!(matches!(
            decode::<Request>("{\"v\":1,\"op\":\"reboot\"}"),
            Err(SupervisorError::Protocol(_))
        ));
    }

    #[test]
    fn status_round_trips() {
        let status = TaskStatus {
            task_id: "t".into(),
            phase: TaskPhase::Stopped,
            stop_code: Some(StopCode::EssentialContainerExited),
            stopped_reason: Some("Essential container in task exited".into()),
            containers: vec![ContainerStatus {
                name: "app".into(),
                state: ContainerState::Exited,
                pid: Some(42),
                exit_code: Some(137),
                oom_killed: true,
                started_at: Some(1),
                finished_at: Some(2),
                reason: None,
                health: Some(ContainerHealth {
                    status: HealthStatus::Unhealthy,
                    since: 2,
                    exit_code: Some(1),
                    output: "down".into(),
                }),
            }],
        };
        let line = encode(&Response::Status {
            status: status.clone(),
        });
        assert_eq!(
            decode::<Response>(&line).unwrap(),
            Response::Status { status }
        );
    }
}
