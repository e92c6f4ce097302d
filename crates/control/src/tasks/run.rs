//! RunTask: validates, allocates each task an address (and a bridge-mode task its host
//! ports, see `ports`), and writes every task of the call (plus its idempotency record)
//! in one transaction guarded by the cluster's revision, so a concurrent DeleteCluster
//! cannot leave tasks in a deleted cluster. Only then are the plans sent to the agent; a
//! plan lost in a crash is re-sent by the next `Sync`.

use std::net::Ipv4Addr;

use model::agent::{ContainerPlan, HealthCheckPlan, NetworkMode, NetworkPlan, TaskPlan, ToAgent};
use model::ops::*;
use model::tag::validate_tags;
use model::task::*;
use model::task_definition::{ContainerDefinition, EphemeralStorage, KeyValue, TaskDefinition};
use model::vpc::Subnet;
use model::{arn, validate, EcsError};
use serde::{Deserialize, Serialize};
use store::{Expect, Op, StoreError, StoreJsonExt};

use super::{task_key, TaskRecord};
use crate::clusters::cluster_key;
use crate::ipam::Ipam;
use crate::{internal, ports, Control};

pub const MAX_RUN_COUNT: u32 = 10;
const DEFAULT_STOP_TIMEOUT_SECS: u32 = 30;
const DEFAULT_NOFILE: u64 = 65535;

/// What a client token remembers: the request it came with and the tasks it made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    fingerprint: String,
    task_ids: Vec<String>,
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
        validate_tags(&r.tags)?;
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
        let launch = launch(&definition, &r)?;
        let bridge = definition.is_bridge();
        // Bridge tasks are reached through host ports, from the default subnet.
        let task_network = if bridge {
            self.task_network(None).await?
        } else {
            self.task_network(r.network_configuration.as_ref()).await?
        };
        let subnet = &task_network.subnet;
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
        let mut failures = Vec::new();
        for _ in 0..count {
            let task_id = arn::new_task_id();
            let allocated = if bridge {
                self.host_ports()
                    .allocate(&task_id, &definition.container_definitions)
            } else {
                Ok(vec![])
            };
            let port_bindings = match allocated {
                Ok(bindings) => bindings,
                Err(conflict) => {
                    failures.push(conflict.failure(&self.scope().cluster(&cluster_name)));
                    continue;
                }
            };
            let Some(address) = ipam.allocate(subnet.cidr_block) else {
                self.host_ports().release(&task_id);
                self.give_back(&mut ipam, &records);
                return Err(EcsError::LimitExceeded(format!(
                    "The subnet {} ({}) has no free address: stop tasks, run them in another subnet, or start skiff with a larger --subnet.",
                    subnet.subnet_id, subnet.cidr_block
                )));
            };
            let network = if bridge {
                NetworkPlan {
                    security_groups: vec![],
                    security: Some(ports::bridge_policy(
                        self.inner.config.subnet,
                        &port_bindings,
                    )),
                    mode: NetworkMode::Bridge,
                    port_bindings,
                    ..network_plan(&ipam, address, subnet)
                }
            } else {
                NetworkPlan {
                    security_groups: task_network.security_groups.clone(),
                    security: Some(task_network.policy.clone()),
                    ..network_plan(&ipam, address, subnet)
                }
            };
            records.push(self.new_task(
                &r,
                (&cluster_name, task_id),
                &definition,
                (cpu, memory),
                &launch,
                network,
            ));
        }
        if records.is_empty() {
            return Ok(RunTaskResponse {
                tasks: vec![],
                failures,
            });
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
            self.give_back(&mut ipam, &records);
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
            if let Some(policy) = &rec.plan.network.security {
                self.network_sync().launched(rec.task.id(), policy).await;
            }
        }
        Ok(RunTaskResponse {
            tasks: records.into_iter().map(|r| r.task).collect(),
            failures,
        })
    }

    /// Gives back the addresses and host ports of tasks that were not created.
    fn give_back(&self, ipam: &mut Ipam, records: &[TaskRecord]) {
        let mut ports = self.host_ports();
        for rec in records {
            ipam.release(rec.plan.network.address);
            ports.release(rec.task.id());
        }
    }

    fn new_task(
        &self,
        r: &RunTaskRequest,
        (cluster, task_id): (&str, String),
        definition: &TaskDefinition,
        (cpu, memory): (u32, u32),
        launch: &Launch,
        network: NetworkPlan,
    ) -> TaskRecord {
        let scope = self.scope();
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
            launch_type: launch.launch_type.into(),
            capacity_provider_name: launch.capacity_provider.clone(),
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
                    network_bindings: ports::network_bindings(&network.port_bindings, &c.name),
                    // Bridge tasks have no interface of their own in ECS.
                    network_interfaces: match network.mode {
                        NetworkMode::Bridge => vec![],
                        NetworkMode::Awsvpc => vec![NetworkInterface {
                            attachment_id: network.attachment_id.clone(),
                            private_ipv4_address: address.clone(),
                        }],
                    },
                    health_status: "UNKNOWN".into(),
                    cpu: c.cpu.to_string(),
                    memory: c.memory_mib.map(|m| m.to_string()),
                    memory_reservation: c.memory_reservation_mib.map(|m| m.to_string()),
                })
                .collect(),
            attachments: match network.mode {
                NetworkMode::Bridge => vec![],
                NetworkMode::Awsvpc => vec![Attachment {
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
            },
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
}

/// The network plan of a task at `address` of `subnet`: awsvpc, no security groups
/// yet; the caller sets what its mode needs.
fn network_plan(ipam: &Ipam, address: Ipv4Addr, subnet: &Subnet) -> NetworkPlan {
    NetworkPlan {
        address,
        prefix_len: ipam.prefix_len(),
        gateway: ipam.gateway(),
        subnet_id: subnet.subnet_id.clone(),
        attachment_id: arn::new_uuid(),
        security_groups: vec![],
        security: None,
        mode: NetworkMode::Awsvpc,
        port_bindings: vec![],
    }
}

/// How RunTask launches a definition's tasks.
struct Launch {
    launch_type: &'static str,
    capacity_provider: Option<String>,
}

/// Bridge-mode definitions run as EC2 tasks, without a networkConfiguration (they use
/// the host's ports, not interfaces of their own); the others as FARGATE tasks (see
/// [`launch_target`]). The messages are ECS's.
fn launch(definition: &TaskDefinition, r: &RunTaskRequest) -> Result<Launch, EcsError> {
    if !definition.is_bridge() {
        return Ok(Launch {
            launch_type: "FARGATE",
            capacity_provider: launch_target(
                r.launch_type.as_deref(),
                &r.capacity_provider_strategy,
            )?,
        });
    }
    if let Some(lt) = r.launch_type.as_deref().filter(|lt| *lt != "EC2") {
        return Err(EcsError::InvalidParameter(format!(
            "Task definition does not support launch_type {lt}."
        )));
    }
    if !r.capacity_provider_strategy.is_empty() {
        return Err(EcsError::InvalidParameter(
            "Task definition does not support launch_type FARGATE: bridge-mode tasks run with --launch-type EC2, not a capacity provider strategy.".into(),
        ));
    }
    if r.network_configuration.is_some() {
        return Err(EcsError::InvalidParameter(
            "Network Configuration is not valid for the given networkMode of this task definition."
                .into(),
        ));
    }
    Ok(Launch {
        launch_type: "EC2",
        capacity_provider: None,
    })
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

fn private_dns_name(address: Ipv4Addr) -> String {
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
