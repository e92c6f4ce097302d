//! The control plane: every ECS operation, the task lifecycle as the control plane sees
//! it, and the link to the node agent.
//!
//! [`Control::handle`] takes one parsed [`Request`] and answers with the operation's
//! response as JSON or an [`EcsError`]; the HTTP layer only parses and renders. State
//! lives in the [`Store`] under these keys:
//!
//! ```text
//! clusters/<name>                      Cluster
//! families/<family>                    latest revision number of the family
//! taskdefs/<family>/<revision:010>     TaskDefinition + tags
//! tasks/<cluster>/<task id>            TaskRecord (the Task, its plan, its placement)
//! tokens/<cluster>/<client token>      RunTask idempotency record
//! services/<cluster>/<name>            ServiceRecord (the Service and its scheduler state)
//! vpcs/, subnets/, security-groups/    the EC2 network records (see [`vpc`])
//! ```
//!
//! Agents are reached through [`model::agent`] messages (see [`Control::attach_agent`]).

mod clusters;
mod ipam;
mod ports;
mod reports;
mod services;
mod tags;
mod task_definitions;
mod tasks;
pub mod vpc;

use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use model::agent::{FromAgent, ToAgent};
use model::arn::Scope;
use model::ops::Request;
use model::EcsError;
use serde::Serialize;
use store::{Store, StoreError, StoreJsonExt};
use tokio::sync::{mpsc, Mutex};

pub use ports::{HostPortRange, HostPortRangeError, DEFAULT_HOST_PORT_RANGE};
pub use tasks::TaskRecord;

/// How the control plane is set up.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub scope: Scope,
    /// The default VPC's CIDR, which task addresses come from; its first host address
    /// is the gateway.
    pub subnet: Ipv4Net,
    /// How long a stopped task stays describable.
    pub stopped_task_retention: Duration,
    /// Where the host ports of bridge-mode mappings without a `hostPort` come from.
    pub host_port_range: HostPortRange,
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    config: ControlConfig,
    agent: std::sync::Mutex<Option<mpsc::UnboundedSender<ToAgent>>>,
    /// Serialises address allocation with the task writes that claim the addresses.
    ipam: Mutex<ipam::Ipam>,
    /// Host ports of bridge-mode tasks; allocated only under the `ipam` lock.
    ports: std::sync::Mutex<ports::HostPorts>,
    scheduler: services::SchedulerHandle,
    /// Sends the agent security group and service name changes.
    network_sync: vpc::NetworkSync,
    /// The load balancer services register their tasks with, once attached.
    balancer: std::sync::OnceLock<lb::Balancer>,
}

impl Control {
    /// Opens the control plane on `store`, rebuilding its in-memory indexes.
    pub async fn new(store: Arc<dyn Store>, config: ControlConfig) -> Result<Self, StoreError> {
        let ipam = ipam::Ipam::new(config.subnet);
        let ports = ports::HostPorts::new(config.host_port_range);
        let control = Control {
            inner: Arc::new(Inner {
                store,
                config,
                agent: std::sync::Mutex::new(None),
                ipam: Mutex::new(ipam),
                ports: std::sync::Mutex::new(ports),
                scheduler: services::SchedulerHandle::default(),
                network_sync: vpc::NetworkSync::default(),
                balancer: std::sync::OnceLock::new(),
            }),
        };
        control.ensure_default_network().await?;
        control.rebuild_allocations().await?;
        Ok(control)
    }

    fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The values stored under `prefix`, without their revisions.
    async fn list_values<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, EcsError> {
        Ok(self
            .store()
            .list_json::<T>(prefix)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    fn scope(&self) -> &Scope {
        &self.inner.config.scope
    }

    fn scheduler(&self) -> &services::SchedulerHandle {
        &self.inner.scheduler
    }

    fn network_sync(&self) -> &vpc::NetworkSync {
        &self.inner.network_sync
    }

    /// Gives services a load balancer to register their tasks with (their
    /// `loadBalancers`); without one, services that name target groups are refused.
    pub fn attach_balancer(&self, balancer: lb::Balancer) {
        if self.inner.balancer.set(balancer).is_err() {
            tracing::warn!("a load balancer was already attached; keeping the first");
        }
    }

    fn balancer(&self) -> Option<&lb::Balancer> {
        self.inner.balancer.get()
    }

    /// Serves one ECS operation.
    pub async fn handle(&self, request: Request) -> Result<serde_json::Value, EcsError> {
        match request {
            Request::CreateCluster(r) => respond(self.create_cluster(r).await),
            Request::DescribeClusters(r) => respond(self.describe_clusters(r).await),
            Request::ListClusters(r) => respond(self.list_clusters(r).await),
            Request::DeleteCluster(r) => respond(self.delete_cluster(r).await),
            Request::RegisterTaskDefinition(r) => respond(self.register_task_definition(r).await),
            Request::DescribeTaskDefinition(r) => respond(self.describe_task_definition(r).await),
            Request::ListTaskDefinitions(r) => respond(self.list_task_definitions(r).await),
            Request::ListTaskDefinitionFamilies(r) => {
                respond(self.list_task_definition_families(r).await)
            }
            Request::DeregisterTaskDefinition(r) => {
                respond(self.deregister_task_definition(r).await)
            }
            Request::RunTask(r) => respond(self.run_task(r).await),
            Request::StopTask(r) => respond(self.stop_task(r).await),
            Request::DescribeTasks(r) => respond(self.describe_tasks(r).await),
            Request::ListTasks(r) => respond(self.list_tasks(r).await),
            Request::TagResource(r) => respond(self.tag_resource(r).await),
            Request::UntagResource(r) => respond(self.untag_resource(r).await),
            Request::ListTagsForResource(r) => respond(self.list_tags_for_resource(r).await),
            Request::CreateService(r) => respond(self.create_service(r).await),
            Request::UpdateService(r) => respond(self.update_service(r).await),
            Request::DeleteService(r) => respond(self.delete_service(r).await),
            Request::DescribeServices(r) => respond(self.describe_services(r).await),
            Request::ListServices(r) => respond(self.list_services(r).await),
        }
    }

    /// Connects an agent: `to_agent` carries the control plane's messages, `from_agent`
    /// the agent's. Spawns the loop that applies the agent's reports; the agent's
    /// `Hello` is answered with a `Sync` of every task placed on it. Also starts the
    /// loop that forgets stopped tasks past their retention, the service scheduler, and
    /// the loop that sends the agent security group and service name changes.
    pub fn attach_agent(
        &self,
        to_agent: mpsc::UnboundedSender<ToAgent>,
        mut from_agent: mpsc::UnboundedReceiver<FromAgent>,
    ) -> tokio::task::JoinHandle<()> {
        *self.inner.agent.lock().unwrap_or_else(|p| p.into_inner()) = Some(to_agent);
        let control = self.clone();
        tokio::spawn(async move {
            let retention = control.clone();
            let sweeper = tokio::spawn(async move { retention.forget_expired_loop().await });
            let scheduling = control.clone();
            let scheduler = tokio::spawn(async move { scheduling.run_scheduler().await });
            let syncing = control.clone();
            let network = tokio::spawn(async move { syncing.run_network_sync().await });
            while let Some(message) = from_agent.recv().await {
                control.on_agent_message(message).await;
            }
            sweeper.abort();
            scheduler.abort();
            network.abort();
            tracing::warn!("agent disconnected from the control plane");
        })
    }

    fn send_to_agent(&self, message: ToAgent) {
        let guard = self.inner.agent.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) if tx.send(message).is_ok() => {}
            _ => tracing::warn!("no agent connected: the message waits for the agent's next Sync"),
        }
    }
}

fn respond<T: Serialize>(result: Result<T, EcsError>) -> Result<serde_json::Value, EcsError> {
    result.and_then(|value| {
        serde_json::to_value(value)
            .map_err(|e| EcsError::Server(format!("cannot encode the response: {e}")))
    })
}

/// A digest of a request without its `clientToken`: the same token with another
/// request is a conflict, the same request is a retry.
fn fingerprint<T: Serialize>(request: &T) -> String {
    use sha2::{Digest, Sha256};
    let mut value = serde_json::to_value(request).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        fields.remove("clientToken");
    }
    hex::encode(Sha256::digest(value.to_string()))
}

/// A store failure is the server's fault: logged in full, reported without internals.
fn internal(error: StoreError) -> EcsError {
    tracing::error!(error = %error, "state store operation failed");
    EcsError::Server(format!("The state store failed: {error}"))
}

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests;
