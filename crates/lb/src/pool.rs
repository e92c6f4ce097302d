//! One target group at run time: its targets, their health states, the choice of a
//! target for each request, and draining.
//!
//! ```text
//!   register ──> initial ──(healthy_threshold passes)──> healthy
//!   (unused while      │                                   │  ▲
//!    no listener       └─(unhealthy_threshold failures)─┐  │  │ healthy_threshold passes
//!    forwards here)                                     ▼  ▼  │
//!                                                     unhealthy
//!   deregister (any state) ──> draining ──(no in-flight work, or the deregistration
//!                                          delay elapsed)──> removed
//! ```
//!
//! Traffic goes only to healthy targets; when none is healthy the group fails open to
//! every registered target that is not draining, as ELBv2 does. A [`Lease`] counts one
//! in-flight request (HTTP) or connection (TCP) against its target: least outstanding
//! requests reads those counts, and draining waits for them to reach zero.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::config::{Algorithm, HealthCheck, Target};
use crate::Background;

/// A target's state, as ELBv2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Initial,
    Healthy,
    Unhealthy,
    Draining,
    Unused,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::Draining => "draining",
            TargetState::Unused => "unused",
        }
    }
}

/// Why a target is in a state other than healthy, as ELBv2's reason codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetReason {
    RegistrationInProgress,
    InitialHealthChecking,
    ResponseCodeMismatch,
    Timeout,
    FailedHealthChecks,
    NotRegistered,
    NotInUse,
    DeregistrationInProgress,
}

impl TargetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetReason::RegistrationInProgress => "Elb.RegistrationInProgress",
            TargetReason::InitialHealthChecking => "Elb.InitialHealthChecking",
            TargetReason::ResponseCodeMismatch => "Target.ResponseCodeMismatch",
            TargetReason::Timeout => "Target.Timeout",
            TargetReason::FailedHealthChecks => "Target.FailedHealthChecks",
            TargetReason::NotRegistered => "Target.NotRegistered",
            TargetReason::NotInUse => "Target.NotInUse",
            TargetReason::DeregistrationInProgress => "Target.DeregistrationInProgress",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            TargetReason::RegistrationInProgress => "Target registration is in progress",
            TargetReason::InitialHealthChecking => "Initial health checks in progress",
            TargetReason::ResponseCodeMismatch => "Health checks failed with these codes",
            TargetReason::Timeout => "Request timed out",
            TargetReason::FailedHealthChecks => "Health checks failed",
            TargetReason::NotRegistered => "Target is not registered to the target group",
            TargetReason::NotInUse => {
                "Target group is not configured to receive traffic from the load balancer"
            }
            TargetReason::DeregistrationInProgress => "Target deregistration is in progress",
        }
    }
}

/// A target's health as DescribeTargetHealth reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealth {
    pub target: Target,
    pub state: TargetState,
    pub reason: Option<TargetReason>,
    /// A failed check's detail, e.g. the status code that did not match.
    pub description: Option<String>,
}

/// The result of one health check of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckOutcome {
    Passed,
    Failed {
        reason: TargetReason,
        detail: String,
    },
}

/// In-flight work of one target: requests (HTTP) or connections (TCP).
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    fn load(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no work is in flight.
    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.load() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One unit of in-flight work on a target; dropping it ends the work.
pub(crate) struct Lease {
    addr: SocketAddr,
    in_flight: Arc<InFlight>,
}

impl Lease {
    fn new(addr: SocketAddr, in_flight: Arc<InFlight>) -> Self {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        Lease { addr, in_flight }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.in_flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.in_flight.idle.notify_waiters();
        }
    }
}

struct Entry {
    addr: SocketAddr,
    state: TargetState,
    reason: Option<TargetReason>,
    description: Option<String>,
    passes: u32,
    failures: u32,
    in_flight: Arc<InFlight>,
    /// The drain timer while draining; dropping it cancels the drain.
    drain: Option<Background>,
}

/// The settings a pool runs with, changed by ModifyTargetGroupAttributes.
#[derive(Debug, Clone)]
pub(crate) struct PoolSettings {
    pub health_check: HealthCheck,
    pub algorithm: Algorithm,
    pub deregistration_delay: Duration,
}

struct PoolState {
    settings: PoolSettings,
    /// Whether a listener forwards to this group; targets are `unused` otherwise.
    in_use: bool,
    entries: BTreeMap<Target, Entry>,
    cursor: usize,
}

