//! The management operations behind the ELBv2 API: create, describe, modify and delete
//! target groups, load balancers and listeners, and (de)register targets.
//!
//! Each mutation holds the balancer's write lock, checks its preconditions against the
//! store, writes the store with a compare-and-swap precondition, and only then changes
//! the run-time state (pools, listeners), so what is served always matches what is
//! persisted. Deletes of resources that no longer exist succeed, as in ELBv2.

use std::collections::BTreeSet;

use store::{Expect, Op, StoreError, StoreJsonExt, Versioned};

use crate::config::TargetGroupSpec;
use crate::config::{name_in_arn, HealthCheck, ListenerConfig, ListenerSpec, LoadBalancerConfig};
use crate::config::{LoadBalancerSpec, Protocol, Target, TargetGroupAttributes, TargetGroupConfig};
use crate::pool::{PoolSettings, TargetHealth, TargetReason, TargetState};
use crate::{Balancer, LbError, LISTENERS, LOAD_BALANCERS, TARGET_GROUPS};

/// A target group as described to users and to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetGroupInfo {
    pub arn: String,
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub vpc_id: Option<String>,
    pub target_type: String,
    pub health_check: HealthCheck,
    /// The load balancers whose listeners forward to this group.
    pub load_balancer_arns: Vec<String>,
}

/// Which target groups DescribeTargetGroups returns; all empty: every group.
#[derive(Debug, Clone, Default)]
pub struct TargetGroupQuery {
    pub arns: Vec<String>,
    pub names: Vec<String>,
    pub load_balancer_arn: Option<String>,
}

fn group_key(name: &str) -> String {
    format!("{TARGET_GROUPS}{name}")
}

fn lb_key(name: &str) -> String {
    format!("{LOAD_BALANCERS}{name}")
}

fn listener_key(port: u16) -> String {
    format!("{LISTENERS}{port:05}")
}

impl Balancer {
    // --- target groups ---------------------------------------------------------------

