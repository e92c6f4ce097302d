//! Keeps the agent's firewall and resolver in step with the store.
//!
//! A pass reads every task and security group, compiles them (see [`super::policy`]) and
//! sends the agent what changed since the last pass: one
//! [`ToAgent::Security`] with the complete member lists and the policies that changed,
//! and [`ToAgent::Names`] when the service name table changed. Passes run when a task is
//! created, changes status or health, when a group changes, after the agent's `Hello`
//! (which sends everything again), and every few seconds in case a wake was missed.
//! Wakes coalesce, so a burst of launches costs a pass or two, not one each.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use model::agent::{SecurityPolicy, SecurityUpdate, ToAgent};
use model::vpc::{SecurityGroup, Vpc};
use model::EcsError;
use tokio::sync::{Mutex, Notify};

use super::policy::{self, Compiled};
use crate::{Control, TaskRecord};

/// How often a pass runs without being woken.
const PERIOD: Duration = Duration::from_secs(5);

/// Wakes the passes and remembers what they sent.
#[derive(Debug, Default)]
pub(crate) struct NetworkSync {
    notify: Notify,
    /// What the agent was last sent; None until the first pass after its `Hello`.
    sent: Mutex<Option<Sent>>,
}

#[derive(Debug)]
struct Sent {
    members: BTreeMap<String, Vec<Ipv4Addr>>,
    policies: BTreeMap<String, SecurityPolicy>,
    names: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl NetworkSync {
    /// Asks for a pass soon; wakes coalesce.
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// Records the policy a task's plan carried to the agent, so that passes do not send
    /// it again.
    pub(crate) async fn launched(&self, task_id: &str, policy: &SecurityPolicy) {
        if let Some(sent) = self.sent.lock().await.as_mut() {
            sent.policies.insert(task_id.to_owned(), policy.clone());
        }
        self.wake();
    }

    /// Makes the next pass send everything: the agent (re)connected.
    pub(crate) async fn resend(&self) {
        *self.sent.lock().await = None;
        self.wake();
    }
}

impl Control {
    /// Runs passes until the task is aborted.
    pub(crate) async fn run_network_sync(&self) {
        loop {
            if let Err(e) = self.sync_network().await {
                tracing::warn!(error = %e, "network state pass failed; retrying");
            }
            tokio::select! {
                () = self.network_sync().notify.notified() => {}
                () = tokio::time::sleep(PERIOD) => {}
            }
        }
    }

    async fn sync_network(&self) -> Result<(), EcsError> {
        let mut sent = self.network_sync().sent.lock().await;
        let compiled = self.compile_network().await?;
        let (update, names) =
            match sent.as_ref() {
                None => (
                    Some(SecurityUpdate {
                        members: compiled.members.clone(),
                        policies: compiled.policies.clone(),
                    }),
                    Some(compiled.names.clone()),
                ),
                Some(previous) => {
                    let policies: BTreeMap<String, SecurityPolicy> = compiled
                        .policies
                        .iter()
                        .filter(|(id, policy)| previous.policies.get(*id) != Some(*policy))
                        .map(|(id, policy)| (id.clone(), policy.clone()))
                        .collect();
                    let update = (previous.members != compiled.members || !policies.is_empty())
                        .then(|| SecurityUpdate {
                            members: compiled.members.clone(),
                            policies,
                        });
                    let names = (previous.names != compiled.names).then(|| compiled.names.clone());
                    (update, names)
                }
            };
        if let Some(update) = update {
            tracing::debug!(
                groups = update.members.len(),
                policies = update.policies.len(),
                "sending security group changes"
            );
            self.send_to_agent(ToAgent::Security(update));
        }
        if let Some(names) = names {
            tracing::debug!(names = names.len(), "sending the service name table");
            self.send_to_agent(ToAgent::Names { names });
        }
        *sent = Some(Sent {
            members: compiled.members,
            policies: compiled.policies,
            names: compiled.names,
        });
        Ok(())
    }

    async fn compile_network(&self) -> Result<Compiled, EcsError> {
        let tasks: Vec<TaskRecord> = self.list_values("tasks/").await?;
        let groups: BTreeMap<String, SecurityGroup> = self
            .list_values::<SecurityGroup>("security-groups/")
            .await?
            .into_iter()
            .map(|g| (g.group_id.clone(), g))
            .collect();
        let default_vpc = self
            .list_values::<Vpc>("vpcs/")
            .await?
            .into_iter()
            .find(|v| v.is_default);
        let default_groups: Vec<String> = groups
            .values()
            .filter(|g| {
                g.is_default() && Some(&g.vpc_id) == default_vpc.as_ref().map(|v| &v.vpc_id)
            })
            .map(|g| g.group_id.clone())
            .collect();
        Ok(policy::compile(&tasks, &groups, &default_groups))
    }
}

#[cfg(test)]
mod tests;
