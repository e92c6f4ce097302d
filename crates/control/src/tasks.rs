//! RunTask, StopTask, DescribeTasks, ListTasks, and the task records behind them.
//!
//! RunTask validates, allocates each task an address, and writes every task of the call
//! (plus its idempotency record) in one transaction guarded by the cluster's revision, so
//! a concurrent DeleteCluster cannot leave tasks in a deleted cluster. Only then are the
//! plans sent to the agent; a plan lost in a crash is re-sent by the next `Sync`.

use model::agent::{ContainerPlan, HealthCheckPlan, NetworkMode, NetworkPlan, TaskPlan, ToAgent};
use model::ops::*;
use model::tag::validate_tags;
use model::task::*;
use model::task_definition::{ContainerDefinition, EphemeralStorage, KeyValue, TaskDefinition};
use model::{arn, validate, EcsError};
use serde::{Deserialize, Serialize};
use store::{Expect, Op, StoreError, StoreJsonExt};

use crate::clusters::cluster_key;
use crate::{internal, Control};

pub const MAX_RUN_COUNT: u32 = 10;
const DEFAULT_STOP_TIMEOUT_SECS: u32 = 30;
const DEFAULT_NOFILE: u64 = 65535;

/// A task as the control plane keeps it: the ECS view, the plan the agent runs, and
/// where it was placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task: Task,
    pub plan: TaskPlan,
    pub agent_id: Option<String>,
}

/// What a client token remembers: the request it came with and the tasks it made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    fingerprint: String,
    task_ids: Vec<String>,
}

pub(crate) fn task_key(cluster: &str, task_id: &str) -> String {
    format!("tasks/{cluster}/{task_id}")
}

impl Control {
    pub(crate) async fn run_task(&self, r: RunTaskRequest) -> Result<RunTaskResponse, EcsError> {
        self.start_tasks(r, false).await
    }

