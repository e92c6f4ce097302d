//! StopTask, DescribeTasks, ListTasks, and the task records behind them; RunTask is in
//! `run`.

mod run;

use model::agent::{TaskPlan, ToAgent};
use model::ops::*;
use model::task::*;
use model::{arn, EcsError};
use serde::{Deserialize, Serialize};
use store::{Expect, StoreError, StoreJsonExt};

use crate::{internal, Control};

pub(crate) use run::{launch_target, network_subnet, MAX_RUN_COUNT};

/// A task as the control plane keeps it: the ECS view, the plan the agent runs, and
/// where it was placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: Task,
    pub plan: TaskPlan,
    pub agent_id: Option<String>,
}

pub(crate) fn task_key(cluster: &str, task_id: &str) -> String {
    format!("tasks/{cluster}/{task_id}")
}

impl Control {
    pub(crate) async fn task_record(
        &self,
        cluster: &str,
        task_id: &str,
    ) -> Result<Option<TaskRecord>, EcsError> {
        Ok(self
            .store()
            .get_json::<TaskRecord>(&task_key(cluster, task_id))
            .await
            .map_err(internal)?
            .map(|v| v.value))
    }

    /// Applies `change` to a task with compare-and-swap, retrying on conflicts. `change`
    /// returns false when it has nothing to change; the version grows on every change.
    pub(crate) async fn update_task(
        &self,
        cluster: &str,
        task_id: &str,
        mut change: impl FnMut(&mut TaskRecord) -> bool,
    ) -> Result<Option<TaskRecord>, EcsError> {
        let key = task_key(cluster, task_id);
        loop {
            let Some(current) = self
                .store()
                .get_json::<TaskRecord>(&key)
                .await
                .map_err(internal)?
            else {
                return Ok(None);
            };
            let mut record = current.value;
            let before = network_facts(&record.task);
            if !change(&mut record) {
                return Ok(Some(record));
            }
            record.task.version += 1;
            match self
                .store()
                .put_json(&key, &record, Expect::Revision(current.mod_revision))
                .await
            {
                Ok(_) => {
                    if crate::services::is_service_task(&record.task) {
                        self.scheduler().wake();
                    }
                    if network_facts(&record.task) != before {
                        self.network_sync().wake();
                    }
                    return Ok(Some(record));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(internal(e)),
            }
        }
    }

    pub(crate) async fn stop_task(&self, r: StopTaskRequest) -> Result<StopTaskResponse, EcsError> {
        let cluster = self
            .active_cluster(r.cluster.as_deref())
            .await?
            .value
            .cluster_name;
        let task_id = arn::task_id(&r.task).to_string();
        let reason = r
            .reason
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "Task stopped by user".into());
        if reason.len() > 255 {
            return Err(EcsError::InvalidParameter(
                "The stop reason must be at most 255 characters.".into(),
            ));
        }
        let record = self
            .request_stop(&cluster, &task_id, StopCode::UserInitiated, &reason)
            .await?
            .ok_or_else(|| {
                EcsError::InvalidParameter(format!(
                    "The referenced task was not found: no task {task_id} in cluster {cluster}."
                ))
            })?;
        Ok(StopTaskResponse { task: record.task })
    }

    /// Sets a task's desired status to STOPPED (first stop code and reason win) and
    /// tells the agent; a task already asked to stop is left as it is.
    pub(crate) async fn request_stop(
        &self,
        cluster: &str,
        task_id: &str,
        code: StopCode,
        reason: &str,
    ) -> Result<Option<TaskRecord>, EcsError> {
        self.stop_task_record(cluster, task_id, code, reason, false)
            .await
    }

    /// [`Control::request_stop`] for a task whose load balancer targets drain first: it
    /// goes DEACTIVATING and the agent is told only by [`Control::release_stop`].
    pub(crate) async fn request_draining_stop(
        &self,
        cluster: &str,
        task_id: &str,
        code: StopCode,
        reason: &str,
    ) -> Result<Option<TaskRecord>, EcsError> {
        self.stop_task_record(cluster, task_id, code, reason, true)
            .await
    }

    /// Tells the agent to stop a task whose draining is over.
    pub(crate) fn release_stop(&self, task_id: &str, reason: &str) {
        tracing::info!(task_id, reason, "targets drained; stopping the task");
        self.send_to_agent(ToAgent::Stop {
            task_id: task_id.to_string(),
            reason: reason.to_string(),
        });
    }

