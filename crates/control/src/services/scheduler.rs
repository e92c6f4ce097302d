//! The service scheduler: one loop that keeps every service's tasks as its record asks.
//!
//! It wakes when a service changes (API), when a service's task changes (agent reports,
//! stops), when a load balancer target changes, and at least once per second (grace
//! periods, the 40-second health rule, back-off expiry). A pass lists the services and,
//! once per cluster, the tasks; then it takes one service at a time: its record and the
//! tasks of its group, [`plan`](super::plan::plan), stop and start tasks, then write the record
//! with compare-and-swap. When the write loses a race (an UpdateService meanwhile), the
//! pass runs again on fresh data: the tasks it already started or stopped are in the
//! store by then, so the new plan does not repeat them, and the events of the lost
//! write are carried over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use model::service::Service;
use model::task::TaskStatus;
use model::{EcsError, Timestamp};
use store::{Expect, StoreError, StoreJsonExt, Versioned};
use tokio::sync::Notify;

use super::plan::{plan, push_event, Health, TaskView};
use super::{service_group, service_key, ServiceRecord};
use crate::{internal, Control, TaskRecord};

/// The longest the scheduler sleeps without a reason to wake.
const TICK: Duration = Duration::from_secs(1);
/// Without health checks or a load balancer, a task counts as healthy after this long
/// in RUNNING (ECS's rule for minimumHealthyPercent).
const HEALTHY_AFTER_SECS: f64 = 40.0;
/// Passes of one service in a row that lose their write before the scheduler moves on.
const MAX_ATTEMPTS: usize = 5;

/// Wakes the scheduler loop. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct SchedulerHandle {
    notify: Arc<Notify>,
}

impl SchedulerHandle {
    /// Asks for a pass soon; wakes coalesce.
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }
}