    /// RunTask's work. A service's launches may run a task definition deregistered
    /// since the deployment began (`for_service`), as ECS services keep doing.
    pub(crate) async fn start_tasks(
        &self,
        r: RunTaskRequest,
        for_service: bool,
    ) -> Result<RunTaskResponse, EcsError> {
        let count = r.count.unwrap_or(1);
        if !(1..=MAX_RUN_COUNT).contains(&count) {
            return Err(EcsError::InvalidParameter(format!(
                "count must be between 1 and {MAX_RUN_COUNT}; {count} was given."
            )));
        }
        let capacity_provider =
            launch_target(r.launch_type.as_deref(), &r.capacity_provider_strategy)?;
        validate_tags(&r.tags)?;
        let task_network = self.task_network(r.network_configuration.as_ref()).await?;
        let subnet = &task_network.subnet;
        if let Some(token) = &r.client_token {
            if token.is_empty() || token.len() > 64 {
                return Err(EcsError::InvalidParameter(
                    "clientToken must be 1 to 64 characters long.".into(),
                ));
            }
        }
        // Fail fast on a missing cluster; the revision that guards the write is read
        // again under the allocation lock below.
        self.active_cluster(r.cluster.as_deref()).await?;
        let definition = self
            .find_task_definition(&r.task_definition)
            .await?
            .value
            .definition;
        if !for_service && definition.status.as_deref() != Some("ACTIVE") {
            return Err(EcsError::Client(format!(
                "TaskDefinition is inactive: {} was deregistered; register a new revision or run an active one.",
                r.task_definition
            )));
        }
        let overrides = r.overrides.clone().unwrap_or_default();
        let (cpu, memory) = validate::overrides(&definition, &overrides)?;

        let mut ipam = self.inner.ipam.lock().await;
        // RunTasks are serialized by this lock, so between this read and the write only
        // a change to the cluster itself (DeleteCluster, tags) can move its revision.
        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        let cluster_name = cluster.value.cluster_name.clone();
        let token_key = r
            .client_token
            .as_ref()
            .map(|t| format!("tokens/{cluster_name}/{t}"));
        let fingerprint = crate::fingerprint(&r);
        if let Some(key) = &token_key {
            if let Some(seen) = self
                .store()
                .get_json::<TokenRecord>(key)
                .await
                .map_err(internal)?
            {
                if seen.value.fingerprint != fingerprint {
                    return Err(EcsError::Conflict(
                        "The clientToken was already used with different parameters: use a new token for a new request.".into(),
                    ));
                }
                let mut tasks = Vec::new();
                for id in &seen.value.task_ids {
                    if let Some(t) = self.task_record(&cluster_name, id).await? {
                        tasks.push(t.task);
                    }
                }
                return Ok(RunTaskResponse {
                    tasks,
                    failures: vec![],
                });
            }
        }

        let mut records = Vec::new();
        for _ in 0..count {
            let Some(address) = ipam.allocate(subnet.cidr_block) else {
                for rec in &records {
                    let rec: &TaskRecord = rec;
                    ipam.release(rec.plan.network.address);
                }
                return Err(EcsError::LimitExceeded(format!(
                    "The subnet {} ({}) has no free address: stop tasks, run them in another subnet, or start skiff with a larger --subnet.",
                    subnet.subnet_id, subnet.cidr_block
                )));
            };
            let network = NetworkPlan {
                address,
                prefix_len: ipam.prefix_len(),
                gateway: ipam.gateway(),
                subnet_id: subnet.subnet_id.clone(),
                attachment_id: arn::new_uuid(),
                security_groups: task_network.security_groups.clone(),
                security: None,
                mode: NetworkMode::Awsvpc,
                port_bindings: vec![],
            };
            records.push(self.new_task(
                &r,
                &cluster_name,
                &definition,
                (cpu, memory),
                capacity_provider.clone(),
                network,
            ));
        }

        let mut ops = Vec::new();
        for rec in &records {
            ops.push(
                Op::put_json(task_key(&cluster_name, rec.task.id()), rec, Expect::Absent)
                    .map_err(internal)?,
            );
        }
        if let Some(key) = &token_key {
            let token = TokenRecord {
                fingerprint,
                task_ids: records.iter().map(|t| t.task.id().to_string()).collect(),
            };
            ops.push(Op::put_json(key, &token, Expect::Absent).map_err(internal)?);
        }
        // Re-writing the subnet unchanged guards against a concurrent DeleteSubnet.
        ops.push(self.subnet_guard(&subnet.subnet_id).await?);
        // Re-writing the cluster unchanged guards against a concurrent DeleteCluster.
        ops.push(
            Op::put_json(
                cluster_key(&cluster_name),
                &cluster.value,
                Expect::Revision(cluster.mod_revision),
            )
            .map_err(internal)?,
        );
        if let Err(e) = self.store().txn(ops).await {
            for rec in &records {
                ipam.release(rec.plan.network.address);
            }
            return Err(match e {
                StoreError::Conflict { .. } => EcsError::Conflict(
                    "The cluster or subnet changed while the tasks were being created: retry the request."
                        .into(),
                ),
                e => internal(e),
            });
        }
        drop(ipam);
        for rec in &records {
            tracing::info!(task_id = %rec.task.id(), cluster = %cluster_name, family = %definition.family, "task created");
            self.send_to_agent(ToAgent::Launch {
                plan: Box::new(rec.plan.clone()),
            });
        }
        Ok(RunTaskResponse {
            tasks: records.into_iter().map(|r| r.task).collect(),
            failures: vec![],
        })
    }

