//! Security group updates from the control plane, applied to this host's tasks.
//!
//! The agent's message loop only records an update and queues it: one worker applies
//! the queue in order, merging the updates that arrived while it applied the previous
//! one (the latest member lists, every task's latest policy), so a burst of changes is
//! one nft transaction and a launch never waits behind one. An update that fails is
//! retried a second later, merged with what came meanwhile.
//!
//! A task's first policy comes with its plan; later ones arrive as
//! [`ToAgent::Security`](model::agent::ToAgent::Security) at any moment, possibly while
//! the task is still launching. Each update gets the next version of a counter, and the
//! latest policy of every task the agent runs is kept with its version until the task's
//! runner ends. The network applies an update to the tasks already attached, and a
//! runner re-applies its task's latest policy right after attaching it; since the
//! network never replaces a policy with an older version, whichever of the two comes
//! last leaves the newest policy in force.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use model::agent::{SecurityPolicy, SecurityUpdate};
use tokio::sync::mpsc;

use crate::Agent;

/// How long the worker waits before retrying an update that failed.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// An update waiting for the worker.
#[derive(Debug)]
struct Queued {
    members: BTreeMap<String, Vec<std::net::Ipv4Addr>>,
    policies: BTreeMap<String, SecurityPolicy>,
    version: u64,
}

impl Queued {
    /// Folds a later update in: its member lists (complete) replace these, its policies
    /// replace those of the same tasks.
    fn merge(&mut self, later: Queued) {
        self.members = later.members;
        self.policies.extend(later.policies);
        self.version = later.version;
    }
}

/// The latest policies of the tasks this agent runs, and the worker's queue.
#[derive(Debug)]
pub(crate) struct LatestPolicies {
    version: AtomicU64,
    policies: Mutex<HashMap<String, (SecurityPolicy, u64)>>,
    queue: mpsc::UnboundedSender<Queued>,
}

/// The receiving end of the worker's queue, for [`Agent::start_security_worker`].
pub(crate) struct SecurityQueue(mpsc::UnboundedReceiver<Queued>);

impl LatestPolicies {
    pub(crate) fn new() -> (Self, SecurityQueue) {
        let (queue, receiver) = mpsc::unbounded_channel();
        let latest = LatestPolicies {
            version: AtomicU64::new(0),
            policies: Mutex::new(HashMap::new()),
            queue,
        };
        (latest, SecurityQueue(receiver))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SecurityPolicy, u64)>> {
        // Every update is one statement: a panic cannot leave the map torn.
        self.policies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets a task whose runner has ended.
    pub(crate) fn remove(&self, task_id: &str) {
        self.lock().remove(task_id);
    }
}

impl Agent {
    /// Records a security update and queues it for the worker, which applies member
    /// sets and the policies of tasks attached by then; the policies of tasks still
    /// launching are kept for their runners.
    pub(crate) fn secure(&self, update: SecurityUpdate) {
        let latest = &self.inner.security;
        let version = latest.version.fetch_add(1, Ordering::Relaxed) + 1;
        let policies: BTreeMap<String, SecurityPolicy> = {
            // Under the runners lock, so a runner that ends meanwhile cannot leave its
            // task's policy behind: runners are removed under the same lock.
            let runners = self.runners();
            let mut kept = latest.lock();
            update
                .policies
                .into_iter()
                .filter(|(task_id, _)| runners.contains_key(task_id))
                .inspect(|(task_id, policy)| {
                    kept.insert(task_id.clone(), (policy.clone(), version));
                })
                .collect()
        };
        let queued = Queued {
            members: update.members,
            policies,
            version,
        };
        if latest.queue.send(queued).is_err() {
            tracing::error!(version, "the security worker is gone: update dropped");
        }
    }

    /// Starts the worker that applies queued security updates in order.
    pub(crate) fn start_security_worker(&self, SecurityQueue(mut queue): SecurityQueue) {
        let agent = self.clone();
        tokio::spawn(async move {
            // An update that failed is retried after a pause, merged with what came
            // meanwhile: the control plane sends only changes, so it would not come again.
            let mut failed: Option<Queued> = None;
            loop {
                let mut next = match failed.take() {
                    Some(update) => {
                        tokio::time::sleep(RETRY_PAUSE).await;
                        update
                    }
                    None => match queue.recv().await {
                        Some(update) => update,
                        None => return,
                    },
                };
                while let Ok(later) = queue.try_recv() {
                    next.merge(later);
                }
                if !agent.apply_security(&next).await {
                    failed = Some(next);
                }
            }
        });
    }

    /// Applies one (merged) update; false when it failed.
    async fn apply_security(&self, update: &Queued) -> bool {
        let Queued {
            members,
            policies,
            version,
        } = update;
        match self
            .inner
            .network
            .update_security(Some(members), policies, *version)
            .await
        {
            Ok(rebuilt) => {
                tracing::debug!(
                    version,
                    groups = members.len(),
                    policies = policies.len(),
                    rebuilt = rebuilt.len(),
                    "security update applied"
                );
                true
            }
            Err(error) => {
                tracing::error!(
                    version,
                    error = %model::error_chain(&error),
                    "cannot apply a security update: tasks keep their previous rules; retrying"
                );
                false
            }
        }
    }

    /// Applies the latest update of a task's policy, if one came after its plan; called
    /// once the task is attached. An error is the task's stoppedReason.
    pub(crate) async fn apply_latest_policy(&self, task_id: &str) -> Result<(), String> {
        let Some((policy, version)) = self.inner.security.lock().get(task_id).cloned() else {
            return Ok(());
        };
        self.inner
            .network
            .update_security(
                None,
                &BTreeMap::from([(task_id.to_owned(), policy)]),
                version,
            )
            .await
            .map(drop)
            .map_err(|e| {
                format!(
                    "ResourceInitializationError: failed to apply the task's security groups: {}",
                    model::error_chain(&e)
                )
            })
    }
}
