//! CreateService, UpdateService, DeleteService, DescribeServices, ListServices, and the
//! service records the scheduler works from.
//!
//! A service lives at `services/<cluster>/<name>` as a [`ServiceRecord`]: the ECS view
//! (with its deployments and events) plus the scheduler's own bookkeeping. The API
//! only changes intent (desired count, a new deployment, DRAINING); the scheduler
//! ([`scheduler`]) turns intent into tasks, each started with `startedBy` = its
//! deployment's id and `group` = `service:<name>`, exactly as ECS labels them.

mod balancing;
mod plan;
mod scheduler;

use std::collections::BTreeSet;

use model::ops::RunTaskRequest;
use model::service::*;
use model::task::Failure;
use model::{arn, EcsError, Timestamp};
use serde::{Deserialize, Serialize};
use store::{Expect, StoreError, StoreJsonExt, Versioned};

use crate::tasks::{launch_target, network_subnet};
use crate::{internal, Control};

pub(crate) use scheduler::SchedulerHandle;

/// A service as the control plane keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ServiceRecord {
    pub service: Service,
    /// Digest of the CreateService request, for its idempotency.
    pub fingerprint: String,
    #[serde(default)]
    pub scheduler: SchedulerState,
}

/// What the scheduler remembers between passes beyond the ECS view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct SchedulerState {
    /// Failed tasks since the last healthy one: drives the launch back-off.
    pub failure_streak: u32,
    pub last_failure_at: Option<Timestamp>,
    /// Tasks told to stop that were already counted (or stopped by the scheduler).
    pub accounted: BTreeSet<String>,
    /// The task definition of the last COMPLETED deployment, the rollback target.
    pub last_completed: Option<String>,
    /// Whether the steady state was announced (announced once per arrival).
    pub steady: bool,
    /// Tasks registered with the service's target groups.
    #[serde(default)]
    pub registered: BTreeSet<String>,
    /// Registered tasks whose targets were deregistered.
    #[serde(default)]
    pub deregistered: BTreeSet<String>,
}

pub(crate) fn service_key(cluster: &str, name: &str) -> String {
    format!("services/{cluster}/{name}")
}

/// The `group` of a service's tasks.
pub(crate) fn service_group(name: &str) -> String {
    format!("{SERVICE_GROUP_PREFIX}{name}")
}

const SERVICE_GROUP_PREFIX: &str = "service:";

/// Whether a service started the task (its group is `service:<name>`): only their
/// changes concern the scheduler.
pub(crate) fn is_service_task(task: &model::task::Task) -> bool {
    service_name(task).is_some()
}

/// The name of the service that started the task, if one did.
pub(crate) fn service_name(task: &model::task::Task) -> Option<&str> {
    task.group.as_deref()?.strip_prefix(SERVICE_GROUP_PREFIX)
}

/// A fresh PRIMARY deployment of `task_definition` for the service as configured now.
pub(crate) fn new_deployment(
    service: &Service,
    task_definition: &str,
    now: Timestamp,
) -> Deployment {
    Deployment {
        id: arn::new_deployment_id(),
        status: "PRIMARY".into(),
        task_definition: task_definition.to_string(),
        desired_count: service.desired_count,
        pending_count: 0,
        running_count: 0,
        failed_tasks: 0,
        created_at: now,
        updated_at: now,
        capacity_provider_strategy: service.capacity_provider_strategy.clone(),
        launch_type: service.launch_type.clone(),
        platform_version: service.platform_version.clone(),
        platform_family: service.platform_family.clone(),
        network_configuration: service.network_configuration.clone(),
        rollout_state: "IN_PROGRESS".into(),
        rollout_state_reason: "ECS deployment detected.".into(),
    }
}