/// A target group's run-time state.
pub(crate) struct TargetPool {
    arn: String,
    state: Mutex<PoolState>,
    changes: watch::Sender<u64>,
    /// Weak self-reference handed to drain timers, so they never keep a deleted pool.
    this: Weak<TargetPool>,
}

impl TargetPool {
    pub(crate) fn new(
        arn: String,
        settings: PoolSettings,
        changes: watch::Sender<u64>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| TargetPool {
            arn,
            state: Mutex::new(PoolState {
                settings,
                in_use: false,
                entries: BTreeMap::new(),
                cursor: 0,
            }),
            changes,
            this: this.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn settings(&self) -> PoolSettings {
        self.lock().settings.clone()
    }

    pub(crate) fn set_settings(&self, settings: PoolSettings) {
        self.lock().settings = settings;
    }

    /// Marks the group as forwarded to (or not) by some listener. Targets restart their
    /// health checks from `initial` when the group comes into use.
    pub(crate) fn set_in_use(&self, in_use: bool) {
        let mut state = self.lock();
        if state.in_use == in_use {
            return;
        }
        state.in_use = in_use;
        for entry in state.entries.values_mut() {
            if entry.state != TargetState::Draining {
                reset(entry, in_use);
            }
        }
        drop(state);
        self.changed();
    }

    /// Adds targets (validated by the caller); re-registering a draining target cancels
    /// its drain. Already registered targets are left as they are.
    pub(crate) fn register(&self, targets: &[(Target, SocketAddr)]) {
        let mut state = self.lock();
        let in_use = state.in_use;
        let mut changed = false;
        for (target, addr) in targets {
            match state.entries.get_mut(target) {
                Some(entry) if entry.state == TargetState::Draining => {
                    entry.drain = None;
                    reset(entry, in_use);
                    changed = true;
                }
                Some(_) => {}
                None => {
                    let mut entry = Entry {
                        addr: *addr,
                        state: TargetState::Unused,
                        reason: None,
                        description: None,
                        passes: 0,
                        failures: 0,
                        in_flight: Arc::default(),
                        drain: None,
                    };
                    reset(&mut entry, in_use);
                    state.entries.insert(target.clone(), entry);
                    changed = true;
                }
            }
        }
        drop(state);
        if changed {
            tracing::info!(target_group = %self.arn, count = targets.len(), "targets registered");
            self.changed();
        }
    }

    /// Starts draining targets: they get no new work; each is removed once its in-flight
    /// work is done or the deregistration delay has passed, whichever comes first.
    pub(crate) fn deregister(&self, targets: &[Target]) {
        let mut state = self.lock();
        let delay = state.settings.deregistration_delay;
        let mut changed = false;
        for target in targets {
            let Some(entry) = state.entries.get_mut(target) else {
                continue;
            };
            if entry.state == TargetState::Draining {
                continue;
            }
            entry.state = TargetState::Draining;
            entry.reason = Some(TargetReason::DeregistrationInProgress);
            entry.description = None;
            let in_flight = entry.in_flight.clone();
            let pool = self.this.clone();
            let drained = target.clone();
            entry.drain = Some(Background::spawn(async move {
                tokio::select! {
                    () = in_flight.wait_idle() => {}
                    () = tokio::time::sleep(delay) => {}
                }
                if let Some(pool) = pool.upgrade() {
                    pool.remove_drained(&drained);
                }
            }));
            tracing::info!(target_group = %self.arn, target = %target, delay_s = delay.as_secs(), "target draining");
            changed = true;
        }
        drop(state);
        if changed {
            self.changed();
        }
    }

    fn remove_drained(&self, target: &Target) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get(target) {
            if entry.state == TargetState::Draining {
                let left = entry.in_flight.load();
                // The timer task removing itself: detach its handle instead of aborting.
                if let Some(mut removed) = state.entries.remove(target) {
                    if let Some(drain) = removed.drain.take() {
                        drain.detach();
                    }
                }
                drop(state);
                tracing::info!(target_group = %self.arn, target = %target, in_flight = left, "target drained and removed");
                self.changed();
            }
        }
    }

    /// The current state of one target; `None` when it is not registered (any more).
    pub(crate) fn state_of(&self, target: &Target) -> Option<TargetState> {
        self.lock().entries.get(target).map(|e| e.state)
    }

    /// Every registered target's health (draining ones included), sorted.
    pub(crate) fn health(&self) -> Vec<TargetHealth> {
        self.lock()
            .entries
            .iter()
            .map(|(target, entry)| TargetHealth {
                target: target.clone(),
                state: entry.state,
                reason: entry.reason,
                description: entry.description.clone(),
            })
            .collect()
    }

    /// What the health checker should check now: nothing while the group is unused.
    pub(crate) fn to_check(&self) -> Option<(HealthCheck, Vec<(Target, SocketAddr)>)> {
        let state = self.lock();
        if !state.in_use {
            return None;
        }
        let targets = state
            .entries
            .iter()
            .filter(|(_, e)| e.state != TargetState::Draining)
            .map(|(t, e)| (t.clone(), e.addr))
            .collect();
        Some((state.settings.health_check.clone(), targets))
    }

    /// Applies health check results; state changes route traffic at once.
    pub(crate) fn record(&self, results: Vec<(Target, CheckOutcome)>) {
        let mut state = self.lock();
        if !state.in_use {
            return;
        }
        let (healthy_after, unhealthy_after) = (
            state.settings.health_check.healthy_threshold,
            state.settings.health_check.unhealthy_threshold,
        );
        let mut changed = false;
        for (target, outcome) in results {
            let Some(entry) = state.entries.get_mut(&target) else {
                continue;
            };
            if matches!(entry.state, TargetState::Draining | TargetState::Unused) {
                continue;
            }
            let before = entry.state;
            match outcome {
                CheckOutcome::Passed => {
                    entry.passes += 1;
                    entry.failures = 0;
                    if entry.state != TargetState::Healthy && entry.passes >= healthy_after {
                        entry.state = TargetState::Healthy;
                        entry.reason = None;
                        entry.description = None;
                    } else if entry.state == TargetState::Initial {
                        entry.reason = Some(TargetReason::InitialHealthChecking);
                    }
                }
                CheckOutcome::Failed { reason, detail } => {
                    entry.failures += 1;
                    entry.passes = 0;
                    if entry.state != TargetState::Unhealthy && entry.failures >= unhealthy_after {
                        entry.state = TargetState::Unhealthy;
                    }
                    if entry.state == TargetState::Unhealthy {
                        entry.reason = Some(reason);
                        entry.description = Some(detail);
                    } else if entry.state == TargetState::Initial {
                        entry.reason = Some(TargetReason::InitialHealthChecking);
                    }
                }
            }
            if entry.state != before {
                tracing::info!(
                    target_group = %self.arn, target = %target,
                    from = before.as_str(), to = entry.state.as_str(),
                    reason = entry.reason.map(TargetReason::as_str),
                    "target health changed"
                );
                changed = true;
            }
        }
        drop(state);
        if changed {
            self.changed();
        }
    }

    /// Picks a target for one request or connection, or `None` when no target can take
    /// it (none registered, or all draining).
    pub(crate) fn pick(&self) -> Option<Lease> {
        let mut state = self.lock();
        let healthy: Vec<&Entry> = state
            .entries
            .values()
            .filter(|e| e.state == TargetState::Healthy)
            .collect();
        let candidates = if healthy.is_empty() {
            // Fail open: every target still registered.
            state
                .entries
                .values()
                .filter(|e| e.state != TargetState::Draining)
                .collect()
        } else {
            healthy
        };
        if candidates.is_empty() {
            return None;
        }
        let start = state.cursor % candidates.len();
        let chosen = match state.settings.algorithm {
            Algorithm::RoundRobin => candidates[start],
            Algorithm::LeastOutstandingRequests => (0..candidates.len())
                .map(|i| candidates[(start + i) % candidates.len()])
                .min_by_key(|e| e.in_flight.load())
                .unwrap_or(candidates[start]),
        };
        let lease = Lease::new(chosen.addr, chosen.in_flight.clone());
        state.cursor = state.cursor.wrapping_add(1);
        Some(lease)
    }
}

/// Puts a (non-draining) target back to the start of its health checks.
fn reset(entry: &mut Entry, in_use: bool) {
    entry.passes = 0;
    entry.failures = 0;
    entry.description = None;
    if in_use {
        entry.state = TargetState::Initial;
        entry.reason = Some(TargetReason::RegistrationInProgress);
    } else {
        entry.state = TargetState::Unused;
        entry.reason = Some(TargetReason::NotInUse);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn pool(algorithm: Algorithm, delay: Duration) -> Arc<TargetPool> {
        let (changes, _) = watch::channel(0);
        let mut health_check = HealthCheck::defaults(Protocol::Http);
        health_check.healthy_threshold = 2;
        health_check.unhealthy_threshold = 2;
        TargetPool::new(
            "tg".into(),
            PoolSettings {
                health_check,
                algorithm,
                deregistration_delay: delay,
            },
            changes,
        )
    }

    fn target(n: u8) -> (Target, SocketAddr) {
        let t = Target {
            id: format!("10.0.0.{n}"),
            port: 80,
        };
        let addr = t.socket_addr().unwrap();
        (t, addr)
    }

    fn fail() -> CheckOutcome {
        CheckOutcome::Failed {
            reason: TargetReason::Timeout,
            detail: "timed out".into(),
        }
    }

    #[test]
    fn thresholds_drive_the_state_machine() {
        let p = pool(Algorithm::RoundRobin, Duration::from_secs(1));
        let (t, addr) = target(1);
        p.register(&[(t.clone(), addr)]);
        assert_eq!(p.state_of(&t), Some(TargetState::Unused));
        p.set_in_use(true);
        assert_eq!(p.state_of(&t), Some(TargetState::Initial));
        p.record(vec![(t.clone(), CheckOutcome::Passed)]);
        assert_eq!(p.state_of(&t), Some(TargetState::Initial));
        p.record(vec![(t.clone(), CheckOutcome::Passed)]);
        assert_eq!(p.state_of(&t), Some(TargetState::Healthy));
        p.record(vec![(t.clone(), fail())]);
        assert_eq!(p.state_of(&t), Some(TargetState::Healthy));
        p.record(vec![(t.clone(), fail())]);
        assert_eq!(p.state_of(&t), Some(TargetState::Unhealthy));
        assert_eq!(p.health()[0].reason, Some(TargetReason::Timeout));
        p.set_in_use(false);
        assert_eq!(p.state_of(&t), Some(TargetState::Unused));
    }

    #[test]
    fn picks_healthy_only_and_fails_open() {
        let p = pool(Algorithm::RoundRobin, Duration::from_secs(1));
        let (a, a_addr) = target(1);
        let (b, b_addr) = target(2);
        p.register(&[(a.clone(), a_addr), (b.clone(), b_addr)]);
        p.set_in_use(true);
        // Nothing healthy yet: both get traffic.
        let picked: Vec<_> = (0..4).map(|_| p.pick().unwrap().addr()).collect();
        assert!(picked.contains(&a_addr) && picked.contains(&b_addr));
        p.record(vec![(a.clone(), CheckOutcome::Passed)]);
        p.record(vec![(a.clone(), CheckOutcome::Passed)]);
        assert!((0..4).all(|_| p.pick().unwrap().addr() == a_addr));
    }

    #[test]
    fn least_outstanding_prefers_the_idle_target() {
        let p = pool(Algorithm::LeastOutstandingRequests, Duration::from_secs(1));
        let (a, a_addr) = target(1);
        let (b, b_addr) = target(2);
        p.register(&[(a, a_addr), (b, b_addr)]);
        let busy = p.pick().unwrap();
        for _ in 0..5 {
            let next = p.pick().unwrap();
            assert_ne!(next.addr(), busy.addr());
        }
    }

    #[tokio::test]
    async fn draining_waits_for_in_flight_work() {
        let p = pool(Algorithm::RoundRobin, Duration::from_secs(3600));
        let (a, a_addr) = target(1);
        p.register(&[(a.clone(), a_addr)]);
        let lease = p.pick().unwrap();
        p.deregister(std::slice::from_ref(&a));
        assert_eq!(p.state_of(&a), Some(TargetState::Draining));
        assert!(p.pick().is_none(), "a draining target takes no new work");
        let mut changes = p.changes.subscribe();
        drop(lease);
        while p.state_of(&a).is_some() {
            changes.changed().await.unwrap();
        }
    }

    #[tokio::test]
    async fn reregistering_cancels_a_drain() {
        let p = pool(Algorithm::RoundRobin, Duration::from_secs(3600));
        let (a, a_addr) = target(1);
        p.register(&[(a.clone(), a_addr)]);
        let _lease = p.pick().unwrap();
        p.deregister(std::slice::from_ref(&a));
        p.register(&[(a.clone(), a_addr)]);
        assert_eq!(p.state_of(&a), Some(TargetState::Unused));
    }
}
