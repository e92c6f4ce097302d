//! Isolation drivers: the host side of running a task's containers.
//!
//! [`Sandbox`] is what the agent programs against; [`ContainerDriver`] implements it with
//! namespaces, cgroups and seccomp through an OCI runtime (runc, crun), each task owned by
//! a [`supervisor`] process that outlives the agent. A microVM driver will implement the
//! same trait with the supervisor as the guest's init.

mod bundle;
pub mod cgroup;
mod client;
mod config;
mod driver;
mod error;
mod seccomp;
mod user;

use std::future::Future;

pub use bundle::DEFAULT_CAPABILITIES;
pub use client::SupervisorClient;
pub use config::DriverConfig;
pub use driver::ContainerDriver;
pub use error::SandboxError;
pub use supervisor::{
    Condition, ContainerHealth, ContainerSpec, ContainerState, ContainerStatus, Dependency,
    HealthCheck, HealthStatus, LogEntry, LogStream, StopCode, TaskPhase, TaskSpec, TaskStatus,
};

/// An isolation backend: launches tasks, re-adopts them after an agent restart, and
/// cleans up after them.
pub trait Sandbox: Send + Sync {
    /// The agent's handle on a running task.
    type Client: Send + Sync;

    /// Prepares the task's isolation boundary and starts its supervisor.
    fn launch(
        &self,
        spec: TaskSpec,
    ) -> impl Future<Output = Result<Self::Client, SandboxError>> + Send;
    /// Re-adopts a task launched earlier, possibly by a previous agent process.
    fn attach(
        &self,
        task_id: &str,
    ) -> impl Future<Output = Result<Self::Client, SandboxError>> + Send;
    /// The tasks this backend holds on this host.
    fn tasks(&self) -> Result<Vec<String>, SandboxError>;
    /// Releases everything a stopped task held, except its logs and final status.
    fn remove(&self, task_id: &str) -> impl Future<Output = Result<(), SandboxError>> + Send;
}

impl Sandbox for ContainerDriver {
    type Client = SupervisorClient;

    fn launch(
        &self,
        spec: TaskSpec,
    ) -> impl Future<Output = Result<SupervisorClient, SandboxError>> + Send {
        ContainerDriver::launch(self, spec)
    }

    fn attach(
        &self,
        task_id: &str,
    ) -> impl Future<Output = Result<SupervisorClient, SandboxError>> + Send {
        ContainerDriver::attach(self, task_id)
    }

    fn tasks(&self) -> Result<Vec<String>, SandboxError> {
        ContainerDriver::tasks(self)
    }

    fn remove(&self, task_id: &str) -> impl Future<Output = Result<(), SandboxError>> + Send {
        ContainerDriver::remove(self, task_id)
    }
}