    async fn stop_task_record(
        &self,
        cluster: &str,
        task_id: &str,
        code: StopCode,
        reason: &str,
        drain: bool,
    ) -> Result<Option<TaskRecord>, EcsError> {
        let mut newly_stopping = false;
        let record = self
            .update_task(cluster, task_id, |rec| {
                let t = &mut rec.task;
                if t.desired_status == TaskStatus::Stopped {
                    return false;
                }
                t.desired_status = TaskStatus::Stopped;
                t.stop_code.get_or_insert_with(|| code.as_str().into());
                t.stopped_reason.get_or_insert_with(|| reason.to_string());
                t.stopping_at.get_or_insert_with(model::now);
                if drain && t.last_status == TaskStatus::Running {
                    t.last_status = TaskStatus::Deactivating;
                }
                newly_stopping = true;
                true
            })
            .await?;
        if newly_stopping && !drain {
            tracing::info!(
                task_id,
                cluster,
                reason,
                stop_code = code.as_str(),
                "task stop requested"
            );
            self.send_to_agent(ToAgent::Stop {
                task_id: task_id.to_string(),
                reason: reason.to_string(),
            });
        }
        Ok(record)
    }

    pub(crate) async fn describe_tasks(
        &self,
        r: DescribeTasksRequest,
    ) -> Result<DescribeTasksResponse, EcsError> {
        if r.tasks.is_empty() {
            return Err(EcsError::InvalidParameter(
                "Tasks cannot be empty: name at least one task ARN or id.".into(),
            ));
        }
        if r.tasks.len() > 100 {
            return Err(EcsError::InvalidParameter(
                "DescribeTasks accepts at most 100 tasks per call.".into(),
            ));
        }
        let cluster = self
            .active_cluster(r.cluster.as_deref())
            .await?
            .value
            .cluster_name;
        let include_tags = r.include.iter().any(|i| i == "TAGS");
        let mut response = DescribeTasksResponse {
            tasks: vec![],
            failures: vec![],
        };
        for identifier in &r.tasks {
            let id = arn::task_id(identifier);
            match self.task_record(&cluster, id).await? {
                Some(rec) => {
                    let mut task = rec.task;
                    if !include_tags {
                        task.tags.clear();
                    }
                    response.tasks.push(task);
                }
                None => response.failures.push(Failure {
                    arn: self.scope().task(&cluster, id),
                    reason: "MISSING".into(),
                    detail: None,
                }),
            }
        }
        Ok(response)
    }

    pub(crate) async fn list_tasks(
        &self,
        r: ListTasksRequest,
    ) -> Result<ListTasksResponse, EcsError> {
        let cluster = self
            .active_cluster(r.cluster.as_deref())
            .await?
            .value
            .cluster_name;
        let desired = match r.desired_status.as_deref() {
            None | Some("RUNNING") => TaskStatus::Running,
            Some("STOPPED") => TaskStatus::Stopped,
            Some("PENDING") => TaskStatus::Pending,
            Some(other) => {
                return Err(EcsError::InvalidParameter(format!(
                    "Invalid desiredStatus '{other}': use RUNNING, PENDING or STOPPED."
                )))
            }
        };
        if let Some(lt) = r
            .launch_type
            .as_deref()
            .filter(|lt| !["FARGATE", "EC2"].contains(lt))
        {
            return Err(EcsError::InvalidParameter(format!(
                "Invalid launchType '{lt}': Skiff runs FARGATE tasks, and EC2 tasks for bridge-mode definitions."
            )));
        }
        let service_group = r.service_name.as_ref().map(|s| format!("service:{s}"));
        let tasks: Vec<Task> = self
            .store()
            .list_json::<TaskRecord>(&format!("tasks/{cluster}/"))
            .await
            .map_err(internal)?
            .into_iter()
            .map(|v| v.value.task)
            .filter(|t| match desired {
                TaskStatus::Pending => {
                    t.desired_status == TaskStatus::Running && t.last_status.is_pending()
                }
                d => t.desired_status == d,
            })
            .filter(|_| r.container_instance.is_none())
            .filter(|t| r.launch_type.as_ref().is_none_or(|lt| t.launch_type == *lt))
            .filter(|t| {
                r.started_by
                    .as_ref()
                    .is_none_or(|s| t.started_by.as_ref() == Some(s))
            })
            .filter(|t| {
                r.family.as_ref().is_none_or(|f| {
                    t.task_definition_arn
                        .rsplit_once("task-definition/")
                        .and_then(|(_, fr)| fr.rsplit_once(':'))
                        .is_some_and(|(fam, _)| fam == f)
                })
            })
            .filter(|t| {
                service_group
                    .as_ref()
                    .is_none_or(|g| t.group.as_ref() == Some(g))
            })
            .collect();
        let (page, next_token) = page(
            &tasks,
            |t| t.id().to_string(),
            r.next_token.as_deref(),
            r.max_results,
        )?;
        Ok(ListTasksResponse {
            task_arns: page.into_iter().map(|t| t.task_arn).collect(),
            next_token,
        })
    }
}

/// What of a task the agents' network state depends on: whether it holds its address
/// and whether its service's name should answer with it.
fn network_facts(task: &Task) -> (TaskStatus, TaskStatus, String) {
    (
        task.last_status,
        task.desired_status,
        task.health_status.clone(),
    )
}