impl Control {
    /// Runs scheduling passes until the task is aborted.
    pub(crate) async fn run_scheduler(&self) {
        let handle = self.scheduler().clone();
        let mut targets = self.balancer().map(|b| b.changes());
        loop {
            if let Err(e) = self.schedule_all().await {
                tracing::warn!(error = %e, "service scheduling pass failed; retrying");
            }
            let target_change = async {
                let changed = match targets.as_mut() {
                    Some(changes) => changes.changed().await.is_ok(),
                    None => false,
                };
                if !changed {
                    // No balancer (or it shut down): only the other wake-ups remain.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = handle.notify.notified() => {}
                () = target_change => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn schedule_all(&self) -> Result<(), EcsError> {
        let records = self
            .store()
            .list_json::<ServiceRecord>("services/")
            .await
            .map_err(internal)?;
        // One listing of a cluster's tasks serves the first attempt of all its services.
        let mut by_cluster: BTreeMap<String, Vec<Versioned<ServiceRecord>>> = BTreeMap::new();
        for record in records {
            if record.value.service.status != "INACTIVE" {
                let cluster = model::arn::cluster_name(&record.value.service.cluster_arn);
                by_cluster
                    .entry(cluster.to_string())
                    .or_default()
                    .push(record);
            }
        }
        for (cluster, services) in by_cluster {
            let tasks = self.cluster_tasks(&cluster).await?;
            for record in services {
                let name = record.value.service.service_name.clone();
                if let Err(e) = self.schedule_service(&cluster, record, &tasks).await {
                    tracing::warn!(service = %name, cluster = %cluster, error = %e, "cannot schedule service");
                }
            }
        }
        Ok(())
    }

    /// One pass over one service, from its record and its cluster's tasks as just
    /// listed; repeated on fresh reads if the record changed meanwhile.
    async fn schedule_service(
        &self,
        cluster: &str,
        listed: Versioned<ServiceRecord>,
        cluster_tasks: &[TaskRecord],
    ) -> Result<(), EcsError> {
        let name = listed.value.service.service_name.clone();
        let key = service_key(cluster, &name);
        let group = service_group(&name);
        let of_service = |tasks: &[TaskRecord]| -> Vec<TaskRecord> {
            tasks
                .iter()
                .filter(|r| r.task.group.as_deref() == Some(group.as_str()))
                .cloned()
                .collect()
        };
        let mut first = Some((listed, of_service(cluster_tasks)));
        // Events of actions taken by attempts whose write was lost.
        let mut carried_events: Vec<String> = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let (current, records) = match first.take() {
                Some(listed) => listed,
                None => match self.service_record(cluster, &name).await? {
                    Some(record) => (record, of_service(&self.cluster_tasks(cluster).await?)),
                    None => return Ok(()),
                },
            };
            if current.value.service.status == "INACTIVE" {
                return Ok(());
            }
            let now = model::now();
            let service = &current.value.service;
            let tasks: Vec<TaskView> = records
                .iter()
                .map(|r| self.task_view(service, r, now))
                .collect();
            let decided = plan(&current.value, &tasks, now);
            let mut record = decided.record;
            carried_events.extend(decided.action_events);
            for (task_id, reason) in &decided.stops {
                self.stop_service_task(cluster, &record, task_id, reason)
                    .await?;
            }
            if !decided.stops.is_empty() {
                let ids: Vec<&str> = decided.stops.iter().map(|(id, _)| id.as_str()).collect();
                carried_events.push(format!(
                    "(service {name}) has stopped {} running tasks: {}.",
                    ids.len(),
                    task_list(&ids)
                ));
            }
            for (deployment, definition, count) in &decided.launches {
                carried_events.push(
                    self.launch(cluster, deployment, definition, *count, &mut record, now)
                        .await,
                );
            }
            carried_events.extend(self.sync_targets(&mut record, &records, now).await);
            for message in &carried_events {
                push_event(&mut record, message.clone(), now);
            }
            if record == current.value {
                return Ok(());
            }
            match self
                .store()
                .put_json(&key, &record, Expect::Revision(current.mod_revision))
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(internal(e)),
            }
        }
        Ok(())
    }

    /// Starts `count` tasks of a deployment (in RunTask-sized batches) and returns the
    /// event that tells of it. A refused launch counts as a failure for the back-off.
    async fn launch(
        &self,
        cluster: &str,
        deployment: &str,
        definition: &str,
        count: u32,
        record: &mut ServiceRecord,
        now: Timestamp,
    ) -> String {
        let service = record.service.clone();
        let name = &service.service_name;
        let mut started = Vec::new();
        let mut remaining = count;
        while remaining > 0 {
            let batch = remaining.min(crate::tasks::MAX_RUN_COUNT);
            let request =
                Self::service_run_request(&service, cluster, deployment, definition, batch);
            match self.start_tasks(request, true).await {
                Ok(response) => {
                    started.extend(response.tasks.iter().map(|t| t.id().to_string()));
                    remaining -= batch;
                }
                Err(e) => {
                    record.scheduler.failure_streak += 1;
                    record.scheduler.last_failure_at = Some(now);
                    tracing::warn!(service = %name, deployment, error = %e, "cannot start service tasks");
                    return format!("(service {name}) was unable to place a task: {e}");
                }
            }
        }
        let ids: Vec<&str> = started.iter().map(String::as_str).collect();
        format!(
            "(service {name}) has started {} tasks: {}.",
            ids.len(),
            task_list(&ids)
        )
    }

    /// Every task record of a cluster.
    async fn cluster_tasks(&self, cluster: &str) -> Result<Vec<TaskRecord>, EcsError> {
        self.list_values(&format!("tasks/{cluster}/")).await
    }

    /// A task as the planner sees it.
    fn task_view(&self, service: &Service, record: &TaskRecord, now: Timestamp) -> TaskView {
        let task = &record.task;
        TaskView {
            id: task.id().to_string(),
            deployment: task.started_by.clone(),
            last_status: task.last_status,
            desired_running: task.desired_status == TaskStatus::Running,
            started_at: task.started_at,
            stop_code: task.stop_code.clone(),
            stopped_reason: task.stopped_reason.clone(),
            health: task_health(record, self.target_health(service, record), now),
        }
    }
}

/// ECS's health of a service task: unhealthy if its container checks or its load
/// balancer targets say so; healthy when every check that applies passes (container
/// checks of essential containers, target health); with neither, after 40 seconds of
/// RUNNING.
fn task_health(record: &TaskRecord, targets: Option<Health>, now: Timestamp) -> Health {
    let task = &record.task;
    if task.last_status != TaskStatus::Running {
        return Health::Pending;
    }
    let checked = record
        .plan
        .containers
        .iter()
        .any(|c| c.essential && c.health_check.is_some());
    let containers = checked.then(|| match task.health_status.as_str() {
        "HEALTHY" => Health::Healthy,
        "UNHEALTHY" => Health::Unhealthy("container health checks".into()),
        _ => Health::Pending,
    });
    match (containers, targets) {
        (Some(unhealthy @ Health::Unhealthy(_)), _)
        | (_, Some(unhealthy @ Health::Unhealthy(_))) => unhealthy,
        (Some(Health::Healthy), None | Some(Health::Healthy)) | (None, Some(Health::Healthy)) => {
            Health::Healthy
        }
        (Some(_), _) | (None, Some(_)) => Health::Pending,
        (None, None) => match task.started_at {
            Some(started) if now - started >= HEALTHY_AFTER_SECS => Health::Healthy,
            _ => Health::Pending,
        },
    }
}

/// `(task a) (task b)`, as ECS lists tasks in events.
fn task_list(ids: &[&str]) -> String {
    ids.iter()
        .map(|id| format!("(task {id})"))
        .collect::<Vec<_>>()
        .join(" ")
}
