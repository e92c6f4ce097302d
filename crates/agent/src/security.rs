//! Security group updates from the control plane, applied to this host's tasks.
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

use crate::Agent;

/// The latest policies of the tasks this agent runs.
#[derive(Debug, Default)]
pub(crate) struct LatestPolicies {
    version: AtomicU64,
    policies: Mutex<HashMap<String, (SecurityPolicy, u64)>>,
}

impl LatestPolicies {
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
    /// Applies a security update: member sets and the policies of tasks attached here
    /// now; the policies of tasks still launching are kept for their runners.
    pub(crate) async fn secure(&self, update: SecurityUpdate) {
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
        match self
            .inner
            .network
            .update_security(Some(&update.members), &policies, version)
            .await
        {
            Ok(rebuilt) => tracing::debug!(
                version,
                groups = update.members.len(),
                policies = policies.len(),
                rebuilt = rebuilt.len(),
                "security update applied"
            ),
            Err(error) => tracing::error!(
                version,
                error = %model::error_chain(&error),
                "cannot apply a security update: tasks keep their previous rules until the next one"
            ),
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
