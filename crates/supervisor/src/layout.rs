//! The task directory: every file the driver and the supervisor share for one task.
//!
//! ```text
//! <state-root>/<task-id>/
//!   spec.json          TaskSpec (driver -> supervisor)
//!   supervisor.json    RuntimeConfig (driver -> supervisor)
//!   supervisor.pid     the daemonized supervisor's pid
//!   supervisor.log     the supervisor's own tracing output
//!   supervisor.sock    control socket (protocol.rs)
//!   status.json        TaskStatus, rewritten atomically after every change
//!   etc/               hosts, hostname, resolv.conf bind-mounted read-only into containers
//!   bundles/<name>/    OCI bundle (config.json) per container
//!   runtime/<name>.log OCI runtime log (JSON lines) per container
//!   runtime/<name>.pid container init pid written by `runc create`
//!   runtime/<name>.health.out / .health.pid  output and pid of the latest health check
//!   logs/<name>.log    container stdout/stderr in CRI format, plus one rotated `.log.1`
//! ```

use std::path::{Path, PathBuf};

/// Paths inside one task directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDir {
    root: PathBuf,
}

impl TaskDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        TaskDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn spec(&self) -> PathBuf {
        self.root.join("spec.json")
    }

    pub fn runtime_config(&self) -> PathBuf {
        self.root.join("supervisor.json")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("supervisor.pid")
    }

    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("supervisor.sock")
    }

    pub fn status(&self) -> PathBuf {
        self.root.join("status.json")
    }

    pub fn etc_dir(&self) -> PathBuf {
        self.root.join("etc")
    }

    pub fn bundles_dir(&self) -> PathBuf {
        self.root.join("bundles")
    }

    pub fn bundle(&self, container: &str) -> PathBuf {
        self.bundles_dir().join(container)
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join("runtime")
    }

    pub fn runtime_log(&self, container: &str) -> PathBuf {
        self.runtime_dir().join(format!("{container}.log"))
    }

    pub fn container_pid_file(&self, container: &str) -> PathBuf {
        self.runtime_dir().join(format!("{container}.pid"))
    }

    /// Where the latest health check of `container` writes its stdout and stderr.
    pub fn health_output(&self, container: &str) -> PathBuf {
        self.runtime_dir().join(format!("{container}.health.out"))
    }

    /// Where the runtime writes the pid of the health check process it runs.
    pub fn health_pid_file(&self, container: &str) -> PathBuf {
        self.runtime_dir().join(format!("{container}.health.pid"))
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn container_log(&self, container: &str) -> PathBuf {
        self.logs_dir().join(format!("{container}.log"))
    }

    pub fn rotated_container_log(&self, container: &str) -> PathBuf {
        self.logs_dir().join(format!("{container}.log.1"))
    }
}
