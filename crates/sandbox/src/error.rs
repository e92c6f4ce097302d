//! The sandbox crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while launching, adopting or removing a task sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("task id {task_id:?} is invalid: expected 32 lowercase hex characters")]
    InvalidTaskId { task_id: String },
    #[error("container name {name:?} is invalid: use 1-255 letters, digits, '-' or '_'")]
    InvalidContainerName { name: String },
    #[error("task {task_id} already has a sandbox: attach to it, or remove it first")]
    TaskExists { task_id: String },
    #[error("task {task_id} has no sandbox on this host: check the task id, or list tasks with ContainerDriver::tasks")]
    TaskNotFound { task_id: String },
    #[error("task {task_id} is still running: stop it and wait for the Stopped phase before removing it")]
    TaskStillRunning { task_id: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot access task file {path}")]
    Supervisor {
        path: PathBuf,
        #[source]
        source: supervisor::SupervisorError,
    },
    #[error("cannot configure cgroup {path}: check that the cgroup controllers are mounted and writable by skiff")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no usable cgroup hierarchy found (need cgroup v2 with the memory, cpu and pids controllers, or v1 memory, cpu and pids hierarchies): check /proc/self/mountinfo")]
    NoCgroupHierarchy,
    #[error("cgroup {path} still holds processes after SIGKILL: find them with `cat {path}/cgroup.procs`")]
    CgroupBusy { path: PathBuf },
    #[error("container {container}: user {user:?} is not in the image's /etc/passwd: use a numeric uid or add the user to the image")]
    UnknownUser { container: String, user: String },
    #[error("container {container}: group {group:?} is not in the image's /etc/group: use a numeric gid or add the group to the image")]
    UnknownGroup { container: String, group: String },
    #[error("container {container}: capability {capability:?} cannot be added: only SYS_PTRACE is allowed")]
    CapabilityNotAllowed {
        container: String,
        capability: String,
    },
    #[error("cannot build the OCI runtime config of container {container}")]
    OciSpec {
        container: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error(
        "cannot run supervisor program {program}: check the driver's supervisor_program setting"
    )]
    SpawnSupervisor {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("supervisor launcher {program} exited with {status}: see {log}")]
    LauncherFailed {
        program: PathBuf,
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error("supervisor of task {task_id} did not answer within {timeout:?}: see {log}")]
    SupervisorNotReady {
        task_id: String,
        timeout: Duration,
        log: PathBuf,
    },
    #[error("supervisor of task {task_id} is gone and its last status is not final: the task's state is unknown; remove the task")]
    SupervisorLost { task_id: String },
    #[error("cannot talk to the supervisor of task {task_id}")]
    Connection {
        task_id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the supervisor of task {task_id} sent an invalid reply")]
    Protocol {
        task_id: String,
        #[source]
        source: supervisor::SupervisorError,
    },
    #[error("the supervisor of task {task_id} refused the request: {message}")]
    Refused { task_id: String, message: String },
    #[error("{path} is not valid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot run OCI runtime {program}: check the driver's runtime setting")]
    SpawnRuntime {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} delete --force {id}` failed with {status}: see {log}")]
    RuntimeDelete {
        program: PathBuf,
        id: String,
        status: std::process::ExitStatus,
        log: PathBuf,
    },
}

impl SandboxError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| SandboxError::Io {
            action,
            path,
            source,
        }
    }
}
