//! The supervisor process: daemonize, then supervise one task until it stops.
//!
//! 1. `fork` before any thread exists; the parent exits 0 at once so the launcher reaps
//!    it, and the child is adopted by init (or the nearest subreaper), not by the agent.
//! 2. The child starts a new session (no controlling terminal, no signals from the agent's
//!    process group), points stdin at /dev/null and stdout/stderr at
//!    `task-dir/supervisor.log`, and becomes a child subreaper so that container init
//!    processes reparent to it when the runtime's `create` exits.
//! 3. It writes `supervisor.pid`, starts the reaper and the control socket, runs the
//!    [`Task`] loop, and removes the socket when the task has stopped. `status.json`
//!    stays behind with the final status for any later agent.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use nix::unistd::{dup2, fork, setsid, ForkResult};

use crate::control::{self, StatusHub};
use crate::layout::TaskDir;
use crate::order;
use crate::reaper::Reaper;
use crate::spec::{RuntimeConfig, TaskSpec};
use crate::task::{Event, Task};
use crate::SupervisorError;

/// Entry point of `skiff supervise --task-dir DIR`.
///
/// Must be called before the process starts any thread (no async runtime, no tracing
/// appender thread): it forks. Returns in the launching process at once with success, and
/// in the daemon once the task has stopped.
pub fn run(task_dir: &Path) -> ExitCode {
    let dir = match task_dir.canonicalize() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("supervisor: task directory {}: {error}", task_dir.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = daemonize(&dir) {
        eprintln!("supervisor: {error}");
        return ExitCode::FAILURE;
    }
    // From here on we are the daemon child, with stderr going to supervisor.log.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    match supervise(TaskDir::new(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = crate::error::error_chain(&error);
            tracing::error!(error = %message, "supervisor failed");
            ExitCode::FAILURE
        }
    }
}

/// Forks; returns only in the daemon child (the parent exits 0).
fn daemonize(dir: &Path) -> Result<(), SupervisorError> {
    let log_path = TaskDir::new(dir).supervisor_log();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| SupervisorError::Write {
            path: log_path.clone(),
            source,
        })?;
    let null = File::open("/dev/null").map_err(|source| SupervisorError::Read {
        path: PathBuf::from("/dev/null"),
        source,
    })?;
    // SAFETY: `run` is documented to be called before any other thread exists, so the
    // child is a faithful single-threaded copy; the parent only exits.
    match unsafe { fork() }.map_err(|source| SupervisorError::Daemonize {
        step: "fork",
        source,
    })? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {}
    }
    setsid().map_err(|source| SupervisorError::Daemonize {
        step: "start a session",
        source,
    })?;
    let redirect = |from: &File, to: i32| {
        dup2(from.as_raw_fd(), to)
            .map(drop)
            .map_err(|source| SupervisorError::Daemonize {
                step: "redirect stdio",
                source,
            })
    };
    redirect(&null, libc::STDIN_FILENO)?;
    redirect(&log, libc::STDOUT_FILENO)?;
    redirect(&log, libc::STDERR_FILENO)?;
    std::env::set_current_dir("/").map_err(|source| SupervisorError::Read {
        path: PathBuf::from("/"),
        source,
    })?;
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integer arguments and only changes
    // this process's reaping attributes.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(SupervisorError::Daemonize {
            step: "become a child subreaper",
            source: nix::Error::last(),
        });
    }
    Ok(())
}

fn read_json<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> Result<T, SupervisorError> {
    let bytes = std::fs::read(path).map_err(|source| SupervisorError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| SupervisorError::Parse {
        path: path.to_owned(),
        source,
    })
}

fn supervise(dir: TaskDir) -> Result<(), SupervisorError> {
    let pid_file = dir.pid_file();
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).map_err(|source| {
        SupervisorError::Write {
            path: pid_file,
            source,
        }
    })?;
    let spec: TaskSpec = read_json(&dir.spec())?;
    let config: RuntimeConfig = read_json(&dir.runtime_config())?;
    let task_id = spec.task_id.clone();
    tracing::info!(task_id = %task_id, pid = std::process::id(), "supervisor started");
    for path in [dir.logs_dir(), dir.runtime_dir()] {
        std::fs::create_dir_all(&path).map_err(|source| SupervisorError::Write { path, source })?;
    }

    let (events, receiver) = mpsc::channel();
    let reaper_events = Mutex::new(events.clone());
    let reaper = Reaper::start(move || {
        let _ = reaper_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Event::ChildExited);
    })?;
    let spec_check = order::validate(&spec);
    let task = Task::new(dir.clone(), spec, config, reaper, events.clone());
    let hub = StatusHub::new(dir.status(), task.status())?;
    let socket = dir.socket();
    let listener = control::bind(&socket)?;
    let stop_events = Mutex::new(events);
    control::serve(listener, hub.clone(), move |reason| {
        let _ = stop_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Event::Stop(reason));
    })?;

    task.run(spec_check, &receiver, &hub);
    hub.wait_for_watchers(Duration::from_secs(2));
    if let Err(error) = std::fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), error = %error, "cannot remove control socket");
    }
    tracing::info!(task_id = %task_id, "supervisor exiting");
    Ok(())
}
