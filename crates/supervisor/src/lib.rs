//! The in-sandbox task supervisor (Skiff's conmon / containerd-shim) and its protocol.
//!
//! One supervisor process owns one task: it runs the task's containers through an OCI
//! runtime binary, keeps their stdout/stderr as CRI-format logs, applies ECS container
//! semantics (essential containers, `dependsOn`, stop timeouts, exit codes, OOM kills),
//! and serves its status on a unix socket. It is daemonized, so it outlives the agent that
//! launched it; a restarted agent re-adopts it through the socket and `status.json`.
//!
//! - [`spec`]: the inputs the driver writes (`spec.json`, `supervisor.json`);
//! - [`layout`]: the files of a task directory;
//! - [`protocol`]: the control protocol and status types, shared with clients;
//! - [`logs`]: the log writer and the reader the agent uses;
//! - [`health`]: container health checks and their state machine;
//! - [`run`]: the process entry point (`skiff supervise --task-dir DIR`).

pub mod control;
mod daemon;
mod error;
pub mod health;
pub mod layout;
pub mod logs;
mod oom;
pub mod order;
pub mod protocol;
mod reaper;
mod runtime;
pub mod spec;
mod task;

pub use daemon::run;
pub(crate) use error::error_chain;
pub use error::SupervisorError;
pub use layout::TaskDir;
pub use logs::{read_logs, LogEntry, LogFollower, LogStream};
pub use protocol::{
    ContainerHealth, ContainerState, ContainerStatus, HealthStatus, StopCode, TaskPhase, TaskStatus,
};
pub use spec::{
    Condition, ContainerSpec, Dependency, DnsConfig, HealthCheck, RuntimeConfig, TaskSpec,
};
