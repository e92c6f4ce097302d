//! The node agent: one per host. It owns the host's image cache, task networking and
//! sandboxes, runs the tasks the control plane assigns to it, and reports what happens
//! to them. It speaks only the [`model::agent`] protocol: it never reads the store.
//!
//! Each task is driven by one runner (see [`runner`]). The agent's own state for a task
//! lives in `<state>/tasks/<id>/` (its plan, its containers' writable layers and mount
//! points); the sandbox driver keeps the supervisor's side. When the agent restarts it
//! re-adopts every task whose supervisor still exists, before it says `Hello`, so the
//! control plane's `Sync` finds it already tracking them.
//!
//! The agent also serves the task metadata endpoint at 169.254.170.2 (see [`metadata`]);
//! runners keep its registry of tasks up to date as they report. Beside it, on the
//! bridge gateway, the task resolver (see [`dns`]) answers the service names the control
//! plane sends and forwards every other name to the host's name servers.

mod dns;
mod images;
mod metadata;
mod prepare;
mod runner;
mod security;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use dns::DnsError;
pub use images::ImageSettings;
pub use metadata::MetadataError;

use image::ImageStore;
use model::agent::{FromAgent, TaskPlan, TaskReport, ToAgent, PROTOCOL_VERSION};
use model::task::TaskStatus;
use net::{BridgeConfig, HostNetwork};
use sandbox::{ContainerDriver, DriverConfig};
use tokio::sync::{mpsc, watch};

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub agent_id: String,
    /// The agent's own state: `images/` and `tasks/`.
    pub state_dir: PathBuf,
    pub bridge: BridgeConfig,
    pub driver: DriverConfig,
    pub images: ImageSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot prepare the agent state directory {path}: check that it is writable")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the image store")]
    Images(#[from] image::ImageError),
    #[error("cannot set up the host network")]
    Network(#[from] net::NetError),
    #[error("cannot use the sandbox driver")]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("cannot start the task metadata endpoint")]
    Metadata(#[from] MetadataError),
    #[error("cannot start the task resolver")]
    Dns(#[from] DnsError),
    #[error("task {task_id} is not known to this agent: check the task id with `skiff ps`")]
    UnknownTask { task_id: String },
}

/// A running agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    config: AgentConfig,
    images: ImageStore,
    registry: image::Registry,
    logins: Arc<images::Logins>,
    /// Image digests of the tasks this agent runs, kept by prune and eviction.
    task_images: Mutex<HashMap<String, Vec<String>>>,
    network: HostNetwork,
    driver: ContainerDriver,
    reports: mpsc::UnboundedSender<FromAgent>,
    /// Runners by task id; sending a reason on the channel asks the task to stop.
    runners: Mutex<HashMap<String, watch::Sender<Option<String>>>>,
    /// What the task metadata endpoint serves, kept up to date by the runners.
    metadata: Arc<metadata::Registry>,
    /// Security group policies that arrived after the tasks' plans.
    security: security::LatestPolicies,
    /// The service names the task resolver answers, replaced by the control plane.
    names: Arc<dns::ServiceNames>,
}

impl Agent {
    /// Prepares the host (state directory, image store, bridge, sandbox driver) and
    /// re-adopts the tasks whose supervisors survived a restart.
    pub async fn start(
        config: AgentConfig,
        reports: mpsc::UnboundedSender<FromAgent>,
    ) -> Result<Agent, AgentError> {
        let tasks_dir = config.state_dir.join("tasks");
        std::fs::create_dir_all(&tasks_dir).map_err(|source| AgentError::StateDir {
            path: tasks_dir.clone(),
            source,
        })?;
        let images = ImageStore::open(&config.state_dir.join("images"))?;
        let logins = images::Logins::open(config.state_dir.join("registries.json"))?;
        let registry = images::registry(&config.images, logins.clone())?;
        let network = HostNetwork::init(config.bridge.clone()).await?;
        let driver = ContainerDriver::new(config.driver.clone())?;
        let metadata = Arc::new(metadata::Registry::default());
        metadata::start(
            network.bridge(),
            metadata.clone(),
            metadata::HostPaths {
                agent_tasks: tasks_dir.clone(),
                sandbox_root: config.driver.state_root.clone(),
                cgroup_parent: config.driver.cgroup_parent.clone(),
            },
        )
        .await?;
        let names = Arc::new(dns::ServiceNames::default());
        dns::start(network.gateway(), names.clone()).await?;
        let (security, security_queue) = security::LatestPolicies::new();
        let agent = Agent {
            inner: Arc::new(Inner {
                config,
                images,
                registry,
                logins,
                task_images: Mutex::new(HashMap::new()),
                network,
                driver,
                reports,
                runners: Mutex::new(HashMap::new()),
                metadata,
                security,
                names,
            }),
        };
        agent.start_security_worker(security_queue);
        agent.adopt_survivors().await;
        Ok(agent)
    }

    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    /// Where a task's container logs are, if this agent ran the task.
    pub fn task_logs(&self, task_id: &str) -> Result<supervisor::layout::TaskDir, AgentError> {
        let dir = self.inner.driver.task_dir(task_id);
        if dir.root().exists() {
            Ok(dir)
        } else {
            Err(AgentError::UnknownTask {
                task_id: task_id.to_string(),
            })
        }
    }

    /// The names of a task's containers, from its plan.
    pub fn task_containers(&self, task_id: &str) -> Result<Vec<String>, AgentError> {
        prepare::load_plan(&self.task_state_dir(task_id))
            .map(|plan| plan.containers.into_iter().map(|c| c.name).collect())
            .ok_or_else(|| AgentError::UnknownTask {
                task_id: task_id.to_string(),
            })
    }

    /// Whether the task is still being run here (not yet stopped and cleaned up).
    pub fn is_active(&self, task_id: &str) -> bool {
        self.is_tracked(task_id)
    }

    /// Says hello, then serves the control plane's messages until the channel closes.
    pub async fn serve(self, mut from_control: mpsc::UnboundedReceiver<ToAgent>) {
        self.send(FromAgent::Hello {
            agent_id: self.inner.config.agent_id.clone(),
            version: PROTOCOL_VERSION,
        });
        while let Some(message) = from_control.recv().await {
            match message {
                ToAgent::Launch { plan } => self.launch(*plan),
                ToAgent::Stop { task_id, reason } => self.stop(&task_id, reason),
                ToAgent::Sync { tasks } => self.sync(tasks).await,
                ToAgent::Forget { task_id } => self.forget(&task_id).await,
                ToAgent::Security(update) => self.secure(update),
                ToAgent::Names { names } => self.inner.names.replace(names),
            }
        }
    }

    fn send(&self, message: FromAgent) {
        if self.inner.reports.send(message).is_err() {
            tracing::warn!("the control plane is gone: report dropped");
        }
    }

    fn report(&self, report: TaskReport) {
        self.inner.metadata.update_report(&report);
        self.send(FromAgent::Report(report));
    }

    fn task_state_dir(&self, task_id: &str) -> PathBuf {
        self.inner.config.state_dir.join("tasks").join(task_id)
    }

    fn is_tracked(&self, task_id: &str) -> bool {
        self.runners().contains_key(task_id)
    }

    fn runners(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Option<String>>>> {
        self.inner.runners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a runner for a new task (a repeated launch of a tracked task is ignored).
    fn launch(&self, plan: TaskPlan) {
        self.spawn_runner(plan, None);
    }

    fn spawn_runner(&self, plan: TaskPlan, adopted: Option<sandbox::SupervisorClient>) {
        let task_id = plan.task_id.clone();
        let (stop_tx, stop_rx) = watch::channel(None);
        {
            let mut runners = self.runners();
            if runners.contains_key(&task_id) {
                return;
            }
            runners.insert(task_id.clone(), stop_tx);
        }
        let agent = self.clone();
        tokio::spawn(async move {
            runner::run(&agent, plan, adopted, stop_rx).await;
            agent.inner.metadata.remove(&task_id);
            let mut runners = agent.runners();
            runners.remove(&task_id);
            agent.inner.security.remove(&task_id);
        });
    }

    fn stop(&self, task_id: &str, reason: String) {
        match self.runners().get(task_id) {
            Some(tx) => {
                tx.send_replace(Some(reason));
            }
            None => tracing::debug!(task_id, "stop for a task this agent does not run"),
        }
    }

    /// Reconciles with the control plane's view: launch what should run and is not
    /// here, stop what runs here and should not.
    async fn sync(&self, plans: Vec<TaskPlan>) {
        let listed: std::collections::HashSet<String> =
            plans.iter().map(|p| p.task_id.clone()).collect();
        let orphans: Vec<String> = self
            .runners()
            .keys()
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect();
        for task_id in orphans {
            tracing::warn!(task_id = %task_id, "stopping a task the control plane does not know");
            self.stop(&task_id, "Task unknown to the control plane".into());
        }
        for plan in plans {
            if self.is_tracked(&plan.task_id) {
                continue;
            }
            if plan.last_status < TaskStatus::Running {
                // Nothing of it ran yet: every step of a launch can be redone.
                tracing::info!(task_id = %plan.task_id, "launching a task from the control plane's sync");
                self.launch(plan);
            } else {
                tracing::warn!(task_id = %plan.task_id, "task lost: its sandbox is gone");
                let agent = self.clone();
                tokio::spawn(async move { runner::report_lost(&agent, plan).await });
            }
        }
    }

    /// Drops what is left of a stopped task past retention: its logs and state.
    async fn forget(&self, task_id: &str) {
        if self.is_tracked(task_id) {
            return;
        }
        for dir in [
            self.inner.driver.task_dir(task_id).root().to_path_buf(),
            self.task_state_dir(task_id),
        ] {
            if let Err(e) = remove_dir_if_present(&dir) {
                tracing::warn!(task_id, path = %dir.display(), error = %e, "cannot remove a forgotten task's files");
            }
        }
    }

    /// Re-attaches to every supervisor that outlived the previous agent.
    async fn adopt_survivors(&self) {
        let task_ids = match self.inner.driver.tasks() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot list surviving tasks");
                return;
            }
        };
        for task_id in task_ids {
            let Some(plan) = prepare::load_plan(&self.task_state_dir(&task_id)) else {
                continue;
            };
            if prepare::is_finished(&self.task_state_dir(&task_id)) {
                continue;
            }
            match self.inner.driver.adopt(&task_id).await {
                Ok(client) => {
                    tracing::info!(task_id = %task_id, "re-adopted a running task");
                    self.restore_pins(&task_id);
                    self.spawn_runner(plan, Some(client));
                }
                Err(e) => {
                    // Its supervisor is gone: nothing of the task can be followed. Release
                    // what it held; the control plane's sync then launches it again if it
                    // never ran, or records it as lost.
                    tracing::warn!(task_id = %task_id, error = %e, "cannot re-adopt a task; releasing it");
                    runner::release(self, &task_id).await;
                }
            }
        }
    }
}

fn remove_dir_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
