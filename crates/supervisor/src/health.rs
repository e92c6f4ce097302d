//! Container health checks, with ECS's (that is, Docker's) semantics.
//!
//! Each container that has a check gets one [`HealthChecker`] thread when it starts. The
//! thread sleeps `interval`, runs the check in the container through the OCI runtime's
//! `exec` (same namespaces, user, environment and working directory as the container's
//! process), kills it at `timeout`, feeds the result to a [`HealthMonitor`] and reports
//! every change of verdict to the task loop, which publishes it in the task status. The
//! thread stops when the container exits or the task begins stopping; a check in
//! progress then finishes (the container's end kills it) and its result is dropped.
//!
//! ```text
//!              check passes
//!   UNKNOWN ------------------> HEALTHY
//!      |                        ^     |
//!      | `retries` consecutive  |     | `retries` consecutive
//!      | counted failures       |     | failures
//!      |           check passes |     v
//!      +--------------------> UNHEALTHY
//! ```
//!
//! A failure is a non-zero exit, a check killed at its timeout, or a check the runtime
//! could not run. While the container is still UNKNOWN and within `start_period` of its
//! start, failures do not count; a pass there makes it HEALTHY at once, and from then on
//! every failure counts. Any pass resets the failure streak.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::protocol::{ContainerHealth, HealthStatus};
use crate::runtime::{ExecFiles, OciRuntime, RuntimeContainer};
use crate::spec::HealthCheck;
use crate::SupervisorError;

/// The most output kept from one check, in bytes.
pub const MAX_OUTPUT: usize = 1024;

/// The verdict of a container's checks so far: a pure state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthMonitor {
    retries: u32,
    start_period: Duration,
    status: HealthStatus,
    failures: u32,
}

impl HealthMonitor {
    pub fn new(retries: u32, start_period: Duration) -> Self {
        HealthMonitor {
            retries: retries.max(1),
            start_period,
            status: HealthStatus::Unknown,
            failures: 0,
        }
    }

    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// Records a check that began `elapsed` after the container started; returns the
    /// new status when it changed.
    pub fn record(&mut self, passed: bool, elapsed: Duration) -> Option<HealthStatus> {
        let before = self.status;
        if passed {
            self.failures = 0;
            self.status = HealthStatus::Healthy;
        } else if self.status != HealthStatus::Unknown || elapsed >= self.start_period {
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// Where and how one container's checks run.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    pub task_id: String,
    pub container: RuntimeContainer,
    pub files: ExecFiles,
    pub check: HealthCheck,
}

/// The thread running one container's checks. Dropping it stops scheduling checks
/// without waiting; [`HealthChecker::join`] waits for the thread.
#[derive(Debug)]
pub struct HealthChecker {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HealthChecker {
    /// Starts checking a container that has just started; `report` receives each change.
    pub fn start(
        target: CheckTarget,
        runtime: OciRuntime,
        report: impl Fn(ContainerHealth) + Send + 'static,
    ) -> Result<Self, SupervisorError> {
        let (stop, stopped) = mpsc::channel();
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name(format!("health-{}", target.container.name))
            .stack_size(128 * 1024)
            .spawn(move || check_until_stopped(&target, &runtime, started, &stopped, report))
            .map_err(SupervisorError::Thread)?;
        Ok(HealthChecker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Schedules no further check; a check in progress finishes, unreported.
    pub fn stop(&mut self) {
        self.stop.take();
    }

    /// Whether checks are still scheduled.
    pub fn is_running(&self) -> bool {
        self.stop.is_some()
    }

    /// Stops and waits for the thread.
    pub fn join(mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn check_until_stopped(
    target: &CheckTarget,
    runtime: &OciRuntime,
    started: Instant,
    stopped: &Receiver<()>,
    report: impl Fn(ContainerHealth),
) {
    let check = &target.check;
    let name = &target.container.name;
    let mut monitor = HealthMonitor::new(check.retries, check.start_period);
    loop {
        match stopped.recv_timeout(check.interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let began = Instant::now();
        let (exit_code, output) = match runtime.exec(
            &target.container,
            &target.files,
            &check.command,
            check.timeout,
            MAX_OUTPUT,
        ) {
            Ok(outcome) => match outcome.exit_code {
                Some(code) => (Some(code), outcome.output),
                None => (
                    None,
                    format!(
                        "health check timed out after {} s{}{}",
                        check.timeout.as_secs_f64(),
                        if outcome.output.is_empty() { "" } else { ": " },
                        outcome.output
                    ),
                ),
            },
            Err(error) => (None, crate::error_chain(&error)),
        };
        if matches!(stopped.try_recv(), Err(TryRecvError::Disconnected) | Ok(())) {
            return;
        }
        let passed = exit_code == Some(0);
        tracing::debug!(task_id = %target.task_id, container = %name, ?exit_code, passed, %output, "health check finished");
        if let Some(status) = monitor.record(passed, began.duration_since(started)) {
            tracing::info!(task_id = %target.task_id, container = %name, health = status.as_str(), ?exit_code, %output, "container health changed");
            report(ContainerHealth {
                status,
                since: crate::task::now_millis(),
                exit_code,
                output,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_pass_makes_healthy_and_retries_failures_make_unhealthy() {
        let mut monitor = HealthMonitor::new(3, Duration::ZERO);
        assert_eq!(monitor.status(), HealthStatus::Unknown);
        assert_eq!(monitor.record(false, S), None);
        assert_eq!(monitor.record(false, 2 * S), None);
        assert_eq!(
            monitor.record(false, 3 * S),
            Some(HealthStatus::Unhealthy),
            "the third consecutive failure"
        );
        assert_eq!(monitor.record(false, 4 * S), None, "no change, no report");
        assert_eq!(monitor.record(true, 5 * S), Some(HealthStatus::Healthy));
        assert_eq!(monitor.record(true, 6 * S), None);
    }

    #[test]
    fn a_pass_resets_the_failure_streak() {
        let mut monitor = HealthMonitor::new(2, Duration::ZERO);
        assert_eq!(monitor.record(true, S), Some(HealthStatus::Healthy));
        assert_eq!(monitor.record(false, 2 * S), None);
        assert_eq!(monitor.record(true, 3 * S), None);
        assert_eq!(monitor.record(false, 4 * S), None, "streak restarted at 1");
        assert_eq!(monitor.record(false, 5 * S), Some(HealthStatus::Unhealthy));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let mut monitor = HealthMonitor::new(1, 10 * S);
        for elapsed in 0..10 {
            assert_eq!(monitor.record(false, elapsed * S), None);
        }
        assert_eq!(monitor.status(), HealthStatus::Unknown);
        assert_eq!(
            monitor.record(false, 10 * S),
            Some(HealthStatus::Unhealthy),
            "the first failure after the start period counts"
        );
    }

    #[test]
    fn a_pass_in_the_start_period_ends_it() {
        let mut monitor = HealthMonitor::new(2, 60 * S);
        assert_eq!(monitor.record(false, S), None);
        assert_eq!(monitor.record(true, 2 * S), Some(HealthStatus::Healthy));
        assert_eq!(monitor.record(false, 3 * S), None);
        assert_eq!(
            monitor.record(false, 4 * S),
            Some(HealthStatus::Unhealthy),
            "once healthy, failures count even within the start period"
        );
    }

    #[test]
    fn zero_retries_behave_as_one() {
        let mut monitor = HealthMonitor::new(0, Duration::ZERO);
        assert_eq!(monitor.record(false, S), Some(HealthStatus::Unhealthy));
    }
}
