//! Skiff's built-in load balancer: the run-time side of the ELBv2 API.
//!
//! A [`Balancer`] owns every target group, load balancer and listener of one server:
//!
//! ```text
//!   store (elb/target-groups/<name>, elb/load-balancers/<name>, elb/listeners/<port>)
//!     │  source of truth: written first by every management call, read back at start
//!     ▼
//!   Balancer ── target group ARN ──> TargetPool (targets, states, leases)  <── health loop
//!     │                                   ▲
//!     └── listener ARN ──> accept loop ───┘ picks a target per request / connection
//! ```
//!
//! Management calls ([`Balancer::create_target_group`] and friends, in `manage.rs`) are
//! serialized by one async mutex, write the store, then apply the change to the run-time
//! state. Listeners all bind the balancer's one address (`--load-balancer-address`), so
//! a listener port is unique across load balancers. Registered targets are persisted;
//! draining is not: a target deregistered just before a restart is simply gone after it.
//! Every target state change bumps [`Balancer::changes`].

mod config;
mod error;
mod health;
mod listener;
mod manage;
mod pool;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use model::arn::Scope;
use store::{Store, StoreJsonExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    Algorithm, HealthCheck, ListenerConfig, ListenerSpec, LoadBalancerConfig, LoadBalancerSpec,
    LoadBalancerType, Matcher, Protocol, Target, TargetGroupAttributes, TargetGroupConfig,
    TargetGroupSpec, ATTR_ALGORITHM, ATTR_DEREGISTRATION_DELAY, DEFAULT_DEREGISTRATION_DELAY,
};
pub use error::LbError;
pub use manage::{TargetGroupInfo, TargetGroupQuery};
pub use pool::{TargetHealth, TargetReason, TargetState};

use pool::TargetPool;

const TARGET_GROUPS: &str = "elb/target-groups/";
const LOAD_BALANCERS: &str = "elb/load-balancers/";
const LISTENERS: &str = "elb/listeners/";

/// The load balancer of one Skiff server. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    scope: Scope,
    address: IpAddr,
    /// Serializes management calls (store write, then run-time change).
    writes: tokio::sync::Mutex<()>,
    runtime: Mutex<Runtime>,
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct Runtime {
    /// By target group ARN.
    pools: HashMap<String, PoolRuntime>,
    /// By listener ARN.
    listeners: HashMap<String, ListenerRuntime>,
}

struct PoolRuntime {
    pool: Arc<TargetPool>,
    _health: Background,
}

struct ListenerRuntime {
    /// Where it listens; `None` when binding failed at start.
    address: Option<SocketAddr>,
    _serve: Option<Background>,
}

impl Balancer {
    /// Rebuilds every target group, health check and listener from the store and starts
    /// serving. A listener whose port cannot be bound is logged and left down; the rest
    /// still start.
    pub async fn start(
        store: Arc<dyn Store>,
        scope: Scope,
        address: IpAddr,
    ) -> Result<Balancer, LbError> {
        let (changes, _) = watch::channel(0);
        let balancer = Balancer {
            inner: Arc::new(Inner {
                store,
                scope,
                address,
                writes: tokio::sync::Mutex::new(()),
                runtime: Mutex::new(Runtime::default()),
                changes,
            }),
        };
        let store = &balancer.inner.store;
        let groups = store.list_json::<TargetGroupConfig>(TARGET_GROUPS).await?;
        let listeners = store.list_json::<ListenerConfig>(LISTENERS).await?;
        for group in &groups {
            let pool = balancer.add_pool(&group.value);
            let targets: Vec<_> = group
                .value
                .targets
                .iter()
                .filter_map(|t| t.socket_addr().ok().map(|addr| (t.clone(), addr)))
                .collect();
            pool.register(&targets);
        }
        for listener in listeners {
            let listener = listener.value;
            let runtime = match balancer.bind(listener.port).await {
                Ok(bound) => balancer.serve(&listener, bound)?,
                Err(error) => {
                    tracing::error!(listener = %listener.arn, port = listener.port, error = %error,
                        "listener cannot be restored: its port is taken; delete and re-create it on a free port");
                    ListenerRuntime {
                        address: None,
                        _serve: None,
                    }
                }
            };
            if let Some(pool) = balancer.pool(&listener.target_group_arn) {
                pool.set_in_use(true);
            }
            balancer.runtime().listeners.insert(listener.arn, runtime);
        }
        tracing::info!(%address, target_groups = groups.len(), "load balancer started");
        Ok(balancer)
    }

    /// The address every listener binds.
    pub fn address(&self) -> IpAddr {
        self.inner.address
    }

    /// Where a listener accepts connections; `None` for an unknown listener or one whose
    /// port could not be bound.
    pub fn listener_address(&self, listener_arn: &str) -> Option<SocketAddr> {
        self.runtime()
            .listeners
            .get(listener_arn)
            .and_then(|l| l.address)
    }

    /// The current state of one registered target; `None` when the target group does
    /// not exist or the target is not registered (or has finished draining).
    pub fn target_state(&self, arn: &str, target: &Target) -> Option<TargetState> {
        self.pool(arn)?.state_of(target)
    }

    /// A receiver whose value is bumped on every target state change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Stops every listener (and its connections), health check and drain timer.
    pub async fn shutdown(&self) {
        let _writes = self.inner.writes.lock().await;
        let mut runtime = self.runtime();
        let listeners = runtime.listeners.len();
        runtime.listeners.clear();
        runtime.pools.clear();
        tracing::info!(listeners, "load balancer stopped");
    }

    fn runtime(&self) -> MutexGuard<'_, Runtime> {
        self.inner.runtime.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pool(&self, arn: &str) -> Option<Arc<TargetPool>> {
        self.runtime().pools.get(arn).map(|p| p.pool.clone())
    }

    fn add_pool(&self, group: &TargetGroupConfig) -> Arc<TargetPool> {
        let pool = TargetPool::new(
            group.arn.clone(),
            manage::settings(group),
            self.inner.changes.clone(),
        );
        let health = health::spawn(Arc::downgrade(&pool));
        self.runtime().pools.insert(
            group.arn.clone(),
            PoolRuntime {
                pool: pool.clone(),
                _health: health,
            },
        );
        pool
    }

    async fn bind(&self, port: u16) -> Result<tokio::net::TcpListener, LbError> {
        let address = SocketAddr::new(self.inner.address, port);
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| LbError::Bind { address, source })
    }

    fn serve(
        &self,
        listener: &ListenerConfig,
        bound: tokio::net::TcpListener,
    ) -> Result<ListenerRuntime, LbError> {
        let pool =
            self.pool(&listener.target_group_arn)
                .ok_or_else(|| LbError::TargetGroupNotFound {
                    arn: listener.target_group_arn.clone(),
                })?;
        let address = bound.local_addr().ok();
        tracing::info!(listener = %listener.arn, address = ?address, protocol = %listener.protocol, "listener serving");
        Ok(ListenerRuntime {
            address,
            _serve: Some(listener::serve(bound, listener.protocol, pool)),
        })
    }
}

/// A spawned task that is aborted when this handle is dropped.
pub(crate) struct Background(Option<JoinHandle<()>>);

impl Background {
    pub(crate) fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Background(Some(tokio::spawn(future)))
    }

    /// Lets the task run to its end on its own (used by a task dropping its own handle).
    pub(crate) fn detach(mut self) {
        self.0.take();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests;
