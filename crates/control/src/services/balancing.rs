//! A service's `loadBalancers`: its tasks registered as `ip` targets (the task's private
//! address and the container port) in the named target groups of the built-in load
//! balancer, their target health folded into the task's health, and connection
//! draining before a task the scheduler stops is actually stopped.
//!
//! ```text
//! task RUNNING ──register──> initial ──checks──> healthy   (counts as healthy)
//!                                           └──> unhealthy (replaced after the grace period)
//! scheduler stops it ──deregister──> draining ──(in-flight done or delay over)──> gone
//!        task DEACTIVATING, agent not told yet ...................... agent Stop
//! ```
//!
//! A task that stopped by itself is deregistered at once. Registration state lives in
//! the service record ([`super::SchedulerState::registered`]), so a pass after a crash
//! does not register twice; a draining stop is the task's own state (DEACTIVATING since
//! its `stoppingAt`), so no lost write of the service record forgets it. A restart of
//! the whole server ends draining early (the agent's resync stops the task).

use lb::{Target, TargetState};
use model::service::{LoadBalancer, Service};
use model::task::{StopCode, TaskStatus};
use model::task_definition::TaskDefinition;
use model::{EcsError, Timestamp};

use super::plan::Health;
use super::ServiceRecord;
use crate::{Control, TaskRecord};

/// Load balancers one service may name (ECS's limit).
const MAX_LOAD_BALANCERS: usize = 5;
/// How long a stop waits for draining beyond the target group's own delay before the
/// task is stopped anyway (a balancer that lost its state never reports the end).
const DRAIN_SLACK_SECS: f64 = 10.0;
/// The longest deregistration delay ELBv2 allows.
const MAX_DRAIN_SECS: f64 = 3600.0;

/// The targets a task is (or will be) in: `(target group ARN, target)`.
pub(super) fn task_targets(service: &Service, record: &TaskRecord) -> Vec<(String, Target)> {
    let address = record.plan.network.address.to_string();
    service
        .load_balancers
        .iter()
        .filter_map(|b| {
            Some((
                b.target_group_arn.clone()?,
                Target {
                    id: address.clone(),
                    port: b.container_port?,
                },
            ))
        })
        .collect()
}

impl Control {
    /// Checks each entry names a target group of the built-in balancer that a load
    /// balancer forwards to, and a container of the task definition with that port in
    /// its portMappings.
    pub(crate) async fn validate_load_balancers(
        &self,
        balancers: &[LoadBalancer],
        definition: &TaskDefinition,
    ) -> Result<(), EcsError> {
        if balancers.len() > MAX_LOAD_BALANCERS {
            return Err(EcsError::InvalidParameter(format!(
                "A service can have at most {MAX_LOAD_BALANCERS} load balancers; {} were given.",
                balancers.len()
            )));
        }
        for balancer in balancers {
            let (Some(arn), Some(container), Some(port)) = (
                balancer.target_group_arn.as_deref(),
                balancer.container_name.as_deref(),
                balancer.container_port,
            ) else {
                return Err(EcsError::InvalidParameter(
                    "Each load balancer needs targetGroupArn, containerName and containerPort \
                     (Fargate services register task IPs with target groups)."
                        .into(),
                ));
            };
            let definition_container = definition
                .container_definitions
                .iter()
                .find(|c| c.name == container)
                .ok_or_else(|| {
                    EcsError::InvalidParameter(format!(
                        "The container {container} does not exist in the task definition {}.",
                        definition.family
                    ))
                })?;
            if !definition_container
                .port_mappings
                .iter()
                .any(|m| m.container_port == Some(port))
            {
                return Err(EcsError::InvalidParameter(format!(
                    "The container {container} does not have a container port {port} in the \
                     task definition: add it to the container's portMappings."
                )));
            }
            self.validate_target_group(arn).await?;
        }
        Ok(())
    }

    async fn validate_target_group(&self, arn: &str) -> Result<(), EcsError> {
        let Some(balancer) = self.balancer() else {
            return Err(EcsError::InvalidParameter(
                "This server runs no load balancer: services cannot name target groups.".into(),
            ));
        };
        let group = balancer
            .target_group(arn)
            .await
            .map_err(|e| EcsError::Server(format!("cannot read target group {arn}: {e}")))?
            .ok_or_else(|| {
                EcsError::InvalidParameter(format!(
                    "Target group {arn} does not exist: create it with `aws elbv2 create-target-group` or `skiff lb create`."
                ))
            })?;
        if group.target_type != "ip" {
            return Err(EcsError::InvalidParameter(format!(
                "Target group {arn} has target type {}: Fargate tasks register by IP, use a target group of target type ip.",
                group.target_type
            )));
        }
        if group.load_balancer_arns.is_empty() {
            return Err(EcsError::InvalidParameter(format!(
                "The target group {arn} does not have an associated load balancer: create a listener that forwards to it first."
            )));
        }
        Ok(())
    }

