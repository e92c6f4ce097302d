//! Coalescing of concurrent work on the same key (a blob being downloaded).
//!
//! ```text
//!  turn(key) ──key free──> Lead(guard)   do the work; dropping the guard frees the key
//!            └─key taken─> Wait(signal)  await signal.done(), then check the result
//!                                        and call turn(key) again if the work is not
//!                                        there (the leader failed or was cancelled)
//! ```
//!
//! The map holds, per key, the receiving end of a `watch` channel whose sender lives
//! in the leader's guard. Nothing is ever sent: the guard's drop closes the channel,
//! which wakes every waiter, whether the leader finished, failed, panicked or was
//! cancelled. Waiters do not share the leader's result (errors are not `Clone`): the
//! work leaves its result in the store, and a waiter that finds none retries as the
//! next leader, so it reports its own, accurate error.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::watch;

/// Keys with work in progress.
#[derive(Debug)]
pub(crate) struct InFlight<K> {
    running: Mutex<HashMap<K, watch::Receiver<()>>>,
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
        }
    }
}

/// Whether the caller does the work or waits for someone else's.
pub(crate) enum Turn<'a, K: Eq + Hash + Clone> {
    /// Do the work; the key stays taken until the guard is dropped.
    Lead(LeadGuard<'a, K>),
    /// Someone else is doing it.
    Wait(Signal),
}

/// Held by the one doing the work for a key.
pub(crate) struct LeadGuard<'a, K: Eq + Hash + Clone> {
    owner: &'a InFlight<K>,
    key: K,
    _done: watch::Sender<()>,
}

/// Fires when the leader's guard is dropped.
pub(crate) struct Signal(watch::Receiver<()>);

impl Signal {
    /// Waits until the work being waited for has ended, however it ended.
    pub(crate) async fn done(mut self) {
        // `changed` fails only once the sender is gone, which is the signal.
        while self.0.changed().await.is_ok() {}
    }
}

impl<K: Eq + Hash + Clone> InFlight<K> {
    /// Takes the key, or returns a signal for the current holder's end.
    pub(crate) fn turn(&self, key: &K) -> Turn<'_, K> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(receiver) = running.get(key) {
            return Turn::Wait(Signal(receiver.clone()));
        }
        let (sender, receiver) = watch::channel(());
        running.insert(key.clone(), receiver);
        Turn::Lead(LeadGuard {
            owner: self,
            key: key.clone(),
            _done: sender,
        })
    }
}

impl<K: Eq + Hash + Clone> Drop for LeadGuard<'_, K> {
    fn drop(&mut self) {
        self.owner
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.key);
        // `_done` is dropped after this, waking the waiters with the key already free.
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_run_the_work_once() {
        let inflight = Arc::new(InFlight::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Mutex::new(false));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (inflight, runs, done) = (inflight.clone(), runs.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    if *done.lock().unwrap() {
                        return;
                    }
                    match inflight.turn(&7) {
                        Turn::Lead(_guard) => {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            *done.lock().unwrap() = true;
                            return;
                        }
                        Turn::Wait(signal) => signal.done().await,
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(inflight.running.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let inflight = Arc::new(InFlight::<u32>::default());
        let Turn::Lead(guard) = inflight.turn(&1) else {
            panic!("the key was free");
        };
        let Turn::Wait(signal) = inflight.turn(&1) else {
            panic!("the key was taken");
        };
        let waiter = tokio::spawn(signal.done());
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke up")
            .unwrap();
        assert!(matches!(inflight.turn(&1), Turn::Lead(_)));
        assert!(matches!(inflight.turn(&2), Turn::Lead(_)));
    }
}
