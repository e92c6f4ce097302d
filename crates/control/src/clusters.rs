//! CreateCluster, DescribeClusters, ListClusters, DeleteCluster.

use model::cluster::{validate_cluster_name, Cluster, KeyValuePair};
use model::ops::*;
use model::tag::validate_tags;
use model::task::{Failure, TaskStatus};
use model::EcsError;
use store::{Expect, StoreJsonExt, Versioned};

use crate::{internal, Control, TaskRecord};

pub(crate) const DEFAULT_CLUSTER: &str = "default";

pub(crate) fn cluster_key(name: &str) -> String {
    format!("clusters/{name}")
}

impl Control {
    pub(crate) async fn create_cluster(
        &self,
        r: CreateClusterRequest,
    ) -> Result<CreateClusterResponse, EcsError> {
        let name = r.cluster_name.unwrap_or_else(|| DEFAULT_CLUSTER.into());
        validate_cluster_name(&name)?;
        validate_tags(&r.tags)?;
        let key = cluster_key(&name);
        let existing = self
            .store()
            .get_json::<Cluster>(&key)
            .await
            .map_err(internal)?;
        // Creating an existing ACTIVE cluster returns it unchanged, as ECS does.
        if let Some(Versioned { value, .. }) = &existing {
            if value.status == "ACTIVE" {
                return Ok(CreateClusterResponse {
                    cluster: self.with_counts(value.clone()).await?,
                });
            }
        }
        let cluster = Cluster {
            cluster_arn: self.scope().cluster(&name),
            cluster_name: name,
            status: "ACTIVE".into(),
            registered_container_instances_count: 0,
            running_tasks_count: 0,
            pending_tasks_count: 0,
            active_services_count: 0,
            statistics: vec![],
            tags: r.tags,
            settings: r.settings,
            capacity_providers: if r.capacity_providers.is_empty() {
                vec!["FARGATE".into(), "FARGATE_SPOT".into()]
            } else {
                r.capacity_providers
            },
            default_capacity_provider_strategy: r.default_capacity_provider_strategy,
        };
        let expect = existing.map_or(Expect::Absent, |v| Expect::Revision(v.mod_revision));
        match self.store().put_json(&key, &cluster, expect).await {
            Ok(_) => Ok(CreateClusterResponse { cluster }),
            Err(store::StoreError::Conflict { .. }) => Err(EcsError::Conflict(format!(
                "Cluster {} was changed by another request at the same time: retry.",
                cluster.cluster_name
            ))),
            Err(e) => Err(internal(e)),
        }
    }

    /// The ACTIVE cluster named by `identifier` (name or ARN; default `default`).
    pub(crate) async fn active_cluster(
        &self,
        identifier: Option<&str>,
    ) -> Result<Versioned<Cluster>, EcsError> {
        let name = model::arn::cluster_name(identifier.unwrap_or(DEFAULT_CLUSTER));
        match self
            .store()
            .get_json::<Cluster>(&cluster_key(name))
            .await
            .map_err(internal)?
        {
            Some(c) if c.value.status == "ACTIVE" => Ok(c),
            _ => Err(EcsError::cluster_not_found()),
        }
    }

    async fn with_counts(&self, mut cluster: Cluster) -> Result<Cluster, EcsError> {
        let tasks = self
            .store()
            .list_json::<TaskRecord>(&format!("tasks/{}/", cluster.cluster_name))
            .await
            .map_err(internal)?;
        let live = tasks.iter().map(|t| t.value.task.last_status);
        cluster.running_tasks_count =
            live.clone().filter(|s| *s == TaskStatus::Running).count() as u32;
        cluster.pending_tasks_count = live.filter(|s| s.is_pending()).count() as u32;
        cluster.active_services_count = self
            .services_of(&cluster.cluster_name)
            .await?
            .iter()
            .filter(|s| s.value.service.status == "ACTIVE")
            .count() as u32;
        cluster.statistics = vec![
            KeyValuePair {
                name: "runningFargateTasksCount".into(),
                value: cluster.running_tasks_count.to_string(),
            },
            KeyValuePair {
                name: "pendingFargateTasksCount".into(),
                value: cluster.pending_tasks_count.to_string(),
            },
        ];
        Ok(cluster)
    }

