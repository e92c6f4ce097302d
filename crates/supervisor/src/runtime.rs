//! The OCI runtime binary (runc, or crun on pure cgroup v2 hosts), driven by its CLI.
//!
//! Every call is `<runtime> --root <state> --log <task>/runtime/<name>.log --log-format
//! json <op> ...`, spawned and waited through the [`Reaper`]. When an operation fails, its
//! error is the last `error`-level message the runtime appended to the container's log
//! during that call, which is what runc itself would print.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::reaper::{Reaper, Termination};
use crate::SupervisorError;

/// One container's runtime identity and files.
#[derive(Debug, Clone)]
pub struct RuntimeContainer {
    pub name: String,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
}

/// Runs runtime operations.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    program: PathBuf,
    root: PathBuf,
    reaper: Reaper,
}

impl OciRuntime {
    pub fn new(program: PathBuf, root: PathBuf, reaper: Reaper) -> Self {
        OciRuntime {
            program,
            root,
            reaper,
        }
    }

    /// `create`: sets the container up with `stdout`/`stderr` as its output, and returns
    /// the pid of its init process (which reparents to the supervisor).
    pub fn create(
        &self,
        container: &RuntimeContainer,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<i32, SupervisorError> {
        let mut command = self.command(&container.log_file);
        command
            .arg("create")
            .arg("--bundle")
            .arg(&container.bundle)
            .arg("--pid-file")
            .arg(&container.pid_file)
            .arg(&container.id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        self.run(command, "create", container)?;
        let pid = std::fs::read_to_string(&container.pid_file).map_err(|source| {
            SupervisorError::Read {
                path: container.pid_file.to_owned(),
                source,
            }
        })?;
        pid.trim().parse().map_err(|_| SupervisorError::Runtime {
            program: self.program.clone(),
            operation: "create",
            container: container.name.clone(),
            message: format!(
                "pid file {} holds {pid:?}, not a pid",
                container.pid_file.display()
            ),
        })
    }

    /// `start`: runs the user process of a created container.
    pub fn start(&self, container: &RuntimeContainer) -> Result<(), SupervisorError> {
        let mut command = self.command(&container.log_file);
        command.arg("start").arg(&container.id);
        self.run(command, "start", container)
    }

    /// `kill`: sends `signal` (a name such as `TERM`) to the container's init.
    pub fn kill(&self, container: &RuntimeContainer, signal: &str) -> Result<(), SupervisorError> {
        let mut command = self.command(&container.log_file);
        command.arg("kill").arg(&container.id).arg(signal);
        self.run(command, "kill", container)
    }

    /// `delete --force`: removes the container's state and cgroup.
    pub fn delete(&self, container: &RuntimeContainer) -> Result<(), SupervisorError> {
        let mut command = self.command(&container.log_file);
        command.arg("delete").arg("--force").arg(&container.id);
        self.run(command, "delete", container)
    }

    fn command(&self, log_file: &Path) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log_file)
            .arg("--log-format")
            .arg("json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    fn run(
        &self,
        mut command: Command,
        operation: &'static str,
        container: &RuntimeContainer,
    ) -> Result<(), SupervisorError> {
        let log_start = std::fs::metadata(&container.log_file).map_or(0, |m| m.len());
        let pid = self
            .reaper
            .spawn(&mut command)
            .map_err(|source| SupervisorError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        // Drop our copies of the child's stdio now: a container's output pipes must be
        // held only by the container, or its log never reaches end-of-file.
        drop(command);
        let termination = self.reaper.wait(pid);
        tracing::debug!(container = %container.name, operation, ?termination, "runtime call finished");
        if termination == Termination::Exited(0) {
            return Ok(());
        }
        let message = last_error(&container.log_file, log_start)
            .unwrap_or_else(|| format!("exited with status {}", termination.code()));
        Err(SupervisorError::Runtime {
            program: self.program.clone(),
            operation,
            container: container.name.clone(),
            message,
        })
    }
}

/// The last error message in a JSON-lines runtime log after byte `from`.
fn last_error(log_file: &Path, from: u64) -> Option<String> {
    let mut file = File::open(log_file).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| matches!(entry["level"].as_str(), Some("error" | "fatal")))
        .find_map(|entry| entry["msg"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_reads_only_the_new_part_of_the_log() {
        let temp = tempfile::tempdir().unwrap();
        let log = temp.path().join("runc.log");
        let old = "{\"level\":\"error\",\"msg\":\"old failure\",\"time\":\"t\"}\n";
        std::fs::write(
            &log,
            format!(
                "{old}{}\n{}\nnot json\n",
                r#"{"level":"error","msg":"exec: \"nope\": executable file not found in $PATH","time":"t"}"#,
                r#"{"level":"warning","msg":"ignored","time":"t"}"#
            ),
        )
        .unwrap();
        assert_eq!(
            last_error(&log, old.len() as u64).as_deref(),
            Some("exec: \"nope\": executable file not found in $PATH")
        );
        assert_eq!(
            last_error(&log, std::fs::metadata(&log).unwrap().len()),
            None
        );
        assert_eq!(last_error(&temp.path().join("missing"), 0), None);
    }
}
