//! The agent's side of the conversation: its `Hello` is answered with a `Sync`, its
//! reports are merged into task records, and stopped tasks past retention are forgotten.

use model::agent::{FromAgent, TaskReport, ToAgent};
use model::arn::Resource;
use model::task::{StopCode, TaskStatus};
use store::{Expect, StoreJsonExt};

use crate::{internal, Control, TaskRecord};

impl Control {
    pub(crate) async fn on_agent_message(&self, message: FromAgent) {
        let result = match message {
            FromAgent::Hello { agent_id, version } => {
                tracing::info!(agent_id = %agent_id, version, "agent connected");
                self.sync_agent(&agent_id).await
            }
            FromAgent::Report(report) => self.apply_report(report).await,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot apply an agent message");
        }
    }

    async fn sync_agent(&self, agent_id: &str) -> Result<(), model::EcsError> {
        let records = self
            .store()
            .list_json::<TaskRecord>("tasks/")
            .await
            .map_err(internal)?;
        let mut plans = Vec::new();
        let mut stops = Vec::new();
        for record in records {
            let rec = record.value;
            if rec.task.last_status == TaskStatus::Stopped {
                continue;
            }
            if rec.agent_id.as_deref() != Some(agent_id) {
                let cluster = rec.plan.cluster.clone();
                self.update_task(&cluster, &rec.plan.task_id, |r| {
                    let changed = r.agent_id.as_deref() != Some(agent_id);
                    r.agent_id = Some(agent_id.to_string());
                    changed
                })
                .await?;
            }
            let mut plan = rec.plan;
            plan.last_status = rec.task.last_status;
            if rec.task.desired_status == TaskStatus::Stopped {
                // A stop the agent may have missed is re-sent after the sync.
                stops.push(ToAgent::Stop {
                    task_id: plan.task_id.clone(),
                    reason: rec.task.stopped_reason.clone().unwrap_or_default(),
                });
            }
            plans.push(plan);
        }
        self.send_to_agent(ToAgent::Sync { tasks: plans });
        for stop in stops {
            self.send_to_agent(stop);
        }
        Ok(())
    }

    /// Merges a report: states only move forward, fields are only filled in, and the
    /// first reason a task stopped for is the one it keeps.
    pub(crate) async fn apply_report(&self, report: TaskReport) -> Result<(), model::EcsError> {
        let Ok(Resource::Task { cluster, id }) = self.scope().parse(&report.task_arn) else {
            tracing::warn!(task_arn = %report.task_arn, "report for an unknown task ARN");
            return Ok(());
        };
        let mut released = None;
        let updated = self
            .update_task(&cluster, &id, |rec| {
                let before = rec.task.clone();
                merge(&mut rec.task, &report);
                if rec.task.last_status == TaskStatus::Stopped
                    && before.last_status != TaskStatus::Stopped
                {
                    released = Some(rec.plan.network.address);
                }
                rec.task != before
            })
            .await?;
        if let (Some(address), Some(rec)) = (released, updated) {
            self.inner.ipam.lock().await.release(address);
            tracing::info!(
                task_id = %id,
                cluster = %cluster,
                stop_code = rec.task.stop_code.as_deref().unwrap_or(""),
                reason = rec.task.stopped_reason.as_deref().unwrap_or(""),
                "task stopped"
            );
        }
        Ok(())
    }

    /// Deletes stopped tasks older than the retention and tells the agent to drop what
    /// it kept of them (logs). Runs until the control plane is dropped.
    pub(crate) async fn forget_expired_loop(&self) {
        let retention = self.inner.config.stopped_task_retention;
        let period = (retention / 10).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        );
        loop {
            tokio::time::sleep(period).await;
            if let Err(e) = self.forget_expired(retention.as_secs_f64()).await {
                tracing::error!(error = %e, "cannot forget expired tasks");
            }
        }
    }

    async fn forget_expired(&self, retention_secs: f64) -> Result<(), model::EcsError> {
        let now = model::now();
        for record in self
            .store()
            .list_json::<TaskRecord>("tasks/")
            .await
            .map_err(internal)?
        {
            let task = &record.value.task;
            let expired = task.last_status == TaskStatus::Stopped
                && task.stopped_at.is_some_and(|at| now - at > retention_secs);
            if !expired {
                continue;
            }
            match self
                .store()
                .delete(&record.key, Expect::Revision(record.mod_revision))
                .await
            {
                Ok(_) => {
                    tracing::debug!(task_id = %task.id(), "stopped task forgotten");
                    self.send_to_agent(ToAgent::Forget {
                        task_id: task.id().to_string(),
                    });
                }
                Err(store::StoreError::Conflict { .. }) => {}
                Err(e) => return Err(internal(e)),
            }
        }
        Ok(())
    }
}

fn merge(task: &mut model::task::Task, report: &TaskReport) {
    if let Some(status) = report.last_status {
        if task.last_status.can_become(status) {
            task.last_status = status;
        }
    }
    fill(&mut task.pull_started_at, report.pull_started_at);
    fill(&mut task.pull_stopped_at, report.pull_stopped_at);
    fill(&mut task.started_at, report.started_at);
    fill(&mut task.execution_stopped_at, report.execution_stopped_at);
    if report.connectivity_at.is_some() && task.connectivity_at.is_none() {
        task.connectivity_at = report.connectivity_at;
        task.connectivity = Some("CONNECTED".into());
    }
    fill(&mut task.stop_code, report.stop_code.clone());
    fill(&mut task.stopped_reason, report.stopped_reason.clone());
    for attachment in &mut task.attachments {
        if let Some(mac) = &report.mac_address {
            if attachment.detail("macAddress").is_none() {
                attachment.details.push(model::task_definition::KeyValue {
                    name: "macAddress".into(),
                    value: mac.clone(),
                });
            }
        }
        attachment.status = match task.last_status {
            TaskStatus::Provisioning => "PRECREATED",
            TaskStatus::Stopped => "DELETED",
            _ if task.connectivity_at.is_some() => "ATTACHED",
            _ => "PRECREATED",
        }
        .into();
    }
    for c in &report.containers {
        let Some(container) = task.containers.iter_mut().find(|x| x.name == c.name) else {
            continue;
        };
        if container.last_status != "STOPPED" {
            container.last_status = c.last_status.clone();
        }
        fill(&mut container.runtime_id, c.runtime_id.clone());
        fill(&mut container.image_digest, c.image_digest.clone());
        fill(&mut container.exit_code, c.exit_code);
        fill(&mut container.reason, c.reason.clone());
    }
    if task.last_status >= TaskStatus::Deactivating || task.execution_stopped_at.is_some() {
        task.desired_status = TaskStatus::Stopped;
        task.stopping_at.get_or_insert_with(model::now);
        task.stop_code
            .get_or_insert_with(|| StopCode::EssentialContainerExited.as_str().into());
    }
    if task.last_status == TaskStatus::Stopped {
        task.stopped_at.get_or_insert_with(model::now);
        for container in &mut task.containers {
            container.last_status = "STOPPED".into();
        }
    }
}

fn fill<T>(slot: &mut Option<T>, value: Option<T>) {
    if slot.is_none() {
        *slot = value;
    }
}
