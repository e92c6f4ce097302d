//! The task state machine: starts containers in `dependsOn` order, watches them exit,
//! stops the task, and publishes every change.
//!
//! ```text
//!            all containers started              essential exit / stop request /
//! Starting ----------------------------> Running  dependency that can never be met
//!    |                                      |            |
//!    +--------------------------------------+------------+--> Stopping --> Stopped
//!      runtime create/start failure                         all containers exited
//! ```
//!
//! One thread owns all state and sleeps on an event channel fed by the reaper ("a child
//! exited") and the control socket ("stop"), waking early for the next SIGKILL deadline.
//! Each iteration starts every container whose dependencies are satisfied, claims
//! container exits from the reaper, escalates overdue stops, and publishes the status.
//! A container with a health check gets a [`HealthChecker`] thread when it starts; its
//! verdicts arrive as events too, and it stops when the container exits or the task
//! begins stopping (see [`crate::health`]).
//!
//! Stopping sends SIGTERM through the runtime to every running container and SIGKILL to
//! each one still running after its own `stop_timeout`. A container's exit code is its
//! exit status or 128 + signal (an OOM-killed main process is SIGKILLed: 137). One whose
//! cgroup saw an OOM kill is also flagged `oom_killed`, like Docker's `OOMKilled`, but
//! keeps its real exit code: a shell whose child was killed may still exit 0.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;

use crate::control::StatusHub;
use crate::health::{CheckTarget, HealthChecker};
use crate::layout::TaskDir;
use crate::logs::{pump, LogStream, LogWriter};
use crate::oom::oom_kills;
use crate::order::{self, DependencyState, Readiness};
use crate::protocol::{
    ContainerHealth, ContainerState, ContainerStatus, HealthStatus, StopCode, TaskPhase, TaskStatus,
};
use crate::reaper::{Reaper, Termination};
use crate::runtime::{ExecFiles, OciRuntime, RuntimeContainer};
use crate::spec::{ContainerRuntime, ContainerSpec, RuntimeConfig, TaskSpec};
use crate::SupervisorError;

/// What wakes the task loop.
#[derive(Debug)]
pub enum Event {
    /// The reaper recorded an exit.
    ChildExited,
    /// The agent asked to stop the task.
    Stop(String),
    /// The health of the container at this index changed.
    Health {
        container: usize,
        health: ContainerHealth,
    },
}

const ESSENTIAL_EXITED: &str = "Essential container in task exited";
const OOM_REASON: &str = "OutOfMemoryError: Container killed due to memory usage";
/// How long to sleep when nothing has a deadline.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

struct Container {
    spec: ContainerSpec,
    runtime: ContainerRuntime,
    status: ContainerStatus,
    /// When `create` began; exits recorded earlier belong to a reused pid.
    created_at: Option<Instant>,
    /// When SIGKILL is due, once SIGTERM was sent.
    kill_at: Option<Instant>,
    pumps: Vec<JoinHandle<()>>,
    checker: Option<HealthChecker>,
}

/// One task being supervised.
pub struct Task {
    dir: TaskDir,
    task_id: String,
    containers: Vec<Container>,
    phase: TaskPhase,
    stop_code: Option<StopCode>,
    stopped_reason: Option<String>,
    runtime: OciRuntime,
    reaper: Reaper,
    log_max_bytes: u64,
    task_memory_cgroup: Option<std::path::PathBuf>,
    task_oom_seen: u64,
    /// Where health checkers send their verdicts.
    events: Sender<Event>,
}

impl Task {
    pub fn new(
        dir: TaskDir,
        spec: TaskSpec,
        config: RuntimeConfig,
        reaper: Reaper,
        events: Sender<Event>,
    ) -> Self {
        let task_id = spec.task_id;
        let containers = spec
            .containers
            .into_iter()
            .map(|spec| {
                // The driver lists every container; the layout default keeps a hand-written
                // supervisor.json usable.
                let runtime = config
                    .containers
                    .iter()
                    .find(|c| c.name == spec.name)
                    .cloned()
                    .unwrap_or_else(|| ContainerRuntime {
                        name: spec.name.clone(),
                        id: crate::spec::container_id(&task_id, &spec.name),
                        bundle: dir.bundle(&spec.name),
                        memory_cgroup: None,
                    });
                Container {
                    status: ContainerStatus {
                        name: spec.name.clone(),
                        state: ContainerState::Pending,
                        pid: None,
                        exit_code: None,
                        oom_killed: false,
                        started_at: None,
                        finished_at: None,
                        reason: None,
                        health: None,
                    },
                    spec,
                    runtime,
                    created_at: None,
                    kill_at: None,
                    pumps: Vec::new(),
                    checker: None,
                }
            })
            .collect();
        let task_oom_seen = config
            .task_memory_cgroup
            .as_deref()
            .and_then(oom_kills)
            .unwrap_or(0);
        Task {
            runtime: OciRuntime::new(config.runtime, config.runtime_root, reaper.clone()),
            dir,
            task_id,
            containers,
            phase: TaskPhase::Starting,
            stop_code: None,
            stopped_reason: None,
            reaper,
            log_max_bytes: config.log_max_bytes,
            task_memory_cgroup: config.task_memory_cgroup,
            task_oom_seen,
            events,
        }
    }