impl Control {
    pub(crate) async fn create_service(
        &self,
        r: CreateServiceRequest,
    ) -> Result<ServiceResponse, EcsError> {
        validate_service_name(&r.service_name)?;
        model::tag::validate_tags(&r.tags)?;
        if let Some(strategy) = r.scheduling_strategy.as_deref().filter(|s| *s != "REPLICA") {
            return Err(EcsError::InvalidParameter(format!(
                "Scheduling strategy {strategy} is not supported on Fargate: use REPLICA."
            )));
        }
        if let Some(kind) = r
            .deployment_controller
            .as_ref()
            .map(|c| c.kind.as_str())
            .filter(|k| *k != "ECS")
        {
            return Err(EcsError::InvalidParameter(format!(
                "Deployment controller {kind} is not supported: Skiff runs ECS rolling deployments (deploymentController type ECS)."
            )));
        }
        let desired = r.desired_count.unwrap_or(0);
        validate_desired(desired)?;
        let deployment_configuration = r
            .deployment_configuration
            .clone()
            .unwrap_or_default()
            .with_defaults();
        deployment_configuration.validate()?;
        let capacity_provider =
            launch_target(r.launch_type.as_deref(), &r.capacity_provider_strategy)?;
        network_subnet(r.network_configuration.as_ref(), "")?;
        let definition_id = r.task_definition.clone().ok_or_else(|| {
            EcsError::InvalidParameter(
                "taskDefinition is required: name the family:revision the service runs.".into(),
            )
        })?;
        let definition = self.service_task_definition(&definition_id, true).await?;
        self.validate_load_balancers(&r.load_balancers, &definition)
            .await?;

        let cluster = self.active_cluster(r.cluster.as_deref()).await?;
        let cluster_name = cluster.value.cluster_name.clone();
        let key = service_key(&cluster_name, &r.service_name);
        let fingerprint = crate::fingerprint(&r);
        let existing = self
            .store()
            .get_json::<ServiceRecord>(&key)
            .await
            .map_err(internal)?;
        if let Some(Versioned { value, .. }) = &existing {
            if value.service.status != "INACTIVE" {
                if value.fingerprint == fingerprint {
                    return Ok(ServiceResponse {
                        service: value.service.clone(),
                    });
                }
                return Err(EcsError::InvalidParameter(format!(
                    "Creation of service was not idempotent: service {} already exists in cluster {cluster_name} with other parameters. Use UpdateService to change it.",
                    r.service_name
                )));
            }
        }
        let now = model::now();
        let mut service = Service {
            service_arn: self.scope().service(&cluster_name, &r.service_name),
            service_name: r.service_name.clone(),
            cluster_arn: cluster.value.cluster_arn.clone(),
            load_balancers: r.load_balancers.clone(),
            service_registries: r.service_registries.clone(),
            status: "ACTIVE".into(),
            desired_count: desired,
            running_count: 0,
            pending_count: 0,
            launch_type: capacity_provider.is_none().then(|| "FARGATE".to_string()),
            capacity_provider_strategy: r.capacity_provider_strategy.clone(),
            platform_version: "LATEST".into(),
            platform_family: "Linux".into(),
            task_definition: definition.task_definition_arn.clone().unwrap_or_default(),
            deployment_configuration,
            deployments: vec![],
            events: vec![],
            created_at: now,
            placement_constraints: r.placement_constraints.clone(),
            placement_strategy: r.placement_strategy.clone(),
            network_configuration: r.network_configuration.clone(),
            health_check_grace_period_seconds: r.health_check_grace_period_seconds.unwrap_or(0),
            scheduling_strategy: "REPLICA".into(),
            deployment_controller: DeploymentController::default(),
            tags: r.tags.clone(),
            created_by: format!("arn:aws:iam::{}:root", self.scope().account),
            enable_ecs_managed_tags: r.enable_ecs_managed_tags.unwrap_or(false),
            propagate_tags: r.propagate_tags.clone(),
            enable_execute_command: r.enable_execute_command.unwrap_or(false),
        };
        let deployment = new_deployment(&service, &service.task_definition, now);
        service.deployments.push(deployment);
        let record = ServiceRecord {
            service,
            fingerprint,
            scheduler: SchedulerState::default(),
        };
        let expect = existing.map_or(Expect::Absent, |v| Expect::Revision(v.mod_revision));
        self.store()
            .put_json(&key, &record, expect)
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => EcsError::Conflict(format!(
                    "Service {} was created by another request at the same time: describe it, or retry.",
                    r.service_name
                )),
                e => internal(e),
            })?;
        tracing::info!(service = %r.service_name, cluster = %cluster_name, desired, "service created");
        self.scheduler().wake();
        Ok(ServiceResponse {
            service: record.service,
        })
    }

    pub(crate) async fn update_service(
        &self,
        r: UpdateServiceRequest,
    ) -> Result<ServiceResponse, EcsError> {
        if let Some(desired) = r.desired_count {
            validate_desired(desired)?;
        }
        if r.capacity_provider_strategy.is_some() || r.platform_version.is_some() {
            launch_target(None, r.capacity_provider_strategy.as_deref().unwrap_or(&[]))?;
        }
        network_subnet(r.network_configuration.as_ref(), "")?;
        let definition = match &r.task_definition {
            Some(id) => Some(self.service_task_definition(id, true).await?),
            None => None,
        };
        let cluster = self
            .active_cluster(r.cluster.as_deref())
            .await?
            .value
            .cluster_name;
        let name = arn::service_name(&r.service).to_string();
        let current = self.active_service(&cluster, &name).await?;
        let definition = match definition {
            Some(definition) => definition,
            None => {
                self.service_task_definition(&current.value.service.task_definition, false)
                    .await?
            }
        };
        if let Some(balancers) = &r.load_balancers {
            self.validate_load_balancers(balancers, &definition).await?;
        }
        let definition_arn = definition.task_definition_arn.clone().unwrap_or_default();
        let service = self
            .edit_service(&cluster, &name, |record| {
                let s = &mut record.service;
                if s.status != "ACTIVE" {
                    return Err(service_not_active());
                }
                let mut redeploy = r.force_new_deployment.unwrap_or(false);
                if let Some(desired) = r.desired_count {
                    s.desired_count = desired;
                }
                if let Some(update) = &r.deployment_configuration {
                    let merged = s.deployment_configuration.updated_with(update);
                    merged.validate()?;
                    s.deployment_configuration = merged;
                }
                if let Some(grace) = r.health_check_grace_period_seconds {
                    s.health_check_grace_period_seconds = grace;
                }
                if let Some(enable) = r.enable_execute_command {
                    s.enable_execute_command = enable;
                }
                if let Some(tags) = r.enable_ecs_managed_tags {
                    s.enable_ecs_managed_tags = tags;
                }
                if let Some(propagate) = &r.propagate_tags {
                    s.propagate_tags = Some(propagate.clone());
                }
                if definition_arn != s.task_definition {
                    s.task_definition = definition_arn.clone();
                    redeploy = true;
                }
                if let Some(network) = &r.network_configuration {
                    redeploy |= s.network_configuration.as_ref() != Some(network);
                    s.network_configuration = Some(network.clone());
                }
                if let Some(strategy) = &r.capacity_provider_strategy {
                    redeploy |= s.capacity_provider_strategy != *strategy;
                    s.capacity_provider_strategy = strategy.clone();
                }
                if let Some(balancers) = &r.load_balancers {
                    redeploy |= s.load_balancers != *balancers;
                    s.load_balancers = balancers.clone();
                }
                if let Some(registries) = &r.service_registries {
                    s.service_registries = registries.clone();
                }
                if redeploy {
                    let deployment = new_deployment(s, &s.task_definition, model::now());
                    tracing::info!(service = %s.service_name, deployment = %deployment.id, task_definition = %s.task_definition, "new deployment");
                    for older in &mut s.deployments {
                        older.status = "ACTIVE".into();
                    }
                    s.deployments.insert(0, deployment);
                    record.scheduler.steady = false;
                } else if let Some(primary) = s.deployments.first_mut() {
                    primary.desired_count = s.desired_count;
                }
                Ok(())
            })
            .await?;
        self.scheduler().wake();
        Ok(ServiceResponse { service })
    }

    pub(crate) async fn delete_service(
        &self,
        r: DeleteServiceRequest,
    ) -> Result<ServiceResponse, EcsError> {
        let cluster = self
            .active_cluster(r.cluster.as_deref())
            .await?
            .value
            .cluster_name;
        let name = arn::service_name(&r.service).to_string();
        let force = r.force.unwrap_or(false);
        let service = self
            .edit_service(&cluster, &name, |record| {
                let s = &mut record.service;
                if s.status != "ACTIVE" {
                    return Err(service_not_active());
                }
                if s.desired_count > 0 && !force {
                    return Err(EcsError::InvalidParameter(format!(
                        "The service cannot be stopped while it is scaled above 0: set its desired count to 0 first (skiff service scale {} 0), or delete with force.",
                        s.service_name
                    )));
                }
                s.desired_count = 0;
                s.status = "DRAINING".into();
                Ok(())
            })
            .await?;
        tracing::info!(service = %name, cluster = %cluster, force, "service deleted; draining its tasks");
        self.scheduler().wake();
        Ok(ServiceResponse { service })
    }

    pub(crate) async fn describe_services(
        &self,
        r: DescribeServicesRequest,
    ) -> Result<DescribeServicesResponse, EcsError> {
        if r.services.is_empty() {
            return Err(EcsError::InvalidParameter(
                "Services cannot be empty: name at least one service.".into(),
            ));
        }
        if r.services.len() > MAX_DESCRIBE {
            return Err(EcsError::InvalidParameter(format!(
                "DescribeServices accepts at most {MAX_DESCRIBE} services per call."
            )));
        }
        let cluster = self
            .active_cluster(r.cluster.as_deref())
            .await?
            .value
            .cluster_name;
        let include_tags = r.include.iter().any(|i| i == "TAGS");
        let mut response = DescribeServicesResponse {
            services: vec![],
            failures: vec![],
        };
        for identifier in &r.services {
            let name = arn::service_name(identifier);
            match self.service_record(&cluster, name).await? {
                Some(record) => {
                    let mut service = record.value.service;
                    if !include_tags {
                        service.tags.clear();
                    }
                    response.services.push(service);
                }
                None => response.failures.push(Failure {
                    arn: self.scope().service(&cluster, name),
                    reason: "MISSING".into(),
                    detail: None,
                }),
            }
        }
        Ok(response)
    }

    pub(crate) async fn list_services(
        &self,
        r: ListServicesRequest,
    ) -> Result<ListServicesResponse, EcsError> {
        if let Some(lt) = r.launch_type.as_deref().filter(|lt| *lt != "FARGATE") {
            return Err(EcsError::InvalidParameter(format!(
                "Invalid launchType '{lt}': Skiff runs FARGATE services only."
            )));
        }
        let cluster = self
            .active_cluster(r.cluster.as_deref())
            .await?
            .value
            .cluster_name;
        let services: Vec<Service> = self
            .services_of(&cluster)
            .await?
            .into_iter()
            .map(|v| v.value.service)
            .filter(|s| s.status != "INACTIVE")
            .filter(|s| {
                r.scheduling_strategy
                    .as_deref()
                    .is_none_or(|strategy| strategy == s.scheduling_strategy)
            })
            .collect();
        let (page, next_token) = model::ops::page(
            &services,
            |s| s.service_name.clone(),
            r.next_token.as_deref(),
            r.max_results,
        )?;
        Ok(ListServicesResponse {
            service_arns: page.into_iter().map(|s| s.service_arn).collect(),
            next_token,
        })
    }

    pub(crate) async fn service_record(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Option<Versioned<ServiceRecord>>, EcsError> {
        self.store()
            .get_json::<ServiceRecord>(&service_key(cluster, name))
            .await
            .map_err(internal)
    }

    pub(crate) async fn services_of(
        &self,
        cluster: &str,
    ) -> Result<Vec<Versioned<ServiceRecord>>, EcsError> {
        self.store()
            .list_json::<ServiceRecord>(&format!("services/{cluster}/"))
            .await
            .map_err(internal)
    }

    async fn active_service(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Versioned<ServiceRecord>, EcsError> {
        match self.service_record(cluster, name).await? {
            Some(record) if record.value.service.status == "ACTIVE" => Ok(record),
            Some(_) => Err(service_not_active()),
            None => Err(EcsError::ServiceNotFound(format!(
                "Service not found: no service {name} in cluster {cluster} (list them with ListServices)."
            ))),
        }
    }

    /// Applies `change` to a service with compare-and-swap, retrying on conflicts.
    async fn edit_service(
        &self,
        cluster: &str,
        name: &str,
        change: impl Fn(&mut ServiceRecord) -> Result<(), EcsError>,
    ) -> Result<Service, EcsError> {
        loop {
            let current = self.active_service(cluster, name).await?;
            let mut record = current.value;
            change(&mut record)?;
            match self
                .store()
                .put_json(
                    &service_key(cluster, name),
                    &record,
                    Expect::Revision(current.mod_revision),
                )
                .await
            {
                Ok(_) => return Ok(record.service),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(internal(e)),
            }
        }
    }

    /// The task definition a service runs; `require_active` for a newly named one
    /// (a running service keeps its revision even after it is deregistered, as in ECS).
    async fn service_task_definition(
        &self,
        identifier: &str,
        require_active: bool,
    ) -> Result<model::task_definition::TaskDefinition, EcsError> {
        let definition = self
            .find_task_definition(identifier)
            .await?
            .value
            .definition;
        if require_active && definition.status.as_deref() != Some("ACTIVE") {
            return Err(EcsError::Client(format!(
                "TaskDefinition is inactive: {identifier} was deregistered; register a new revision or name an active one."
            )));
        }
        Ok(definition)
    }

    /// The RunTask a deployment's launch is.
    pub(crate) fn service_run_request(
        service: &Service,
        cluster: &str,
        deployment_id: &str,
        task_definition: &str,
        count: u32,
    ) -> RunTaskRequest {
        RunTaskRequest {
            cluster: Some(cluster.to_string()),
            task_definition: task_definition.to_string(),
            count: Some(count),
            launch_type: service.launch_type.clone(),
            capacity_provider_strategy: service.capacity_provider_strategy.clone(),
            network_configuration: service.network_configuration.clone(),
            started_by: Some(deployment_id.to_string()),
            group: Some(service_group(&service.service_name)),
            tags: if service.propagate_tags.as_deref() == Some("SERVICE") {
                service.tags.clone()
            } else {
                vec![]
            },
            enable_execute_command: Some(service.enable_execute_command),
            ..RunTaskRequest::default()
        }
    }
}

fn validate_desired(desired: u32) -> Result<(), EcsError> {
    if desired > MAX_DESIRED_COUNT {
        return Err(EcsError::InvalidParameter(format!(
            "desiredCount must be between 0 and {MAX_DESIRED_COUNT}; {desired} was given."
        )));
    }
    Ok(())
}

fn service_not_active() -> EcsError {
    EcsError::ServiceNotActive(
        "Service was not ACTIVE: it is being deleted or was deleted; create it again to use it."
            .into(),
    )
}