    fn new_task(
        &self,
        r: &RunTaskRequest,
        cluster: &str,
        definition: &TaskDefinition,
        (cpu, memory): (u32, u32),
        capacity_provider: Option<String>,
        network: NetworkPlan,
    ) -> TaskRecord {
        let scope = self.scope();
        let task_id = arn::new_task_id();
        let task_arn = scope.task(cluster, &task_id);
        let overrides = r.overrides.clone().unwrap_or_default();
        let ephemeral_gib = overrides
            .ephemeral_storage
            .as_ref()
            .or(definition.ephemeral_storage.as_ref())
            .map_or(validate::DEFAULT_EPHEMERAL_GIB, |e| e.size_in_gi_b);
        let address = network.address.to_string();
        let containers: Vec<ContainerPlan> = definition
            .container_definitions
            .iter()
            .map(|def| container_plan(def, &overrides))
            .collect();
        let task = Task {
            task_arn: task_arn.clone(),
            cluster_arn: scope.cluster(cluster),
            task_definition_arn: definition.task_definition_arn.clone().unwrap_or_default(),
            last_status: TaskStatus::Provisioning,
            desired_status: TaskStatus::Running,
            launch_type: "FARGATE".into(),
            capacity_provider_name: capacity_provider,
            platform_version: "1.4.0".into(),
            platform_family: "Linux".into(),
            cpu: cpu.to_string(),
            memory: memory.to_string(),
            containers: containers
                .iter()
                .map(|c| Container {
                    container_arn: scope.container(cluster, &task_id, &arn::new_uuid()),
                    task_arn: task_arn.clone(),
                    name: c.name.clone(),
                    image: c.image.clone(),
                    image_digest: None,
                    runtime_id: None,
                    last_status: "PENDING".into(),
                    exit_code: None,
                    reason: None,
                    network_bindings: vec![],
                    network_interfaces: vec![NetworkInterface {
                        attachment_id: network.attachment_id.clone(),
                        private_ipv4_address: address.clone(),
                    }],
                    health_status: "UNKNOWN".into(),
                    cpu: c.cpu.to_string(),
                    memory: c.memory_mib.map(|m| m.to_string()),
                    memory_reservation: c.memory_reservation_mib.map(|m| m.to_string()),
                })
                .collect(),
            attachments: vec![Attachment {
                id: network.attachment_id.clone(),
                kind: "ElasticNetworkInterface".into(),
                status: "PRECREATED".into(),
                details: vec![
                    kv("subnetId", &network.subnet_id),
                    kv("networkInterfaceId", &format!("eni-{}", &task_id[..17])),
                    kv("privateDnsName", &private_dns_name(network.address)),
                    kv("privateIPv4Address", &address),
                ],
            }],
            overrides,
            started_by: r.started_by.clone(),
            group: Some(
                r.group
                    .clone()
                    .unwrap_or_else(|| format!("family:{}", definition.family)),
            ),
            tags: r.tags.clone(),
            version: 1,
            created_at: model::now(),
            pull_started_at: None,
            pull_stopped_at: None,
            connectivity: None,
            connectivity_at: None,
            started_at: None,
            stopping_at: None,
            execution_stopped_at: None,
            stopped_at: None,
            stop_code: None,
            stopped_reason: None,
            health_status: "UNKNOWN".into(),
            availability_zone: Some(format!("{}a", scope.region)),
            enable_execute_command: r.enable_execute_command.unwrap_or(false),
            ephemeral_storage: Some(EphemeralStorage {
                size_in_gi_b: ephemeral_gib,
            }),
        };
        let plan = TaskPlan {
            task_id,
            task_arn,
            cluster: cluster.to_string(),
            family: definition.family.clone(),
            revision: definition.revision.unwrap_or(1),
            cpu_units: cpu,
            memory_mib: memory,
            ephemeral_storage_gib: ephemeral_gib,
            network,
            containers,
            last_status: TaskStatus::Provisioning,
        };
        TaskRecord {
            task,
            plan,
            agent_id: None,
        }
    }

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
        if let Some(lt) = r.launch_type.as_deref().filter(|lt| *lt != "FARGATE") {
            return Err(EcsError::InvalidParameter(format!(
                "Invalid launchType '{lt}': Skiff runs FARGATE tasks only."
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

/// The capacity provider named, or None for `launchType: FARGATE`.
pub(crate) fn launch_target(
    launch_type: Option<&str>,
    strategy: &[serde_json::Value],
) -> Result<Option<String>, EcsError> {
    if launch_type.is_some() && !strategy.is_empty() {
        return Err(EcsError::InvalidParameter(
            "Specifying both a launch type and capacity provider strategy is not supported: give one of them.".into(),
        ));
    }
    if let Some(lt) = launch_type.filter(|lt| *lt != "FARGATE") {
        return Err(EcsError::InvalidParameter(format!(
            "Launch type {lt} is not supported: Skiff runs tasks with the FARGATE launch type."
        )));
    }
    let mut provider = None;
    for item in strategy {
        let name = item
            .get("capacityProvider")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if name != "FARGATE" && name != "FARGATE_SPOT" {
            return Err(EcsError::InvalidParameter(format!(
                "Capacity provider '{name}' does not exist: use FARGATE or FARGATE_SPOT."
            )));
        }
        provider.get_or_insert_with(|| name.to_string());
    }
    Ok(provider)
}

/// The subnet a task's interface goes in (the first named, else `default`); checks the
/// awsvpc configuration's limits. [`Control::task_network`] checks the names.
pub(crate) fn network_subnet(
    network: Option<&NetworkConfiguration>,
    default: &str,
) -> Result<String, EcsError> {
    let Some(vpc) = network.and_then(|n| n.awsvpc_configuration.as_ref()) else {
        return Ok(default.to_string());
    };
    if vpc.subnets.is_empty() {
        return Err(EcsError::InvalidParameter(
            "subnets can not be empty: name at least one subnet in awsvpcConfiguration (list them with aws ec2 describe-subnets).".into(),
        ));
    }
    if vpc.subnets.len() > 16 {
        return Err(EcsError::InvalidParameter(
            "At most 16 subnets may be given in awsvpcConfiguration.".into(),
        ));
    }
    if vpc.security_groups.len() > 5 {
        return Err(EcsError::InvalidParameter(
            "At most 5 security groups may be given in awsvpcConfiguration.".into(),
        ));
    }
    Ok(vpc.subnets[0].clone())
}

fn kv(name: &str, value: &str) -> KeyValue {
    KeyValue {
        name: name.into(),
        value: value.into(),
    }
}

fn private_dns_name(address: std::net::Ipv4Addr) -> String {
    format!("ip-{}.ec2.internal", address.to_string().replace('.', "-"))
}

/// Merges a container definition with its RunTask override.
fn container_plan(def: &ContainerDefinition, overrides: &TaskOverride) -> ContainerPlan {
    let o = overrides
        .container_overrides
        .iter()
        .find(|o| o.name.as_deref() == Some(def.name.as_str()));
    let mut environment: Vec<(String, String)> = def
        .environment
        .iter()
        .map(|kv| (kv.name.clone(), kv.value.clone()))
        .collect();
    for kv in o.map(|o| o.environment.as_slice()).unwrap_or_default() {
        match environment.iter_mut().find(|(n, _)| *n == kv.name) {
            Some(slot) => slot.1 = kv.value.clone(),
            None => environment.push((kv.name.clone(), kv.value.clone())),
        }
    }
    let command = o
        .and_then(|o| o.command.clone())
        .or_else(|| (!def.command.is_empty()).then(|| def.command.clone()));
    let nofile = def
        .ulimits
        .iter()
        .find(|u| u.name == "nofile")
        .map_or((DEFAULT_NOFILE, DEFAULT_NOFILE), |u| {
            (u.soft_limit as u64, u.hard_limit as u64)
        });
    ContainerPlan {
        name: def.name.clone(),
        image: def.image.clone(),
        entry_point: def.entry_point.clone(),
        command,
        environment,
        working_directory: def.working_directory.clone(),
        user: def.user.clone(),
        essential: def.is_essential(),
        depends_on: def
            .depends_on
            .iter()
            .map(|d| (d.container_name.clone(), d.condition.clone()))
            .collect(),
        readonly_root_filesystem: def.readonly_root_filesystem.unwrap_or(false),
        stop_timeout_secs: def.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT_SECS),
        cpu: o.and_then(|o| o.cpu).unwrap_or(def.cpu),
        memory_mib: o.and_then(|o| o.memory).or(def.memory),
        memory_reservation_mib: o
            .and_then(|o| o.memory_reservation)
            .or(def.memory_reservation),
        nofile: Some(nofile),
        add_capabilities: def
            .linux_parameters
            .as_ref()
            .and_then(|lp| lp.capabilities.as_ref())
            .map(|c| c.add.clone())
            .unwrap_or_default(),
        health_check: def.health_check.as_ref().and_then(HealthCheckPlan::resolve),
    }
}
