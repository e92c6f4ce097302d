//! What the metadata endpoint knows of each task, and the isolation decision.
//!
//! Each container gets a random token when its spec is prepared ([`TaskEndpoint`],
//! saved next to the task plan so a restarted agent serves the same URIs). The runner
//! registers the task when it hands it to the sandbox and feeds the registry the reports
//! and supervisor statuses it already produces; the server only reads snapshots.
//!
//! A request is answered only when the connection's source address is a registered
//! task's address AND the token in the path is one of that task's containers' tokens
//! ([`Registry::resolve`]); the per-task anti-spoofing rules make the address
//! trustworthy, the token names the container. Anything else is the same 404.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use model::agent::{TaskPlan, TaskReport};
use model::Timestamp;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use supervisor::protocol::TaskStatus as SupervisorStatus;

use super::stats::CpuSample;

const ENDPOINT_FILE: &str = "metadata.json";

/// A task's metadata endpoint identity, fixed when its containers' specs are prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TaskEndpoint {
    /// Container name to its token (32 hex digits, 128 random bits).
    pub tokens: BTreeMap<String, String>,
    /// Host end of the task's veth pair: its counters are the task's network stats.
    pub host_interface: String,
    /// MAC address of the task's `eth0`.
    pub mac_address: String,
    /// When the containers were handed to the sandbox: their `CreatedAt`.
    pub created_at: Timestamp,
}

impl TaskEndpoint {
    /// Fresh tokens for every container of the plan.
    pub fn new(
        plan: &TaskPlan,
        host_interface: String,
        mac_address: String,
        created_at: Timestamp,
    ) -> Self {
        let mut rng = rand::thread_rng();
        let tokens = plan
            .containers
            .iter()
            .map(|c| {
                let mut bytes = [0u8; 16];
                rng.fill_bytes(&mut bytes);
                let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                (c.name.clone(), token)
            })
            .collect();
        TaskEndpoint {
            tokens,
            host_interface,
            mac_address,
            created_at,
        }
    }

    /// The container's token; every container of the plan has one.
    pub fn token(&self, container: &str) -> Option<&str> {
        self.tokens.get(container).map(String::as_str)
    }

