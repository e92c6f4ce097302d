//! The OCI runtime binary (runc, or crun on pure cgroup v2 hosts), driven by its CLI.
//!
//! Every call is `<runtime> --root <state> --log <task>/runtime/<name>.log --log-format
//! json <op> ...`, spawned and waited through the [`Reaper`]. When an operation fails, its
//! error is the last `error`-level message the runtime appended to the container's log
//! during that call, which is what runc itself would print.
//!
//! `exec` runs an extra process (a health check) in a running container. The runtime
//! copies the process settings of the bundle's `config.json` (user, environment, working
//! directory, capabilities, rlimits, no_new_privs, seccomp) and only replaces the argv, so
//! the check runs exactly as the container's own process would.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

/// Where an `exec`'d process writes its output and the runtime its pid.
#[derive(Debug, Clone)]
pub struct ExecFiles {
    /// Receives the process's stdout and stderr; truncated at each call.
    pub output: PathBuf,
    pub pid_file: PathBuf,
}

/// How an `exec`'d process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// The exit code (128 + signal when killed); None when it was killed at the timeout.
    pub exit_code: Option<i32>,
    /// The start of its output, at most `max_output` bytes; when the runtime could not
    /// run it at all, the runtime's error instead.
    pub output: String,
}

/// How long a timed-out `exec` gets to exit after its process was SIGKILLed before the
/// runtime process itself is killed.
const EXEC_KILL_GRACE: Duration = Duration::from_secs(2);

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

    /// `exec`: runs `args` in the running container as its process would run, waits at
    /// most `timeout`, then kills it. Returns Err only when the runtime cannot be spawned
    /// or the output file cannot be created; a check that cannot run is a failed outcome.
    pub fn exec(
        &self,
        container: &RuntimeContainer,
        files: &ExecFiles,
        args: &[String],
        timeout: Duration,
        max_output: usize,
    ) -> Result<ExecOutcome, SupervisorError> {
        let output = File::create(&files.output).map_err(|source| SupervisorError::Write {
            path: files.output.clone(),
            source,
        })?;
        let stderr = output
            .try_clone()
            .map_err(|source| SupervisorError::Write {
                path: files.output.clone(),
                source,
            })?;
        match std::fs::remove_file(&files.pid_file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SupervisorError::Write {
                    path: files.pid_file.clone(),
                    source,
                })
            }
        }
        let log_start = std::fs::metadata(&container.log_file).map_or(0, |m| m.len());
        let mut command = self.command(&container.log_file);
        command
            .arg("exec")
            .arg("--pid-file")
            .arg(&files.pid_file)
            .arg(&container.id)
            .args(args)
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(stderr));
        let pid = self
            .reaper
            .spawn(&mut command)
            .map_err(|source| SupervisorError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        drop(command);
        let exit_code = match self.reaper.wait_timeout(pid, timeout) {
            Some(termination) => Some(termination.code()),
            None => {
                let termination = self.kill_exec(pid, &files.pid_file);
                tracing::debug!(container = %container.name, ?termination, "timed-out exec killed");
                None
            }
        };
        let mut text = read_prefix(&files.output, max_output);
        if exit_code != Some(0) && text.is_empty() {
            if let Some(error) = last_error(&container.log_file, log_start) {
                text = truncate(error, max_output);
            }
        }
        Ok(ExecOutcome {
            exit_code,
            output: text,
        })
    }

    /// Kills a timed-out `exec`: its process first, so the runtime exits on its own, then
    /// the runtime if it lingers (or has not started the process yet).
    fn kill_exec(&self, runtime_pid: i32, pid_file: &Path) -> Termination {
        let process = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok());
        if let Some(process) = process {
            // The runtime has not reaped its child while it still waits for it, so this
            // pid cannot have been reused by another process yet.
            let _ = kill(Pid::from_raw(process), Signal::SIGKILL);
            if let Some(termination) = self.reaper.wait_timeout(runtime_pid, EXEC_KILL_GRACE) {
                return termination;
            }
        }
        let _ = kill(Pid::from_raw(runtime_pid), Signal::SIGKILL);
        self.reaper.wait(runtime_pid)
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

/// The first `max` bytes of `path` as text (lossy), trailing whitespace trimmed.
fn read_prefix(path: &Path, max: usize) -> String {
    let mut bytes = Vec::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(max as u64).read_to_end(&mut bytes);
    }
    // A cut multi-byte character becomes U+FFFD, which may overshoot: cut again.
    truncate(String::from_utf8_lossy(&bytes).trim_end().to_owned(), max)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
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
    fn output_is_cut_to_the_limit_without_splitting_characters() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("out");
        std::fs::write(&path, "ok\n\n").unwrap();
        assert_eq!(read_prefix(&path, 1024), "ok");
        std::fs::write(&path, "x".repeat(5000)).unwrap();
        assert_eq!(read_prefix(&path, 1024).len(), 1024);
        assert_eq!(read_prefix(&temp.path().join("missing"), 1024), "");
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("héllo".into(), 3), "hé");
        assert_eq!(truncate("short".into(), 1024), "short");
    }

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
