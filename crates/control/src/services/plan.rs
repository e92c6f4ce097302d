//! One scheduling decision for one service, as a pure function: the service record and
//! its tasks in, the tasks to start and stop and the updated record out. The scheduler
//! ([`super::scheduler`]) gathers the inputs and carries the decision out; everything
//! that can be decided without I/O is decided here, so it is tested here.
//!
//! A pass, in order:
//!
//! ```text
//! 1. account   tasks newly told to stop: a failure (not stopped by the scheduler or a
//!              user) counts against the deployment (circuit breaker) and the service's
//!              failure streak (launch back-off)
//! 2. replace   RUNNING tasks that are unhealthy past the grace period are stopped
//! 3. breaker   a deployment with failedTasks >= threshold is FAILED; with rollback on,
//!              a new deployment of the last COMPLETED task definition takes over
//! 4. drain     old deployments' tasks: not-yet-healthy ones go at once, healthy ones
//!              only while the healthy count stays >= ceil(desired x min%)
//! 5. scale     the primary's extra tasks (desired count lowered) are stopped
//! 6. launch    primary tasks up to desired, total within floor(desired x max%), unless
//!              the back-off holds launches or the deployment FAILED
//! 7. settle    empty old deployments leave; counts, rolloutState, steady-state event
//! ```
//!
//! Every decision is derived from the tasks' records, so running a pass twice, or
//! after a crash between a launch and the record's write, neither duplicates nor
//! forgets tasks.

use std::collections::BTreeSet;

use model::service::{circuit_breaker_threshold, Deployment, ServiceEvent};
use model::task::{StopCode, TaskStatus};
use model::Timestamp;

use super::ServiceRecord;

/// How the stoppedReason of a task replaced for failing its checks begins.
pub(crate) const HEALTH_FAILURE: &str = "Task failed ";

/// The longest wait between launches of a service whose tasks keep failing.
pub(crate) const MAX_BACKOFF_SECS: f64 = 300.0;

/// How the scheduler judges a task's health, ECS's way: container health checks if an
/// essential container has one, load balancer target health if the service has one,
/// else 40 seconds of RUNNING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    /// Not (yet) counted as healthy.
    Pending,
    Healthy,
    /// Failing its checks; the reason is the task's stoppedReason if it is replaced.
    Unhealthy(String),
}

/// What the planner needs of one task of the service.
#[derive(Debug, Clone)]
pub(crate) struct TaskView {
    pub id: String,
    /// The deployment that started it (the task's `startedBy`).
    pub deployment: Option<String>,
    pub last_status: TaskStatus,
    /// False once anyone asked the task to stop.
    pub desired_running: bool,
    pub started_at: Option<Timestamp>,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    pub health: Health,
}

impl TaskView {
    fn active(&self) -> bool {
        self.desired_running && self.last_status != TaskStatus::Stopped
    }

    fn running(&self) -> bool {
        self.last_status == TaskStatus::Running
    }

    /// Whether the scheduler should count this stop against the service: any stop but
    /// a user's or the scheduler's own, except the scheduler's for failed checks.
    fn failed(&self) -> bool {
        match self.stop_code.as_deref() {
            Some(code) if code == StopCode::ServiceSchedulerInitiated.as_str() => self
                .stopped_reason
                .as_deref()
                .is_some_and(|r| r.starts_with(HEALTH_FAILURE)),
            Some(code) if code == StopCode::UserInitiated.as_str() => false,
            _ => true,
        }
    }
}

/// What a pass decided.
#[derive(Debug)]
pub(crate) struct Plan {
    /// The record to write, with deployments, counts, events and scheduler state.
    pub record: ServiceRecord,
    /// `(deployment id, task definition, count)` to start.
    pub launches: Vec<(String, String, u32)>,
    /// `(task id, stoppedReason)` to stop with `ServiceSchedulerInitiated`.
    pub stops: Vec<(String, String)>,
    /// Events that tell of `stops` and `launches` decided here; they are written with
    /// the record that follows those actions.
    pub action_events: Vec<String>,
}