    pub async fn create_target_group(
        &self,
        spec: TargetGroupSpec,
    ) -> Result<TargetGroupInfo, LbError> {
        let config = spec.into_config(&self.inner.scope)?;
        let _writes = self.inner.writes.lock().await;
        let key = group_key(&config.name);
        match self
            .inner
            .store
            .put_json(&key, &config, Expect::Absent)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(LbError::DuplicateTargetGroupName { name: config.name })
            }
            Err(e) => return Err(e.into()),
        }
        self.add_pool(&config);
        tracing::info!(target_group = %config.arn, protocol = %config.protocol, port = config.port, "target group created");
        Ok(info(config, Vec::new()))
    }

    /// The target group `arn`, or `None` when there is none.
    pub async fn target_group(&self, arn: &str) -> Result<Option<TargetGroupInfo>, LbError> {
        let Some(group) = self.read_group(arn).await? else {
            return Ok(None);
        };
        let listeners = self.read_listeners().await?;
        Ok(Some(info(group.value, lb_arns(&listeners, arn))))
    }

    pub async fn describe_target_groups(
        &self,
        query: &TargetGroupQuery,
    ) -> Result<Vec<TargetGroupInfo>, LbError> {
        let listeners = self.read_listeners().await?;
        if let Some(lb_arn) = &query.load_balancer_arn {
            self.read_lb(lb_arn)
                .await?
                .ok_or_else(|| LbError::LoadBalancerNotFound {
                    arn: lb_arn.clone(),
                })?;
        }
        let groups = self
            .inner
            .store
            .list_json::<TargetGroupConfig>(TARGET_GROUPS)
            .await?;
        for arn in &query.arns {
            if !groups.iter().any(|g| &g.value.arn == arn) {
                return Err(LbError::TargetGroupNotFound { arn: arn.clone() });
            }
        }
        for name in &query.names {
            if !groups.iter().any(|g| &g.value.name == name) {
                return Err(LbError::TargetGroupNotFound { arn: name.clone() });
            }
        }
        Ok(groups
            .into_iter()
            .map(|g| g.value)
            .filter(|g| query.arns.is_empty() || query.arns.contains(&g.arn))
            .filter(|g| query.names.is_empty() || query.names.contains(&g.name))
            .map(|g| {
                let lbs = lb_arns(&listeners, &g.arn);
                info(g, lbs)
            })
            .filter(|g| match &query.load_balancer_arn {
                Some(lb) => g.load_balancer_arns.contains(lb),
                None => true,
            })
            .collect())
    }

    pub async fn delete_target_group(&self, arn: &str) -> Result<(), LbError> {
        let _writes = self.inner.writes.lock().await;
        let Some(group) = self.read_group(arn).await? else {
            return Ok(());
        };
        if let Some(listener) = self
            .read_listeners()
            .await?
            .into_iter()
            .find(|l| l.target_group_arn == arn)
        {
            return Err(LbError::TargetGroupInUse {
                arn: arn.to_owned(),
                listener_arn: listener.arn,
            });
        }
        self.inner
            .store
            .delete(&group.key, Expect::Revision(group.mod_revision))
            .await?;
        self.runtime().pools.remove(arn);
        tracing::info!(target_group = %arn, "target group deleted");
        Ok(())
    }

    pub async fn target_group_attributes(
        &self,
        arn: &str,
    ) -> Result<TargetGroupAttributes, LbError> {
        Ok(self.existing_group(arn).await?.value.attributes)
    }

    /// Applies ELBv2 attribute pairs; returns every attribute afterwards.
    pub async fn modify_target_group_attributes(
        &self,
        arn: &str,
        pairs: &[(String, String)],
    ) -> Result<TargetGroupAttributes, LbError> {
        let _writes = self.inner.writes.lock().await;
        let mut group = self.existing_group(arn).await?;
        group.value.attributes = group.value.attributes.apply(pairs)?;
        self.inner
            .store
            .put_json(
                &group.key,
                &group.value,
                Expect::Revision(group.mod_revision),
            )
            .await?;
        if let Some(pool) = self.pool(arn) {
            pool.set_settings(settings(&group.value));
        }
        tracing::info!(target_group = %arn, ?pairs, "target group attributes modified");
        Ok(group.value.attributes)
    }

    // --- targets ---------------------------------------------------------------------

    /// Registers targets (already registered ones are left as they are).
    pub async fn register_targets(&self, arn: &str, targets: &[Target]) -> Result<(), LbError> {
        let mut resolved = Vec::with_capacity(targets.len());
        for target in targets {
            resolved.push((target.clone(), target.socket_addr()?));
        }
        let _writes = self.inner.writes.lock().await;
        let mut group = self.existing_group(arn).await?;
        let mut all: BTreeSet<Target> = group.value.targets.iter().cloned().collect();
        all.extend(targets.iter().cloned());
        group.value.targets = all.into_iter().collect();
        self.inner
            .store
            .put_json(
                &group.key,
                &group.value,
                Expect::Revision(group.mod_revision),
            )
            .await?;
        self.existing_pool(arn)?.register(&resolved);
        Ok(())
    }

    /// Deregisters targets: each drains, then disappears. Every target must be
    /// registered.
    pub async fn deregister_targets(&self, arn: &str, targets: &[Target]) -> Result<(), LbError> {
        let _writes = self.inner.writes.lock().await;
        let mut group = self.existing_group(arn).await?;
        let pool = self.existing_pool(arn)?;
        for target in targets {
            let registered = group.value.targets.contains(target);
            let draining = pool.state_of(target) == Some(TargetState::Draining);
            if !registered && !draining {
                return Err(LbError::InvalidTarget {
                    id: target.to_string(),
                    reason: "the target is not registered with this target group: check the id and port with `aws elbv2 describe-target-health`",
                });
            }
        }
        group.value.targets.retain(|t| !targets.contains(t));
        self.inner
            .store
            .put_json(
                &group.key,
                &group.value,
                Expect::Revision(group.mod_revision),
            )
            .await?;
        pool.deregister(targets);
        Ok(())
    }

    /// The health of the given targets (`None`: of every registered one). A target that
    /// is not registered is reported `unused` with reason `Target.NotRegistered`.
    pub async fn describe_target_health(
        &self,
        arn: &str,
        targets: Option<&[Target]>,
    ) -> Result<Vec<TargetHealth>, LbError> {
        self.existing_group(arn).await?;
        let all = self.existing_pool(arn)?.health();
        let Some(wanted) = targets else {
            return Ok(all);
        };
        Ok(wanted
            .iter()
            .map(|target| {
                all.iter()
                    .find(|h| &h.target == target)
                    .cloned()
                    .unwrap_or(TargetHealth {
                        target: target.clone(),
                        state: TargetState::Unused,
                        reason: Some(TargetReason::NotRegistered),
                        description: None,
                    })
            })
            .collect())
    }

    // --- load balancers --------------------------------------------------------------

    pub async fn create_load_balancer(
        &self,
        spec: LoadBalancerSpec,
    ) -> Result<LoadBalancerConfig, LbError> {
        let config = spec.into_config(&self.inner.scope)?;
        let _writes = self.inner.writes.lock().await;
        match self
            .inner
            .store
            .put_json(&lb_key(&config.name), &config, Expect::Absent)
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(LbError::DuplicateLoadBalancerName { name: config.name })
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(load_balancer = %config.arn, lb_type = config.lb_type.as_str(), "load balancer created");
        Ok(config)
    }

    /// Load balancers by ARN or name (both empty: all of them).
    pub async fn describe_load_balancers(
        &self,
        arns: &[String],
        names: &[String],
    ) -> Result<Vec<LoadBalancerConfig>, LbError> {
        let all: Vec<LoadBalancerConfig> = self
            .inner
            .store
            .list_json::<LoadBalancerConfig>(LOAD_BALANCERS)
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect();
        if let Some(wanted) = arns.iter().find(|a| !all.iter().any(|lb| &lb.arn == *a)) {
            return Err(LbError::LoadBalancerNotFound {
                arn: wanted.clone(),
            });
        }
        if let Some(wanted) = names.iter().find(|n| !all.iter().any(|lb| &lb.name == *n)) {
            return Err(LbError::LoadBalancerNotFound {
                arn: wanted.clone(),
            });
        }
        Ok(all
            .into_iter()
            .filter(|lb| arns.is_empty() || arns.contains(&lb.arn))
            .filter(|lb| names.is_empty() || names.contains(&lb.name))
            .collect())
    }

    /// Deletes a load balancer and its listeners.
    pub async fn delete_load_balancer(&self, arn: &str) -> Result<(), LbError> {
        let _writes = self.inner.writes.lock().await;
        let Some(lb) = self.read_lb(arn).await? else {
            return Ok(());
        };
        let listeners: Vec<Versioned<ListenerConfig>> = self
            .inner
            .store
            .list_json::<ListenerConfig>(LISTENERS)
            .await?
            .into_iter()
            .filter(|l| l.value.load_balancer_arn == arn)
            .collect();
        let mut ops = vec![Op::delete(
            lb.key.clone(),
            Expect::Revision(lb.mod_revision),
        )];
        ops.extend(
            listeners
                .iter()
                .map(|l| Op::delete(l.key.clone(), Expect::Revision(l.mod_revision))),
        );
        self.inner.store.txn(ops).await?;
        for listener in &listeners {
            self.runtime().listeners.remove(&listener.value.arn);
        }
        self.refresh_in_use().await?;
        tracing::info!(load_balancer = %arn, listeners = listeners.len(), "load balancer deleted");
        Ok(())
    }

    // --- listeners -------------------------------------------------------------------

    pub async fn create_listener(&self, spec: ListenerSpec) -> Result<ListenerConfig, LbError> {
        if spec.port == 0 {
            return Err(LbError::InvalidPort { what: "listener" });
        }
        let _writes = self.inner.writes.lock().await;
        let lb = self
            .read_lb(&spec.load_balancer_arn)
            .await?
            .ok_or_else(|| LbError::LoadBalancerNotFound {
                arn: spec.load_balancer_arn.clone(),
            })?
            .value;
        let expected = lb.lb_type.listener_protocol();
        if spec.protocol != expected {
            return Err(LbError::ListenerProtocol {
                lb_type: lb.lb_type.as_str(),
                protocol: spec.protocol.as_str(),
                expected: expected.as_str(),
            });
        }
        let group = self.existing_group(&spec.target_group_arn).await?.value;
        if group.protocol != spec.protocol {
            return Err(LbError::IncompatibleProtocols {
                listener: spec.protocol.as_str(),
                target_group: group.protocol.as_str(),
                arn: group.arn,
            });
        }
        let key = listener_key(spec.port);
        if let Some(existing) = self.inner.store.get_json::<ListenerConfig>(&key).await? {
            return Err(taken(existing.value, &lb.arn));
        }
        let bound = self.bind(spec.port).await?;
        let config = ListenerConfig::new(spec, &lb);
        self.inner
            .store
            .put_json(&key, &config, Expect::Absent)
            .await?;
        let runtime = self.serve(&config, bound)?;
        self.runtime().listeners.insert(config.arn.clone(), runtime);
        self.existing_pool(&config.target_group_arn)?
            .set_in_use(true);
        Ok(config)
    }

    /// Listeners of one load balancer, or by ARN.
    pub async fn describe_listeners(
        &self,
        load_balancer_arn: Option<&str>,
        arns: &[String],
    ) -> Result<Vec<ListenerConfig>, LbError> {
        if let Some(lb_arn) = load_balancer_arn {
            self.read_lb(lb_arn)
                .await?
                .ok_or_else(|| LbError::LoadBalancerNotFound {
                    arn: lb_arn.to_owned(),
                })?;
        }
        let all = self.read_listeners().await?;
        if let Some(wanted) = arns.iter().find(|a| !all.iter().any(|l| &l.arn == *a)) {
            return Err(LbError::ListenerNotFound {
                arn: wanted.clone(),
            });
        }
        Ok(all
            .into_iter()
            .filter(|l| arns.is_empty() || arns.contains(&l.arn))
            .filter(|l| load_balancer_arn.is_none_or(|lb| l.load_balancer_arn == lb))
            .collect())
    }

    pub async fn delete_listener(&self, arn: &str) -> Result<(), LbError> {
        let _writes = self.inner.writes.lock().await;
        let listener = self
            .inner
            .store
            .list_json::<ListenerConfig>(LISTENERS)
            .await?
            .into_iter()
            .find(|l| l.value.arn == arn)
            .ok_or_else(|| LbError::ListenerNotFound {
                arn: arn.to_owned(),
            })?;
        self.inner
            .store
            .delete(&listener.key, Expect::Revision(listener.mod_revision))
            .await?;
        self.runtime().listeners.remove(arn);
        self.refresh_in_use().await?;
        tracing::info!(listener = %arn, "listener deleted");
        Ok(())
    }

    // --- helpers ---------------------------------------------------------------------

    async fn read_group(&self, arn: &str) -> Result<Option<Versioned<TargetGroupConfig>>, LbError> {
        let Some(name) = name_in_arn(arn, "targetgroup") else {
            return Ok(None);
        };
        let group = self
            .inner
            .store
            .get_json::<TargetGroupConfig>(&group_key(name))
            .await?;
        Ok(group.filter(|g| g.value.arn == arn))
    }

    async fn existing_group(&self, arn: &str) -> Result<Versioned<TargetGroupConfig>, LbError> {
        self.read_group(arn)
            .await?
            .ok_or_else(|| LbError::TargetGroupNotFound {
                arn: arn.to_owned(),
            })
    }

    fn existing_pool(&self, arn: &str) -> Result<std::sync::Arc<crate::pool::TargetPool>, LbError> {
        self.pool(arn).ok_or_else(|| LbError::TargetGroupNotFound {
            arn: arn.to_owned(),
        })
    }

    async fn read_lb(&self, arn: &str) -> Result<Option<Versioned<LoadBalancerConfig>>, LbError> {
        let Some(name) = name_in_arn(arn, "loadbalancer") else {
            return Ok(None);
        };
        let lb = self
            .inner
            .store
            .get_json::<LoadBalancerConfig>(&lb_key(name))
            .await?;
        Ok(lb.filter(|lb| lb.value.arn == arn))
    }

    async fn read_listeners(&self) -> Result<Vec<ListenerConfig>, LbError> {
        Ok(self
            .inner
            .store
            .list_json::<ListenerConfig>(LISTENERS)
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    /// Marks each pool in use exactly when some listener forwards to it.
    async fn refresh_in_use(&self) -> Result<(), LbError> {
        let used: BTreeSet<String> = self
            .read_listeners()
            .await?
            .into_iter()
            .map(|l| l.target_group_arn)
            .collect();
        let pools: Vec<_> = self
            .runtime()
            .pools
            .iter()
            .map(|(arn, p)| (arn.clone(), p.pool.clone()))
            .collect();
        for (arn, pool) in pools {
            pool.set_in_use(used.contains(&arn));
        }
        Ok(())
    }
}

/// The error for a listener port that is already taken.
fn taken(existing: ListenerConfig, lb_arn: &str) -> LbError {
    if existing.load_balancer_arn == lb_arn {
        LbError::DuplicateListener {
            port: existing.port,
        }
    } else {
        LbError::PortTaken {
            port: existing.port,
            listener_arn: existing.arn,
        }
    }
}

pub(crate) fn settings(group: &TargetGroupConfig) -> PoolSettings {
    PoolSettings {
        health_check: group.health_check.clone(),
        algorithm: group.attributes.algorithm,
        deregistration_delay: group.attributes.deregistration_delay,
    }
}

fn lb_arns(listeners: &[ListenerConfig], group_arn: &str) -> Vec<String> {
    let arns: BTreeSet<String> = listeners
        .iter()
        .filter(|l| l.target_group_arn == group_arn)
        .map(|l| l.load_balancer_arn.clone())
        .collect();
    arns.into_iter().collect()
}

fn info(group: TargetGroupConfig, load_balancer_arns: Vec<String>) -> TargetGroupInfo {
    TargetGroupInfo {
        arn: group.arn,
        name: group.name,
        protocol: group.protocol,
        port: group.port,
        vpc_id: group.vpc_id,
        target_type: group.target_type,
        health_check: group.health_check,
        load_balancer_arns,
    }
}