    pub(crate) async fn describe_clusters(
        &self,
        r: DescribeClustersRequest,
    ) -> Result<DescribeClustersResponse, EcsError> {
        let wanted = if r.clusters.is_empty() {
            vec![DEFAULT_CLUSTER.to_string()]
        } else {
            r.clusters
        };
        if wanted.len() > 100 {
            return Err(EcsError::InvalidParameter(
                "DescribeClusters accepts at most 100 clusters per call.".into(),
            ));
        }
        let include_tags = r.include.iter().any(|i| i == "TAGS");
        let mut response = DescribeClustersResponse {
            clusters: vec![],
            failures: vec![],
        };
        for identifier in wanted {
            let name = model::arn::cluster_name(&identifier);
            match self
                .store()
                .get_json::<Cluster>(&cluster_key(name))
                .await
                .map_err(internal)?
            {
                Some(c) => {
                    let mut cluster = self.with_counts(c.value).await?;
                    if !include_tags {
                        cluster.tags.clear();
                    }
                    response.clusters.push(cluster);
                }
                None => response.failures.push(Failure {
                    arn: self.scope().cluster(name),
                    reason: "MISSING".into(),
                    detail: None,
                }),
            }
        }
        Ok(response)
    }

    pub(crate) async fn list_clusters(
        &self,
        r: ListClustersRequest,
    ) -> Result<ListClustersResponse, EcsError> {
        let clusters: Vec<Cluster> = self
            .list_values::<Cluster>("clusters/")
            .await?
            .into_iter()
            .filter(|c| c.status == "ACTIVE")
            .collect();
        let (page, next_token) = page(
            &clusters,
            |c| c.cluster_name.clone(),
            r.next_token.as_deref(),
            r.max_results,
        )?;
        Ok(ListClustersResponse {
            cluster_arns: page.into_iter().map(|c| c.cluster_arn).collect(),
            next_token,
        })
    }

    pub(crate) async fn delete_cluster(
        &self,
        r: DeleteClusterRequest,
    ) -> Result<DeleteClusterResponse, EcsError> {
        let current = self.active_cluster(Some(&r.cluster)).await?;
        let cluster = self.with_counts(current.value).await?;
        if cluster.running_tasks_count + cluster.pending_tasks_count > 0 {
            return Err(EcsError::ClusterContainsTasks(format!(
                "The cluster cannot be deleted while tasks are active: stop its {} task(s) first (skiff ps --cluster {}).",
                cluster.running_tasks_count + cluster.pending_tasks_count,
                cluster.cluster_name
            )));
        }
        let services = self
            .services_of(&cluster.cluster_name)
            .await?
            .into_iter()
            .filter(|s| s.value.service.status != "INACTIVE")
            .count();
        if services > 0 {
            return Err(EcsError::ClusterContainsServices(format!(
                "The cluster cannot be deleted while services are active or draining: delete its {services} service(s) first and wait until they are INACTIVE (skiff service ls --cluster {}).",
                cluster.cluster_name
            )));
        }
        let mut deleted = cluster;
        deleted.status = "INACTIVE".into();
        self.store()
            .put_json(
                &cluster_key(&deleted.cluster_name),
                &deleted,
                Expect::Revision(current.mod_revision),
            )
            .await
            .map_err(|e| match e {
                store::StoreError::Conflict { .. } => EcsError::Conflict(
                    "The cluster changed while it was being deleted: retry.".into(),
                ),
                e => internal(e),
            })?;
        Ok(DeleteClusterResponse { cluster: deleted })
    }
}
