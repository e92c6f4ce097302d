//! The control plane's state store: revisioned keys, compare-and-swap, watch.
//!
//! The model is etcd's, so that the embedded SQLite backend and the (later) etcd backend
//! sit behind one [`Store`] trait with identical semantics:
//!
//! - The store holds a **global revision**, a counter that starts at 0 and grows by exactly
//!   one for every transaction that changes something. Reads never change it.
//! - Every key carries the **`mod_revision`** of the transaction that last wrote it.
//!   Callers do optimistic concurrency by reading a key, then writing it back with
//!   [`Expect::Revision`] set to the revision they read: if anyone wrote in between, the
//!   write fails with [`StoreError::Conflict`] and the caller re-reads and retries.
//! - A **transaction** ([`Store::txn`]) is a list of puts and deletes, each with a
//!   precondition. Either every precondition holds and every operation is applied under
//!   one new revision, or nothing is applied.
//! - **Watches** ([`Store::watch`]) deliver, in revision order, every change made after the
//!   call to keys under a prefix. All events of one transaction carry the same revision.
//!   The usual "list then watch" pattern is: call `watch` first, then `list`, then apply
//!   each event whose `mod_revision` is greater than what the listing showed for its key.
//!
//! Keys are UTF-8 strings organised by `/`-separated prefixes (`tasks/<cluster>/<id>`);
//! values are opaque bytes, JSON by convention (see [`StoreJsonExt`]).

mod json;
mod sqlite;

#[cfg(test)]
mod conformance;

use std::fmt;

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedReceiver;

pub use json::{StoreJsonExt, Versioned};
pub use sqlite::SqliteStore;

/// One key with its value and the revision of the transaction that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

/// A precondition on the current state of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No precondition.
    Any,
    /// The key must not exist (create-only).
    Absent,
    /// The key must exist and have been last written at exactly this revision.
    Revision(u64),
}

impl Expect {
    /// Whether a key whose current `mod_revision` is `current` (`None`: absent) satisfies
    /// this precondition.
    pub fn holds(self, current: Option<u64>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => current.is_none(),
            Expect::Revision(expected) => current == Some(expected),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("any state"),
            Expect::Absent => f.write_str("key absent"),
            Expect::Revision(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        expect: Expect,
    },
    /// Deleting an absent key with [`Expect::Any`] or [`Expect::Absent`] is a no-op.
    Delete { key: String, expect: Expect },
}

impl Op {
    pub fn put(key: impl Into<String>, value: Vec<u8>, expect: Expect) -> Self {
        Op::Put {
            key: key.into(),
            value,
            expect,
        }
    }

    pub fn delete(key: impl Into<String>, expect: Expect) -> Self {
        Op::Delete {
            key: key.into(),
            expect,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    pub fn expect(&self) -> Expect {
        match self {
            Op::Put { expect, .. } | Op::Delete { expect, .. } => *expect,
        }
    }
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: u64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the transaction that made this change.
    pub fn mod_revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// The receiving end of a watch. Dropping it cancels the watch.
pub type WatchReceiver = UnboundedReceiver<WatchEvent>;

/// A revisioned key-value store with compare-and-swap transactions and prefix watches.
///
/// Used as `Arc<dyn Store>`; the typed JSON helpers come from [`StoreJsonExt`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key that starts with `prefix`, sorted by key (byte order).
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies `ops` atomically and returns the store's revision afterwards.
    ///
    /// If any precondition fails, nothing is applied and the error is
    /// [`StoreError::Conflict`] naming the first failing key. A key may appear at most once.
    /// A transaction that changes nothing (only no-op deletes) does not create a revision.
    async fn txn(&self, ops: Vec<Op>) -> Result<u64, StoreError>;

    /// The store's current global revision.
    async fn revision(&self) -> Result<u64, StoreError>;

    /// Starts a watch on every key under `prefix` (`""`: everything). Events cover the
    /// changes committed after this call returns, in revision order. The channel is
    /// unbounded: drain it promptly, or drop it to cancel the watch.
    fn watch(&self, prefix: &str) -> WatchReceiver;

    /// Writes one key; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64, StoreError> {
        self.txn(vec![Op::put(key, value, expect)]).await
    }

    /// Deletes one key; returns the store's revision afterwards.
    async fn delete(&self, key: &str, expect: Expect) -> Result<u64, StoreError> {
        self.txn(vec![Op::delete(key, expect)]).await
    }
}

/// Errors of every store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "precondition failed for key {key}: expected {expected}, found {}; \
         another writer changed it: re-read the key and retry",
        match .found { Some(revision) => format!("revision {revision}"), None => "no key".to_owned() }
    )]
    Conflict {
        key: String,
        expected: Expect,
        found: Option<u64>,
    },

    #[error("a transaction names an empty key: every key must be non-empty")]
    EmptyKey,

    #[error("key {key} appears more than once in one transaction: merge those operations")]
    DuplicateKey { key: String },

    #[error("cannot encode the value for key {key} as JSON")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("the value at key {key} is not valid JSON for {type_name}: was it written by an incompatible skiff version?")]
    Decode {
        key: String,
        type_name: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("cannot open the SQLite state store at {path}: check that the directory exists and is writable")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },

    #[error("the SQLite state store at {path} is locked by another process: is another `skiff server` using this state directory?")]
    Locked { path: String },

    #[error("the SQLite state store at {path} has schema version {found}, but this skiff supports up to {supported}: upgrade skiff")]
    UnsupportedSchema {
        path: String,
        found: i64,
        supported: i64,
    },

    #[error("the SQLite state store holds a key that is not UTF-8 ({lossy:?}): the database file was modified outside skiff")]
    CorruptKey { lossy: String },

    #[error("SQLite state store operation failed while {operation}")]
    Sqlite {
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error("the state store worker thread failed; this is a bug in skiff")]
    Worker(#[source] tokio::task::JoinError),
}

/// Checks the shape rules every backend enforces on a transaction.
fn validate_ops(ops: &[Op]) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::with_capacity(ops.len());
    for op in ops {
        let key = op.key();
        if key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if !seen.insert(key) {
            return Err(StoreError::DuplicateKey {
                key: key.to_owned(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_holds() {
        assert!(Expect::Any.holds(None));
        assert!(Expect::Any.holds(Some(3)));
        assert!(Expect::Absent.holds(None));
        assert!(!Expect::Absent.holds(Some(3)));
        assert!(Expect::Revision(3).holds(Some(3)));
        assert!(!Expect::Revision(3).holds(Some(4)));
        assert!(!Expect::Revision(3).holds(None));
    }

    #[test]
    fn validate_rejects_empty_and_duplicate_keys() {
        let empty = validate_ops(&[Op::delete("", Expect::Any)]);
        assert!(matches!(empty, Err(StoreError::EmptyKey)));
        let dup = validate_ops(&[
            Op::put("a", vec![], Expect::Any),
            Op::delete("a", Expect::Any),
        ]);
        assert!(matches!(dup, Err(StoreError::DuplicateKey { key }) if key == "a"));
        assert!(validate_ops(&[
            Op::put("a", vec![], Expect::Any),
            Op::put("b", vec![], Expect::Any)
        ])
        .is_ok());
    }

    #[test]
    fn conflict_message_says_what_to_do() {
        let err = StoreError::Conflict {
            key: "tasks/a".into(),
            expected: Expect::Revision(4),
            found: Some(7),
        };
        assert_eq!(
            err.to_string(),
            "precondition failed for key tasks/a: expected revision 4, found revision 7; \
             another writer changed it: re-read the key and retry"
        );
    }
}