    /// The task's health as its load balancers see it: None when the service has none.
    pub(super) fn target_health(&self, service: &Service, record: &TaskRecord) -> Option<Health> {
        let balancer = self.balancer()?;
        let targets = task_targets(service, record);
        if targets.is_empty() {
            return None;
        }
        let mut health = Health::Healthy;
        for (group, target) in &targets {
            match balancer.target_state(group, target) {
                Some(TargetState::Healthy) => {}
                Some(TargetState::Unhealthy) => {
                    return Some(Health::Unhealthy(format!(
                        "ELB health checks in (target-group {group})"
                    )))
                }
                _ => health = Health::Pending,
            }
        }
        Some(health)
    }

    /// Stops a task of the service: draining first if it is registered with a target
    /// group (see the module), at once otherwise.
    pub(super) async fn stop_service_task(
        &self,
        cluster: &str,
        record: &ServiceRecord,
        task_id: &str,
        reason: &str,
    ) -> Result<(), EcsError> {
        let code = StopCode::ServiceSchedulerInitiated;
        if record.scheduler.registered.contains(task_id) {
            self.request_draining_stop(cluster, task_id, code, reason)
                .await?;
        } else {
            self.request_stop(cluster, task_id, code, reason).await?;
        }
        Ok(())
    }

    /// Registers RUNNING tasks, deregisters stopping ones, and stops the tasks whose
    /// draining is over. Returns the events to record.
    pub(super) async fn sync_targets(
        &self,
        record: &mut ServiceRecord,
        tasks: &[TaskRecord],
        now: Timestamp,
    ) -> Vec<String> {
        let Some(balancer) = self.balancer().cloned() else {
            return vec![];
        };
        let service = record.service.clone();
        let name = &service.service_name;
        let mut events = Vec::new();
        let mut registered: Vec<(String, Target)> = Vec::new();
        let mut deregistered: Vec<(String, Target)> = Vec::new();
        for task in tasks {
            let id = task.task.id().to_string();
            let live = task.task.desired_status == TaskStatus::Running;
            let known = record.scheduler.registered.contains(&id);
            if live && !known && task.task.last_status == TaskStatus::Running {
                let targets = task_targets(&service, task);
                if self.change_targets(&balancer, &targets, true).await {
                    record.scheduler.registered.insert(id);
                    registered.extend(targets);
                }
            } else if !live && known {
                let targets = task_targets(&service, task);
                if !record.scheduler.deregistered.contains(&id) {
                    if !self.change_targets(&balancer, &targets, false).await {
                        continue;
                    }
                    record.scheduler.deregistered.insert(id.clone());
                    deregistered.extend(targets.iter().cloned());
                }
                // A draining stop is the task's own state (DEACTIVATING since its
                // stoppingAt), so it survives a lost write of the service record and a
                // restart; anything else stopped on its own or by a user.
                if task.task.last_status != TaskStatus::Deactivating {
                    forget(record, &id);
                    continue;
                }
                let drained = targets
                    .iter()
                    .all(|(group, target)| balancer.target_state(group, target).is_none());
                let since = task.task.stopping_at.unwrap_or(now);
                if drained || now - since > MAX_DRAIN_SECS + DRAIN_SLACK_SECS {
                    let reason = task.task.stopped_reason.as_deref().unwrap_or_default();
                    self.release_stop(&id, reason);
                    forget(record, &id);
                }
            }
        }
        // Forget tasks whose records are gone.
        let present: std::collections::BTreeSet<String> =
            tasks.iter().map(|t| t.task.id().to_string()).collect();
        let gone: Vec<String> = record
            .scheduler
            .registered
            .iter()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            forget(record, &id);
        }
        for (verb, changed) in [("registered", registered), ("deregistered", deregistered)] {
            let mut groups: Vec<&str> = changed.iter().map(|(g, _)| g.as_str()).collect();
            groups.dedup();
            for group in groups {
                let count = changed.iter().filter(|(g, _)| g == group).count();
                events.push(format!(
                    "(service {name}) {verb} {count} targets in (target-group {group})"
                ));
            }
        }
        events
    }

    /// Registers or deregisters targets; a failure is logged and retried next pass.
    async fn change_targets(
        &self,
        balancer: &lb::Balancer,
        targets: &[(String, Target)],
        register: bool,
    ) -> bool {
        for (group, target) in targets {
            let one = std::slice::from_ref(target);
            let result = if register {
                balancer.register_targets(group, one).await
            } else {
                balancer.deregister_targets(group, one).await
            };
            if let Err(e) = result {
                tracing::warn!(target_group = %group, target = %target.id, register, error = %e, "cannot change load balancer targets");
                return false;
            }
        }
        true
    }
}

fn forget(record: &mut ServiceRecord, task_id: &str) {
    record.scheduler.registered.remove(task_id);
    record.scheduler.deregistered.remove(task_id);
}
