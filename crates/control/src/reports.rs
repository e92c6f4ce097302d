//! The agent's side of the conversation: its `Hello` is answered with a `Sync`, its
//! reports are merged into task records, and stopped tasks past retention are forgotten.
//!
//! Merging is monotonic (states only move forward, fields are only filled in) except for
//! container health, which follows the latest report; the task's `healthStatus` is then
//! recomputed from its containers by [`task_health_status`]. A task's version moves only
//! when a merge changed something.

use model::agent::{FromAgent, TaskPlan, TaskReport, ToAgent};
use model::arn::Resource;
use model::task::{Container, StopCode, TaskStatus};
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
        self.network_sync().resend().await;
        Ok(())
    }

    /// Merges a report: states only move forward, fields other than container health are
    /// only filled in, and the first reason a task stopped for is the one it keeps.
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
                let health = task_health_status(&rec.plan, &rec.task.containers);
                if rec.task.health_status != health {
                    tracing::info!(task_id = %id, cluster = %cluster, health, "task health changed");
                    rec.task.health_status = health.to_owned();
                }
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
            self.host_ports().release(&id);
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
        if let Some(health) = &c.health_status {
            container.health_status.clone_from(health);
        }
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

/// ECS's task health: UNHEALTHY if any essential container with a health check is
/// UNHEALTHY; HEALTHY if there is at least one such container and all of them are
/// HEALTHY; UNKNOWN otherwise. Containers without a health check, and non-essential ones,
/// do not count.
pub(crate) fn task_health_status(plan: &TaskPlan, containers: &[Container]) -> &'static str {
    let mut checked = 0;
    let mut healthy = 0;
    for planned in plan
        .containers
        .iter()
        .filter(|c| c.essential && c.health_check.is_some())
    {
        checked += 1;
        let status = containers
            .iter()
            .find(|c| c.name == planned.name)
            .map_or(HEALTH_UNKNOWN, |c| c.health_status.as_str());
        match status {
            HEALTH_UNHEALTHY => return HEALTH_UNHEALTHY,
            HEALTH_HEALTHY => healthy += 1,
            _ => {}
        }
    }
    if checked > 0 && healthy == checked {
        HEALTH_HEALTHY
    } else {
        HEALTH_UNKNOWN
    }
}

const HEALTH_HEALTHY: &str = "HEALTHY";
const HEALTH_UNHEALTHY: &str = "UNHEALTHY";
const HEALTH_UNKNOWN: &str = "UNKNOWN";

fn fill<T>(slot: &mut Option<T>, value: Option<T>) {
    if slot.is_none() {
        *slot = value;
    }
}

#[cfg(test)]
mod tests {
    use model::agent::{ContainerPlan, ContainerReport, HealthCheckPlan, NetworkMode, NetworkPlan};
    use serde_json::json;

    use super::*;
    use crate::test_support::Harness;

    fn check() -> HealthCheckPlan {
        HealthCheckPlan {
            command: vec!["true".into()],
            interval_secs: 5,
            timeout_secs: 2,
            retries: 1,
            start_period_secs: 0,
        }
    }

    /// A plan and its containers from (name, essential, has a check, health status).
    fn task(containers: &[(&str, bool, bool, &str)]) -> (TaskPlan, Vec<Container>) {
        let plan = TaskPlan {
            task_id: "0".repeat(32),
            task_arn: "arn".into(),
            cluster: "demo".into(),
            family: "web".into(),
            revision: 1,
            cpu_units: 256,
            memory_mib: 512,
            ephemeral_storage_gib: 20,
            network: NetworkPlan {
                address: "10.1.0.2".parse().unwrap(),
                prefix_len: 24,
                gateway: "10.1.0.1".parse().unwrap(),
                subnet_id: "subnet".into(),
                attachment_id: "attachment".into(),
                security_groups: vec![],
                security: None,
                mode: NetworkMode::Awsvpc,
                port_bindings: vec![],
            },
            containers: containers
                .iter()
                .map(|(name, essential, checked, _)| ContainerPlan {
                    name: name.to_string(),
                    image: "busybox".into(),
                    entry_point: vec![],
                    command: None,
                    environment: vec![],
                    working_directory: None,
                    user: None,
                    essential: *essential,
                    depends_on: vec![],
                    readonly_root_filesystem: false,
                    stop_timeout_secs: 30,
                    cpu: 0,
                    memory_mib: None,
                    memory_reservation_mib: None,
                    nofile: None,
                    add_capabilities: vec![],
                    health_check: checked.then(check),
                })
                .collect(),
            last_status: TaskStatus::Running,
        };
        let records = containers
            .iter()
            .map(|(name, _, _, health)| {
                serde_json::from_value(json!({
                    "containerArn": "c", "taskArn": "arn", "name": name, "image": "busybox",
                    "lastStatus": "RUNNING", "healthStatus": health, "cpu": "0"
                }))
                .unwrap()
            })
            .collect();
        (plan, records)
    }