    /// Writes the endpoint into the task's agent state directory (atomically).
    pub fn save(&self, task_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(task_dir)?;
        let tmp = task_dir.join(format!("{ENDPOINT_FILE}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, task_dir.join(ENDPOINT_FILE))
    }

    /// The endpoint a previous agent saved, if any.
    pub fn load(task_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(task_dir.join(ENDPOINT_FILE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// One task as the metadata endpoint sees it: a consistent copy, taken per request.
#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    pub plan: Arc<TaskPlan>,
    pub endpoint: TaskEndpoint,
    /// The latest report the runner sent for the task.
    pub report: TaskReport,
    /// The latest supervisor status: container times and health details.
    pub status: Option<SupervisorStatus>,
}

/// The tasks this agent runs, by task id. Written by runners, read by the server.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    tasks: RwLock<HashMap<String, TaskRecord>>,
    /// Each container's last CPU reading, by task id and container name: the next
    /// reading's `precpu_stats`.
    cpu_samples: Mutex<HashMap<String, HashMap<String, CpuSample>>>,
}

impl Registry {
    /// Starts serving a task's metadata.
    pub fn register(&self, plan: &TaskPlan, endpoint: TaskEndpoint, report: TaskReport) {
        self.write().insert(
            plan.task_id.clone(),
            TaskRecord {
                plan: Arc::new(plan.clone()),
                endpoint,
                report,
                status: None,
            },
        );
    }

    /// Records a report of a registered task (others are ignored).
    pub fn update_report(&self, report: &TaskReport) {
        if let Some(record) = self
            .write()
            .values_mut()
            .find(|r| r.plan.task_arn == report.task_arn)
        {
            record.report.clone_from(report);
        }
    }

    /// Records the supervisor's latest status of a registered task.
    pub fn update_status(&self, task_id: &str, status: &SupervisorStatus) {
        if let Some(record) = self.write().get_mut(task_id) {
            record.status = Some(status.clone());
        }
    }

    /// Stops serving a task's metadata.
    pub fn remove(&self, task_id: &str) {
        self.write().remove(task_id);
        self.samples().remove(task_id);
    }

    /// Keeps `sample` as the container's latest CPU reading; returns the one before.
    pub fn swap_cpu_sample(
        &self,
        task_id: &str,
        container: &str,
        sample: CpuSample,
    ) -> Option<CpuSample> {
        // Held to the end, so that a concurrent `remove` cannot leave a sample behind.
        let tasks = self.tasks.read().unwrap_or_else(|p| p.into_inner());
        if !tasks.contains_key(task_id) {
            return None;
        }
        self.samples()
            .entry(task_id.to_owned())
            .or_default()
            .insert(container.to_owned(), sample)
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, CpuSample>>> {
        self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task calling from `caller` and the name of its container holding `token`, or
    /// None: the isolation decision.
    pub fn resolve(&self, caller: Ipv4Addr, token: &str) -> Option<(TaskRecord, String)> {
        let tasks = self.tasks.read().unwrap_or_else(|p| p.into_inner());
        resolve(tasks.values(), caller, token)
            .map(|(record, container)| (record.clone(), container.to_owned()))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, TaskRecord>> {
        self.tasks.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The record whose task address is `caller` and which gives `token` to one of its
/// containers, with that container's name.
fn resolve<'a>(
    records: impl IntoIterator<Item = &'a TaskRecord>,
    caller: Ipv4Addr,
    token: &str,
) -> Option<(&'a TaskRecord, &'a str)> {
    let record = records
        .into_iter()
        .find(|r| r.plan.network.address == caller)?;
    record
        .endpoint
        .tokens
        .iter()
        .find(|(_, t)| t.as_str() == token)
        .map(|(name, _)| (record, name.as_str()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use model::agent::{ContainerPlan, NetworkMode, NetworkPlan};
    use model::task::TaskStatus;

    pub(crate) fn container_plan(name: &str) -> ContainerPlan {
        ContainerPlan {
            name: name.into(),
            image: "registry.local/app:1".into(),
            entry_point: vec![],
            command: None,
            environment: vec![],
            working_directory: None,
            user: None,
            essential: true,
            depends_on: vec![],
            readonly_root_filesystem: false,
            stop_timeout_secs: 30,
            cpu: 128,
            memory_mib: Some(256),
            memory_reservation_mib: None,
            nofile: None,
            add_capabilities: vec![],
            health_check: None,
        }
    }

    pub(crate) fn plan(task_id: &str, address: Ipv4Addr, containers: &[&str]) -> TaskPlan {
        TaskPlan {
            task_id: task_id.into(),
            task_arn: format!("arn:aws:ecs:eu-west-1:000000000000:task/default/{task_id}"),
            cluster: "default".into(),
            family: "web".into(),
            revision: 3,
            cpu_units: 256,
            memory_mib: 512,
            ephemeral_storage_gib: 21,
            network: NetworkPlan {
                address,
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                subnet_id: "subnet-1".into(),
                attachment_id: "att-1".into(),
                security_groups: vec![],
                security: None,
                mode: NetworkMode::Awsvpc,
                port_bindings: vec![],
            },
            containers: containers.iter().map(|c| container_plan(c)).collect(),
            last_status: TaskStatus::Provisioning,
        }
    }

    fn registered(registry: &Registry, task_id: &str, address: Ipv4Addr) -> TaskEndpoint {
        let plan = plan(task_id, address, &["app", "sidecar"]);
        let endpoint = TaskEndpoint::new(&plan, "sk1".into(), "0a:58:0a:00:00:02".into(), 1.0);
        registry.register(&plan, endpoint.clone(), TaskReport::default());
        endpoint
    }

    #[test]
    fn tokens_are_random_hex_and_distinct_per_container() {
        let p = plan("a", Ipv4Addr::new(10, 0, 0, 2), &["app", "sidecar"]);
        let one = TaskEndpoint::new(&p, "sk1".into(), "m".into(), 0.0);
        let two = TaskEndpoint::new(&p, "sk1".into(), "m".into(), 0.0);
        let app = one.token("app").unwrap();
        assert_eq!(app.len(), 32);
        assert!(app.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(app, one.token("sidecar").unwrap());
        assert_ne!(app, two.token("app").unwrap());
    }

    #[test]
    fn a_caller_gets_its_own_container_by_token() {
        let registry = Registry::default();
        let a = Ipv4Addr::new(10, 0, 0, 2);
        let endpoint = registered(&registry, "a", a);
        let (record, container) = registry
            .resolve(a, endpoint.token("sidecar").unwrap())
            .expect("own token resolves");
        assert_eq!(
            (record.plan.task_id.as_str(), container.as_str()),
            ("a", "sidecar")
        );
    }

    #[test]
    fn another_tasks_token_or_an_unknown_address_is_refused() {
        let registry = Registry::default();
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
        let token_a = registered(&registry, "a", a)
            .token("app")
            .unwrap()
            .to_owned();
        let token_b = registered(&registry, "b", b)
            .token("app")
            .unwrap()
            .to_owned();
        // B presenting A's token, from B's address: nothing.
        assert!(registry.resolve(b, &token_a).is_none());
        // A's token from an address no task has: nothing.
        assert!(registry
            .resolve(Ipv4Addr::new(10, 0, 0, 9), &token_a)
            .is_none());
        // A made-up token from A: nothing.
        assert!(registry.resolve(a, &"0".repeat(32)).is_none());
        assert!(registry.resolve(a, "").is_none());
        assert!(registry.resolve(b, &token_b).is_some());
        registry.remove("b");
        assert!(registry.resolve(b, &token_b).is_none());
    }

    #[test]
    fn reports_and_statuses_reach_the_registered_task_only() {
        let registry = Registry::default();
        let a = Ipv4Addr::new(10, 0, 0, 2);
        let token = registered(&registry, "a", a)
            .token("app")
            .unwrap()
            .to_owned();
        let report = TaskReport {
            task_arn: plan("a", a, &[]).task_arn,
            last_status: Some(TaskStatus::Running),
            ..Default::default()
        };
        registry.update_report(&report);
        registry.update_report(&TaskReport {
            task_arn: "arn:aws:ecs:eu-west-1:000000000000:task/default/other".into(),
            last_status: Some(TaskStatus::Stopped),
            ..Default::default()
        });
        let (record, _) = registry.resolve(a, &token).unwrap();
        assert_eq!(record.report.last_status, Some(TaskStatus::Running));
    }

    #[test]
    fn cpu_samples_chain_per_container_and_go_with_the_task() {
        let registry = Registry::default();
        registered(&registry, "a", Ipv4Addr::new(10, 0, 0, 2));
        let sample = |read: &str| CpuSample {
            read: read.into(),
            ..Default::default()
        };
        assert_eq!(registry.swap_cpu_sample("a", "app", sample("1")), None);
        assert_eq!(registry.swap_cpu_sample("a", "sidecar", sample("x")), None);
        assert_eq!(
            registry.swap_cpu_sample("a", "app", sample("2")),
            Some(sample("1"))
        );
        registry.remove("a");
        // Gone with its task, and never kept for a task that is not registered.
        assert_eq!(registry.swap_cpu_sample("a", "app", sample("3")), None);
        assert_eq!(registry.swap_cpu_sample("a", "app", sample("4")), None);
    }

    #[test]
    fn the_endpoint_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = plan("a", Ipv4Addr::new(10, 0, 0, 2), &["app"]);
        let endpoint = TaskEndpoint::new(&p, "sk1".into(), "m".into(), 12.5);
        endpoint.save(dir.path()).unwrap();
        assert_eq!(TaskEndpoint::load(dir.path()), Some(endpoint));
        assert_eq!(TaskEndpoint::load(&dir.path().join("missing")), None);
    }
}