/// Decides one pass for a service at time `now`.
pub(crate) fn plan(record: &ServiceRecord, tasks: &[TaskView], now: Timestamp) -> Plan {
    let mut record = record.clone();
    let mut stops: Vec<(String, String)> = Vec::new();
    let name = record.service.service_name.clone();
    let desired = if record.service.status == "ACTIVE" {
        record.service.desired_count
    } else {
        0
    };
    let config = record.service.deployment_configuration.clone();
    let grace = f64::from(record.service.health_check_grace_period_seconds);
    let known: BTreeSet<String> = record
        .service
        .deployments
        .iter()
        .map(|d| d.id.clone())
        .collect();

    // 1. Account for tasks told to stop since the last pass.
    let mut events = Vec::new();
    let mut failures = 0;
    for task in tasks.iter().filter(|t| !t.desired_running) {
        if !record.scheduler.accounted.insert(task.id.clone()) || !task.failed() {
            continue;
        }
        failures += 1;
        if let Some(d) = deployment_mut(&mut record.service.deployments, &task.deployment) {
            d.failed_tasks += 1;
        }
    }
    // Forget accounted tasks whose records are gone (past retention).
    let present: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    record
        .scheduler
        .accounted
        .retain(|id| present.contains(id.as_str()));

    let mut active: Vec<&TaskView> = tasks.iter().filter(|t| t.active()).collect();
    let mut stop = |task: &TaskView, reason: String, active: &mut Vec<&TaskView>| {
        active.retain(|t| t.id != task.id);
        stops.push((task.id.clone(), reason));
    };

    // Tasks of no current deployment (an earlier service of the same name).
    for task in active.clone() {
        if !task.deployment.as_ref().is_some_and(|d| known.contains(d)) {
            stop(
                task,
                "Task is not part of any deployment of the service".into(),
                &mut active,
            );
        }
    }

    // 2. Replace tasks failing their health checks once the grace period is over; the
    //    next pass counts them as failures (their stop reason says why).
    let mut action_events = Vec::new();
    let mut health_stops = BTreeSet::new();
    for task in active.clone() {
        let Health::Unhealthy(reason) = &task.health else {
            continue;
        };
        let started = task.started_at.unwrap_or(now);
        if !task.running() || now < started + grace {
            continue;
        }
        action_events.push(format!(
            "(service {name}) (task {}) failed {reason}.",
            task.id
        ));
        health_stops.insert(task.id.clone());
        stop(task, format!("{HEALTH_FAILURE}{reason}"), &mut active);
    }

    // The launch back-off: the streak grows with each failure and resets once a task
    // started after the last failure is healthy.
    let healthy_since_failure = active.iter().any(|t| {
        t.health == Health::Healthy
            && record
                .scheduler
                .last_failure_at
                .is_none_or(|at| t.started_at.is_some_and(|s| s >= at))
    });
    if failures > 0 {
        record.scheduler.failure_streak += failures;
        record.scheduler.last_failure_at = Some(now);
    } else if healthy_since_failure && record.scheduler.failure_streak > 0 {
        record.scheduler.failure_streak = 0;
    }
    let backoff = backoff_secs(record.scheduler.failure_streak, desired);
    let launch_after = record.scheduler.last_failure_at.unwrap_or(0.0) + backoff;
    if failures > 0 && backoff > 0.0 {
        events.push(format!(
            "(service {name}) is unable to consistently start tasks successfully: the next \
             launch waits {backoff:.0} s."
        ));
    }

    // 3. The circuit breaker.
    let breaker = config.circuit_breaker();
    if let Some(primary) = record.service.deployments.first_mut() {
        let threshold = circuit_breaker_threshold(desired);
        if breaker.enable
            && primary.rollout_state == "IN_PROGRESS"
            && primary.failed_tasks >= threshold
        {
            primary.rollout_state = "FAILED".into();
            primary.rollout_state_reason = format!(
                "ECS deployment circuit breaker: tasks failed to start ({} failed, threshold {threshold}).",
                primary.failed_tasks
            );
            primary.updated_at = now;
            events.push(format!(
                "(service {name}) (deployment {}) deployment failed: tasks failed to start.",
                primary.id
            ));
            let failed_definition = primary.task_definition.clone();
            if let Some(good) = record
                .scheduler
                .last_completed
                .clone()
                .filter(|good| breaker.rollback && *good != failed_definition)
            {
                let rollback = super::new_deployment(&record.service, &good, now);
                events.push(format!(
                    "(service {name}) rolling back to deployment {}.",
                    rollback.id
                ));
                record.service.task_definition = good;
                record.service.deployments.insert(0, rollback);
                record.scheduler.failure_streak = 0;
            }
        }
    }
    for (i, d) in record.service.deployments.iter_mut().enumerate() {
        d.status = if i == 0 { "PRIMARY" } else { "ACTIVE" }.into();
    }
    let primary_id = record.service.deployments.first().map(|d| d.id.clone());
    let primary_failed = record
        .service
        .deployments
        .first()
        .is_some_and(|d| d.rollout_state == "FAILED");
    let is_primary = |t: &TaskView| t.deployment.is_some() && t.deployment == primary_id;

    // 4. Drain old deployments within the minimum healthy bound.
    let minimum_healthy = config.minimum_healthy(desired);
    let mut healthy = active
        .iter()
        .filter(|t| t.health == Health::Healthy)
        .count() as u32;
    let mut old: Vec<&TaskView> = active.iter().copied().filter(|t| !is_primary(t)).collect();
    // Not-yet-healthy tasks first: stopping them costs no healthy capacity.
    old.sort_by_key(|t| t.health == Health::Healthy);
    for task in old {
        if task.health == Health::Healthy {
            if healthy <= minimum_healthy {
                break;
            }
            healthy -= 1;
        }
        stop(
            task,
            "Task replaced by a newer deployment of the service".into(),
            &mut active,
        );
    }

    // 5. Scale the primary down to the desired count, least useful tasks first.
    let mut primary: Vec<&TaskView> = active.iter().copied().filter(|t| is_primary(t)).collect();
    if primary.len() as u32 > desired {
        primary.sort_by_key(|t| (t.health == Health::Healthy, t.running()));
        let extra = primary.len() - desired as usize;
        for task in primary.drain(..extra) {
            stop(
                task,
                "Task stopped because the service's desired count was lowered".into(),
                &mut active,
            );
        }
    }

    // 6. Launch what the primary lacks, within maximumPercent.
    let mut launches = Vec::new();
    let room = config
        .maximum_tasks(desired)
        .saturating_sub(active.len() as u32);
    let lacking = desired.saturating_sub(primary.len() as u32);
    let wanted = lacking.min(room);
    if wanted > 0 && !primary_failed && now >= launch_after {
        if let Some(d) = record.service.deployments.first() {
            launches.push((d.id.clone(), d.task_definition.clone(), wanted));
        }
    }

    // 7. Settle: old deployments without tasks leave; counts and rollout state.
    for (id, _) in stops.iter().filter(|(id, _)| !health_stops.contains(id)) {
        record.scheduler.accounted.insert(id.clone());
    }
    let ids_with_tasks: BTreeSet<&str> = active
        .iter()
        .filter_map(|t| t.deployment.as_deref())
        .collect();
    let primary_ref = primary_id.clone();
    record
        .service
        .deployments
        .retain(|d| Some(&d.id) == primary_ref.as_ref() || ids_with_tasks.contains(d.id.as_str()));
    for d in &mut record.service.deployments {
        let mine: Vec<&&TaskView> = active
            .iter()
            .filter(|t| t.deployment.as_deref() == Some(d.id.as_str()))
            .collect();
        let running = mine.iter().filter(|t| t.running()).count() as u32;
        let pending = mine.len() as u32 - running;
        let is_primary = Some(&d.id) == primary_ref.as_ref();
        let desired_here = if is_primary {
            desired
        } else {
            mine.len() as u32
        };
        if (d.running_count, d.pending_count, d.desired_count) != (running, pending, desired_here) {
            d.updated_at = now;
        }
        d.running_count = running;
        d.pending_count = pending;
        d.desired_count = desired_here;
    }
    let single = record.service.deployments.len() == 1;
    if let Some(d) = record.service.deployments.first_mut() {
        let all_healthy = active
            .iter()
            .filter(|t| is_primary(t) && t.health == Health::Healthy)
            .count() as u32
            == desired;
        if single && d.rollout_state == "IN_PROGRESS" && d.running_count == desired && all_healthy {
            d.rollout_state = "COMPLETED".into();
            d.rollout_state_reason = format!("ECS deployment {} completed.", d.id);
            d.updated_at = now;
            record.scheduler.last_completed = Some(d.task_definition.clone());
            events.push(format!(
                "(service {name}) (deployment {}) deployment completed.",
                d.id
            ));
        }
    }
    record.service.running_count = active.iter().filter(|t| t.running()).count() as u32;
    record.service.pending_count = active.len() as u32 - record.service.running_count;

    let steady = single
        && launches.is_empty()
        && stops.is_empty()
        && record.service.running_count == desired
        && record.service.pending_count == 0;
    if steady && !record.scheduler.steady && record.service.status == "ACTIVE" {
        events.push(format!("(service {name}) has reached a steady state."));
    }
    record.scheduler.steady = steady;
    let all_stopped = tasks.iter().all(|t| t.last_status == TaskStatus::Stopped);
    if record.service.status == "DRAINING" && all_stopped && stops.is_empty() {
        record.service.status = "INACTIVE".into();
    }
    for message in events {
        push_event(&mut record, message, now);
    }
    Plan {
        record,
        launches,
        stops,
        action_events,
    }
}

/// Seconds to hold launches after the latest failure: none while the streak is within
/// one round of the desired count (a whole round may fail at once, and a single death
/// is replaced at once), then doubling from 1 s up to [`MAX_BACKOFF_SECS`].
pub(crate) fn backoff_secs(streak: u32, desired: u32) -> f64 {
    let free = desired.max(1);
    if streak <= free {
        return 0.0;
    }
    let doublings = (streak - free - 1).min(16);
    f64::from(1u32 << doublings).min(MAX_BACKOFF_SECS)
}

/// Adds an event, newest first, keeping the last [`model::service::MAX_EVENTS`].
pub(crate) fn push_event(record: &mut ServiceRecord, message: String, now: Timestamp) {
    tracing::info!(service = %record.service.service_name, message = %message, "service event");
    record.service.events.insert(
        0,
        ServiceEvent {
            id: model::arn::new_uuid(),
            created_at: now,
            message,
        },
    );
    record.service.events.truncate(model::service::MAX_EVENTS);
}

fn deployment_mut<'a>(
    deployments: &'a mut [Deployment],
    id: &Option<String>,
) -> Option<&'a mut Deployment> {
    let id = id.as_deref()?;
    deployments.iter_mut().find(|d| d.id == id)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