    fn health(containers: &[(&str, bool, bool, &str)]) -> &'static str {
        let (plan, records) = task(containers);
        task_health_status(&plan, &records)
    }

    #[test]
    fn task_health_follows_the_essential_checked_containers() {
        // No container with a check: nothing to go by.
        assert_eq!(health(&[("a", true, false, "UNKNOWN")]), "UNKNOWN");
        assert_eq!(health(&[("a", true, true, "UNKNOWN")]), "UNKNOWN");
        assert_eq!(health(&[("a", true, true, "HEALTHY")]), "HEALTHY");
        assert_eq!(health(&[("a", true, true, "UNHEALTHY")]), "UNHEALTHY");
        // Every checked essential container must be healthy; one unhealthy wins.
        let mixed = [("a", true, true, "HEALTHY"), ("b", true, true, "UNKNOWN")];
        assert_eq!(health(&mixed), "UNKNOWN");
        let mixed = [("a", true, true, "UNHEALTHY"), ("b", true, true, "UNKNOWN")];
        assert_eq!(health(&mixed), "UNHEALTHY");
        // Containers without checks and non-essential ones are ignored.
        let ignored = [
            ("a", true, true, "HEALTHY"),
            ("b", true, false, "UNKNOWN"),
            ("c", false, true, "UNHEALTHY"),
        ];
        assert_eq!(health(&ignored), "HEALTHY");
        assert_eq!(health(&[("c", false, true, "HEALTHY")]), "UNKNOWN");
    }

    fn health_report(arn: &str, status: &str) -> TaskReport {
        TaskReport {
            containers: vec![ContainerReport {
                name: "app".into(),
                last_status: "RUNNING".into(),
                health_status: Some(status.into()),
                ..Default::default()
            }],
            ..Harness::status_report(arn, TaskStatus::Running)
        }
    }

    #[tokio::test]
    async fn container_health_moves_both_ways_and_only_changes_bump_the_version() {
        let h = Harness::new().await;
        h.call("CreateCluster", json!({"clusterName": "demo"}))
            .await
            .unwrap();
        h.call(
            "RegisterTaskDefinition",
            json!({
                "family": "web", "cpu": "256", "memory": "512",
                "requiresCompatibilities": ["FARGATE"], "networkMode": "awsvpc",
                "containerDefinitions": [{"name": "app", "image": "busybox",
                    "healthCheck": {"command": ["CMD-SHELL", "test -f /ok"], "interval": 5}}]
            }),
        )
        .await
        .unwrap();
        let tasks = h
            .run(json!({"cluster": "demo", "taskDefinition": "web", "launchType": "FARGATE"}))
            .await;
        let arn = tasks[0].task_arn.clone();
        assert_eq!(tasks[0].health_status, "UNKNOWN");
        let plan = h
            .control
            .task_record("demo", tasks[0].id())
            .await
            .unwrap()
            .unwrap()
            .plan;
        assert_eq!(
            plan.containers[0].health_check,
            Some(HealthCheckPlan {
                command: vec!["/bin/sh".into(), "-c".into(), "test -f /ok".into()],
                interval_secs: 5,
                timeout_secs: 5,
                retries: 3,
                start_period_secs: 0,
            })
        );

        h.report(health_report(&arn, "HEALTHY")).await;
        let t = h.describe(&arn).await;
        assert_eq!(
            (
                t.health_status.as_str(),
                t.containers[0].health_status.as_str()
            ),
            ("HEALTHY", "HEALTHY")
        );
        // The same report again changes nothing: no new version.
        let version = t.version;
        h.control
            .apply_report(health_report(&arn, "HEALTHY"))
            .await
            .unwrap();
        assert_eq!(h.describe(&arn).await.version, version);

        h.report(health_report(&arn, "UNHEALTHY")).await;
        let t = h.describe(&arn).await;
        assert_eq!(t.version, version + 1);
        assert_eq!(
            (
                t.health_status.as_str(),
                t.containers[0].health_status.as_str()
            ),
            ("UNHEALTHY", "UNHEALTHY")
        );
        assert_eq!(
            t.last_status,
            TaskStatus::Running,
            "health never stops a task"
        );
        h.report(health_report(&arn, "HEALTHY")).await;
        assert_eq!(h.describe(&arn).await.health_status, "HEALTHY");
    }
}