    pub fn status(&self) -> TaskStatus {
        TaskStatus {
            task_id: self.task_id.clone(),
            phase: self.phase,
            stop_code: self.stop_code,
            stopped_reason: self.stopped_reason.clone(),
            containers: self.containers.iter().map(|c| c.status.clone()).collect(),
        }
    }

    /// Runs the task to completion and returns its final status.
    pub fn run(
        mut self,
        spec_check: Result<(), String>,
        events: &Receiver<Event>,
        hub: &StatusHub,
    ) -> TaskStatus {
        if let Err(reason) = spec_check {
            self.begin_stop(StopCode::TaskFailedToStart, reason);
        }
        loop {
            if self.phase != TaskPhase::Stopping {
                self.start_ready_containers();
            }
            if self.phase == TaskPhase::Starting
                && self
                    .containers
                    .iter()
                    .all(|c| c.status.state != ContainerState::Pending)
            {
                self.phase = TaskPhase::Running;
                tracing::info!(task_id = %self.task_id, "task running");
            }
            self.publish(hub);
            if self.containers.iter().all(|c| c.status.state.is_final()) {
                break;
            }
            let timeout = self
                .containers
                .iter()
                .filter_map(|c| c.kill_at)
                .min()
                .map_or(IDLE_WAIT, |at| at.saturating_duration_since(Instant::now()));
            match events.recv_timeout(timeout) {
                Ok(Event::Stop(reason)) => self.begin_stop(StopCode::UserInitiated, reason),
                Ok(Event::Health { container, health }) => self.health_changed(container, health),
                Ok(Event::ChildExited) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Both senders live as long as the process; never expected.
                    tracing::error!(task_id = %self.task_id, "event channel closed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            self.collect_exits();
            self.enforce_kill_deadlines();
        }
        for container in &mut self.containers {
            for pump in container.pumps.drain(..) {
                let _ = pump.join();
            }
            if let Some(checker) = container.checker.take() {
                checker.join();
            }
        }
        self.phase = TaskPhase::Stopped;
        if self.stop_code.is_none() {
            self.stop_code = Some(StopCode::EssentialContainerExited);
            self.stopped_reason = Some(ESSENTIAL_EXITED.to_owned());
        }
        self.publish(hub);
        tracing::info!(task_id = %self.task_id, reason = ?self.stopped_reason, "task stopped");
        self.status()
    }

    fn publish(&self, hub: &StatusHub) {
        if let Err(error) = hub.publish(&self.status()) {
            tracing::error!(task_id = %self.task_id, error = %error, "cannot persist task status");
        }
    }

    fn start_ready_containers(&mut self) {
        // Starting one container can satisfy another's START dependency: repeat until
        // nothing changes.
        let mut progress = true;
        while progress && self.phase != TaskPhase::Stopping {
            progress = false;
            for index in 0..self.containers.len() {
                if self.containers[index].status.state != ContainerState::Pending {
                    continue;
                }
                let readiness = order::readiness(&self.containers[index].spec, |name| {
                    self.containers
                        .iter()
                        .find(|c| c.spec.name == name)
                        .map(|c| DependencyState {
                            state: c.status.state,
                            exit_code: c.status.exit_code,
                            health: c.status.health.as_ref().map(|h| h.status),
                        })
                });
                match readiness {
                    Readiness::Wait => {}
                    Readiness::Ready => {
                        self.start_container(index);
                        progress = true;
                    }
                    Readiness::Never(reason) => {
                        tracing::warn!(task_id = %self.task_id, container = %self.containers[index].spec.name, %reason, "dependency can never be satisfied");
                        let status = &mut self.containers[index].status;
                        status.state = ContainerState::NotStarted;
                        status.reason = Some(reason.clone());
                        self.begin_stop(StopCode::TaskFailedToStart, reason);
                        return;
                    }
                }
            }
        }
    }

    fn start_container(&mut self, index: usize) {
        let name = self.containers[index].spec.name.clone();
        match self.create_and_start(index) {
            Ok(pid) => {
                let status = &mut self.containers[index].status;
                status.state = ContainerState::Running;
                status.pid = Some(pid);
                status.started_at = Some(now_millis());
                tracing::info!(task_id = %self.task_id, container = %name, pid, "container started");
                self.start_health_checks(index);
            }
            Err(error) => {
                let reason = format!("CannotStartContainerError: {error}");
                tracing::error!(task_id = %self.task_id, container = %name, error = %error, "container failed to start");
                let container = &mut self.containers[index];
                if let Err(error) = self
                    .runtime
                    .delete(&runtime_container(&self.dir, container))
                {
                    tracing::debug!(container = %name, error = %error, "nothing to delete after failed start");
                }
                container.status.state = ContainerState::NotStarted;
                container.status.pid = None;
                container.status.reason = Some(reason.clone());
                self.begin_stop(StopCode::TaskFailedToStart, reason);
            }
        }
    }

    fn start_health_checks(&mut self, index: usize) {
        let container = &self.containers[index];
        let Some(check) = container.spec.health_check.clone() else {
            return;
        };
        let name = container.spec.name.clone();
        let target = CheckTarget {
            task_id: self.task_id.clone(),
            container: runtime_container(&self.dir, container),
            files: ExecFiles {
                output: self.dir.health_output(&name),
                pid_file: self.dir.health_pid_file(&name),
            },
            check,
        };
        let events = self.events.clone();
        let report = move |health| {
            let _ = events.send(Event::Health {
                container: index,
                health,
            });
        };
        let container = &mut self.containers[index];
        container.status.health = Some(ContainerHealth {
            status: HealthStatus::Unknown,
            since: now_millis(),
            exit_code: None,
            output: String::new(),
        });
        match HealthChecker::start(target, self.runtime.clone(), report) {
            Ok(checker) => container.checker = Some(checker),
            Err(error) => {
                // The container runs on with its health UNKNOWN, as one whose checks
                // never finish would.
                tracing::error!(task_id = %self.task_id, container = %name, error = %error, "cannot start health checks");
            }
        }
    }

    /// Applies a checker's verdict while the container runs; one that arrives after
    /// the checks were stopped belongs to a dying container and is dropped.
    fn health_changed(&mut self, index: usize, health: ContainerHealth) {
        let Some(container) = self.containers.get_mut(index) else {
            return;
        };
        if container.status.state == ContainerState::Running
            && container
                .checker
                .as_ref()
                .is_some_and(HealthChecker::is_running)
        {
            container.status.health = Some(health);
        }
    }

    fn create_and_start(&mut self, index: usize) -> Result<i32, SupervisorError> {
        let container = &mut self.containers[index];
        let writer = Arc::new(Mutex::new(LogWriter::open(
            &self.dir,
            &container.spec.name,
            self.log_max_bytes,
        )?));
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        for (read, stream) in [
            (stdout_read, LogStream::Stdout),
            (stderr_read, LogStream::Stderr),
        ] {
            let writer = writer.clone();
            let pump_thread = std::thread::Builder::new()
                .name(format!("log-{}", container.spec.name))
                .stack_size(64 * 1024)
                .spawn(move || pump(File::from(read), stream, writer))
                .map_err(SupervisorError::Thread)?;
            container.pumps.push(pump_thread);
        }
        container.status.state = ContainerState::Created;
        container.created_at = Some(Instant::now());
        let handle = runtime_container(&self.dir, container);
        let pid = self.runtime.create(
            &handle,
            Stdio::from(stdout_write),
            Stdio::from(stderr_write),
        )?;
        container.status.pid = Some(pid);
        self.runtime.start(&handle)?;
        Ok(pid)
    }

    fn collect_exits(&mut self) {
        for index in 0..self.containers.len() {
            let container = &self.containers[index];
            let (Some(pid), Some(created_at)) = (container.status.pid, container.created_at) else {
                continue;
            };
            if container.status.state != ContainerState::Running {
                continue;
            }
            if let Some(termination) = self.reaper.try_take(pid, created_at) {
                self.container_exited(index, termination);
            }
        }
    }

    fn container_exited(&mut self, index: usize, termination: Termination) {
        let oom_killed = self.oom_killed(index, termination);
        let container = &mut self.containers[index];
        let status = &mut container.status;
        status.state = ContainerState::Exited;
        status.finished_at = Some(now_millis());
        status.exit_code = Some(termination.code());
        status.oom_killed = oom_killed;
        if oom_killed {
            status.reason = Some(OOM_REASON.to_owned());
        }
        container.kill_at = None;
        if let Some(checker) = &mut container.checker {
            checker.stop();
        }
        tracing::info!(task_id = %self.task_id, container = %container.spec.name, exit_code = ?status.exit_code, oom_killed, "container exited");
        if let Err(error) = self
            .runtime
            .delete(&runtime_container(&self.dir, container))
        {
            tracing::warn!(task_id = %self.task_id, container = %container.spec.name, error = %error, "cannot delete exited container; the driver removes it with the task");
        }
        if container.spec.essential {
            self.begin_stop(
                StopCode::EssentialContainerExited,
                ESSENTIAL_EXITED.to_owned(),
            );
        }
    }

    /// Whether the OOM killer took a process of this container: its own cgroup's counter,
    /// or, for a SIGKILLed init, a task-level kill nobody else has claimed.
    fn oom_killed(&mut self, index: usize, termination: Termination) -> bool {
        let container = &self.containers[index];
        if container
            .runtime
            .memory_cgroup
            .as_deref()
            .and_then(oom_kills)
            .unwrap_or(0)
            > 0
        {
            return true;
        }
        let task_kills = self
            .task_memory_cgroup
            .as_deref()
            .and_then(oom_kills)
            .unwrap_or(0);
        if task_kills > self.task_oom_seen
            && termination == Termination::Signaled(libc::SIGKILL)
            && container.kill_at.is_none()
        {
            self.task_oom_seen = task_kills;
            return true;
        }
        false
    }

    fn begin_stop(&mut self, code: StopCode, reason: String) {
        if matches!(self.phase, TaskPhase::Stopping | TaskPhase::Stopped) {
            return;
        }
        tracing::info!(task_id = %self.task_id, stop_code = ?code, %reason, "stopping task");
        self.phase = TaskPhase::Stopping;
        self.stop_code = Some(code);
        self.stopped_reason = Some(reason);
        let now = Instant::now();
        for container in &mut self.containers {
            if let Some(checker) = &mut container.checker {
                checker.stop();
            }
            match container.status.state {
                ContainerState::Pending => {
                    container.status.state = ContainerState::NotStarted;
                    container.status.reason.get_or_insert_with(|| {
                        "the task stopped before this container started".to_owned()
                    });
                }
                ContainerState::Running => {
                    container.kill_at = Some(now + container.spec.stop_timeout);
                    if let Err(error) = self
                        .runtime
                        .kill(&runtime_container(&self.dir, container), "TERM")
                    {
                        tracing::debug!(container = %container.spec.name, error = %error, "SIGTERM not delivered; the container is probably exiting");
                    }
                }
                _ => {}
            }
        }
    }

    fn enforce_kill_deadlines(&mut self) {
        let now = Instant::now();
        for container in &mut self.containers {
            if container.status.state != ContainerState::Running
                || container.kill_at.is_none_or(|at| at > now)
            {
                continue;
            }
            tracing::info!(task_id = %self.task_id, container = %container.spec.name, "stop timeout elapsed; sending SIGKILL");
            // Never again: the exit arrives through the reaper.
            container.kill_at = Some(now + IDLE_WAIT);
            if let Err(error) = self
                .runtime
                .kill(&runtime_container(&self.dir, container), "KILL")
            {
                tracing::warn!(container = %container.spec.name, error = %error, "runtime kill failed; killing init directly");
                if let Some(pid) = container.status.pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn runtime_container(dir: &TaskDir, container: &Container) -> RuntimeContainer {
    RuntimeContainer {
        name: container.spec.name.clone(),
        id: container.runtime.id.clone(),
        bundle: container.runtime.bundle.clone(),
        pid_file: dir.container_pid_file(&container.spec.name),
        log_file: dir.runtime_log(&container.spec.name),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SupervisorError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SupervisorError::Pipe)
}

pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
