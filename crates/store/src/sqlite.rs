//! The embedded SQLite backend: one database file in the state directory.
//!
//! Layout: a `kv` table (`key BLOB PRIMARY KEY, value BLOB, mod_revision INTEGER`) and a
//! `meta` table holding `schema_version` and the global `revision`. Keys are stored as
//! BLOBs so SQLite compares them bytewise, which makes a prefix read the index range
//! `[prefix, prefix_end(prefix))` exactly as in etcd.
//!
//! Durability: WAL journal with `synchronous=NORMAL`. A commit appends to the WAL before
//! returning, so a killed process (kill -9) loses nothing committed; only a power loss can
//! drop the last commits, which is the usual trade-off of control planes on SQLite.
//!
//! Concurrency: one connection behind a mutex. Every operation runs on tokio's blocking
//! pool (`spawn_blocking`) so SQLite never stalls the async workers for more than a lock
//! hand-off. The connection uses `locking_mode=EXCLUSIVE` and takes the write lock when
//! opening, so a second server pointed at the same state directory fails fast with
//! [`StoreError::Locked`] instead of forking the revision counter.
//!
//! Watches: watchers live next to the connection under the same mutex. A transaction
//! publishes its events after COMMIT while still holding the lock, and `watch` registers
//! under that lock too, so every watcher sees exactly the commits after its registration,
//! in revision order.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::{validate_ops, KeyValue, Op, Store, StoreError, WatchEvent, WatchReceiver};

/// Highest schema version this code reads and writes.
const SCHEMA_VERSION: i64 = 1;

/// How long an operation waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS kv (
        key          BLOB PRIMARY KEY,
        value        BLOB NOT NULL,
        mod_revision INTEGER NOT NULL
    ) WITHOUT ROWID;
";

/// A [`Store`] in a SQLite database file (or in memory, for tests).
pub struct SqliteStore {
    inner: Arc<Mutex<Inner>>,
    location: Arc<str>,
}

struct Inner {
    conn: Connection,
    revision: u64,
    watchers: Vec<Watcher>,
}

struct Watcher {
    prefix: String,
    sender: UnboundedSender<WatchEvent>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// Blocks for at most a few seconds (the busy timeout) when another process holds
    /// the database; call it at startup, before serving requests.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let open_error = |source| StoreError::Open {
            path: location.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // EXCLUSIVE before the first WAL access: the WAL index then lives in process memory
        // (no -shm file) and the lock taken below is kept for the connection's lifetime.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(open_error)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|source| locked_or(&location, source, open_error))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %location, journal_mode = %mode, "SQLite refused WAL mode; commits will be slower");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        Self::init(conn, location)
    }

    /// A private in-memory database, for tests and throwaway servers.
    pub fn in_memory() -> Result<Self, StoreError> {
        let location = ":memory:".to_owned();
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: location.clone(),
            source,
        })?;
        Self::init(conn, location)
    }

    /// Creates the schema if needed and loads the revision, holding the write lock.
    fn init(mut conn: Connection, location: String) -> Result<Self, StoreError> {
        let revision = {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Exclusive)
                .map_err(|source| {
                    locked_or(&location, source, |source| StoreError::Open {
                        path: location.clone(),
                        source,
                    })
                })?;
            tx.execute_batch(SCHEMA)
                .map_err(sql_error("creating the schema"))?;
            let found: Option<i64> = tx
                .query_row(
                    "SELECT value FROM meta WHERE name = 'schema_version'",
                    [],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sql_error("reading the schema version"))?;
            match found {
                Some(version) if version > SCHEMA_VERSION => {
                    return Err(StoreError::UnsupportedSchema {
                        path: location,
                        found: version,
                        supported: SCHEMA_VERSION,
                    })
                }
                Some(_) => {}
                None => {
                    tx.execute(
                        "INSERT INTO meta (name, value) VALUES ('schema_version', ?1), ('revision', 0)",
                        params![SCHEMA_VERSION],
                    )
                    .map_err(sql_error("initialising the schema"))?;
                }
            }
            let revision: u64 = tx
                .query_row(
                    "SELECT value FROM meta WHERE name = 'revision'",
                    [],
                    |row| row.get(0),
                )
                .map_err(sql_error("reading the revision"))?;
            tx.commit().map_err(sql_error("initialising the schema"))?;
            revision
        };
        tracing::info!(path = %location, revision, "opened SQLite state store");
        Ok(SqliteStore {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                revision,
                watchers: Vec::new(),
            })),
            location: location.into(),
        })
    }

    /// Runs `operation` on the blocking pool with the connection locked.
    async fn run<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || operation(&mut lock(&inner)))
            .await
            .map_err(StoreError::Worker)?
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.run(move |inner| {
            inner
                .conn
                .prepare_cached("SELECT value, mod_revision FROM kv WHERE key = ?1")
                .and_then(|mut stmt| {
                    stmt.query_row(params![key.as_bytes()], |row| {
                        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, u64>(1)?))
                    })
                    .optional()
                })
                .map_err(sql_error("reading a key"))
                .map(|found| {
                    found.map(|(value, mod_revision)| KeyValue {
                        key,
                        value,
                        mod_revision,
                    })
                })
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let start = prefix.as_bytes().to_vec();
        self.run(move |inner| {
            let rows = match prefix_end(&start) {
                Some(end) => query_range(
                    &inner.conn,
                    "SELECT key, value, mod_revision FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
                    params![start, end],
                ),
                None => query_range(
                    &inner.conn,
                    "SELECT key, value, mod_revision FROM kv WHERE key >= ?1 ORDER BY key",
                    params![start],
                ),
            }?;
            rows.into_iter()
                .map(|(key, value, mod_revision)| {
                    let key = String::from_utf8(key).map_err(|err| StoreError::CorruptKey {
                        lossy: String::from_utf8_lossy(err.as_bytes()).into_owned(),
                    })?;
                    Ok(KeyValue {
                        key,
                        value,
                        mod_revision,
                    })
                })
                .collect()
        })
        .await
    }

    async fn txn(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        validate_ops(&ops)?;
        if ops.is_empty() {
            return self.revision().await;
        }
        self.run(move |inner| apply_txn(inner, ops)).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        Ok(lock(&self.inner).revision)
    }

    fn watch(&self, prefix: &str) -> WatchReceiver {
        let (sender, receiver) = unbounded_channel();
        let mut inner = lock(&self.inner);
        inner.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            sender,
        });
        tracing::debug!(prefix, watchers = inner.watchers.len(), "watch started");
        receiver
    }
}

/// Checks every precondition, applies every operation under one new revision, commits,
/// then publishes the events. On any failure the SQLite transaction rolls back on drop.
fn apply_txn(inner: &mut Inner, ops: Vec<Op>) -> Result<u64, StoreError> {
    let Inner {
        conn,
        revision,
        watchers,
    } = inner;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error("starting a transaction"))?;

    let mut found = Vec::with_capacity(ops.len());
    for op in &ops {
        let current: Option<u64> = tx
            .prepare_cached("SELECT mod_revision FROM kv WHERE key = ?1")
            .and_then(|mut stmt| {
                stmt.query_row(params![op.key().as_bytes()], |row| row.get(0))
                    .optional()
            })
            .map_err(sql_error("checking a precondition"))?;
        if !op.expect().holds(current) {
            tracing::debug!(key = op.key(), expected = %op.expect(), found = ?current, "transaction precondition failed");
            return Err(StoreError::Conflict {
                key: op.key().to_owned(),
                expected: op.expect(),
                found: current,
            });
        }
        found.push(current);
    }

    let next = *revision + 1;
    let mut events = Vec::with_capacity(ops.len());
    for (op, current) in ops.into_iter().zip(found) {
        match op {
            Op::Put { key, value, .. } => {
                tx.prepare_cached(
                    "INSERT INTO kv (key, value, mod_revision) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                                                     mod_revision = excluded.mod_revision",
                )
                .and_then(|mut stmt| stmt.execute(params![key.as_bytes(), value, next]))
                .map_err(sql_error("writing a key"))?;
                events.push(WatchEvent::Put(KeyValue {
                    key,
                    value,
                    mod_revision: next,
                }));
            }
            Op::Delete { key, .. } if current.is_some() => {
                tx.prepare_cached("DELETE FROM kv WHERE key = ?1")
                    .and_then(|mut stmt| stmt.execute(params![key.as_bytes()]))
                    .map_err(sql_error("deleting a key"))?;
                events.push(WatchEvent::Delete {
                    key,
                    mod_revision: next,
                });
            }
            Op::Delete { .. } => {}
        }
    }
    if events.is_empty() {
        return Ok(*revision);
    }

    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'revision'")
        .and_then(|mut stmt| stmt.execute(params![next]))
        .map_err(sql_error("advancing the revision"))?;
    tx.commit().map_err(sql_error("committing a transaction"))?;
    *revision = next;
    tracing::trace!(
        revision = next,
        changes = events.len(),
        "transaction committed"
    );

    publish(watchers, &events);
    Ok(next)
}

/// Sends each event to the watchers whose prefix matches it; forgets dropped watchers.
fn publish(watchers: &mut Vec<Watcher>, events: &[WatchEvent]) {
    watchers.retain(|watcher| {
        events
            .iter()
            .filter(|event| event.key().starts_with(&watcher.prefix))
            .all(|event| watcher.sender.send(event.clone()).is_ok())
            && !watcher.sender.is_closed()
    });
}

type Row = (Vec<u8>, Vec<u8>, u64);

fn query_range(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Row>, StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| {
            stmt.query_map(params, |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect()
        })
        .map_err(sql_error("listing keys"))
}

/// The smallest byte string greater than every string that starts with `prefix`, or
/// `None` when no such string exists (empty prefix, or only 0xFF bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&byte| byte != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock rolled back its SQLite transaction when the
    // `Transaction` dropped, and `revision` only moves after a commit: the state is intact.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sql_error(operation: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { operation, source }
}

/// Maps SQLITE_BUSY/LOCKED to [`StoreError::Locked`], anything else through `other`.
fn locked_or(
    location: &str,
    source: rusqlite::Error,
    other: impl FnOnce(rusqlite::Error) -> StoreError,
) -> StoreError {
    match source.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Locked {
            path: location.to_owned(),
        },
        _ => other(source),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::Arc;

    use super::*;
    use crate::Expect;

    fn memory_store() -> (Arc<dyn Store>, ()) {
        (Arc::new(SqliteStore::in_memory().unwrap()), ())
    }

    fn file_store() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        (Arc::new(store), dir)
    }

    mod in_memory {
        crate::conformance::conformance_tests!(super::memory_store);
    }

    mod on_disk {
        crate::conformance::conformance_tests!(super::file_store);
    }

    #[test]
    fn prefix_end_is_the_exclusive_upper_bound() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
    }

    #[tokio::test]
    async fn data_and_revision_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(&path).unwrap();
        store.put("a", b"1".to_vec(), Expect::Absent).await.unwrap();
        let last = store.put("b", b"2".to_vec(), Expect::Absent).await.unwrap();
        store.delete("a", Expect::Any).await.unwrap();
        drop(store);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.revision().await.unwrap(), last + 1);
        assert!(store.get("a").await.unwrap().is_none());
        let b = store.get("b").await.unwrap().unwrap();
        assert_eq!((b.value.as_slice(), b.mod_revision), (&b"2"[..], last));
        let next = store.put("c", b"3".to_vec(), Expect::Absent).await.unwrap();
        assert_eq!(next, last + 2, "the revision keeps counting after a reopen");
    }

    #[tokio::test]
    async fn second_open_of_the_same_file_reports_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let _first = SqliteStore::open(&path).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("another `skiff server`"), "{err}");
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'schema_version'",
            params![SCHEMA_VERSION + 1],
        )
        .unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::UnsupportedSchema { found, .. } if found == SCHEMA_VERSION + 1),
            "{err:?}"
        );
    }

    #[test]
    fn open_in_missing_directory_says_what_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let err = SqliteStore::open(&dir.path().join("missing/state.db")).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("exists and is writable"), "{err}");
    }

    const CRASH_CHILD_ENV: &str = "SKIFF_STORE_CRASH_CHILD_DB";
    const CRASH_WRITES: u64 = 200;

    /// Not a test: the child process of `committed_writes_survive_kill_9`.
    #[tokio::test]
    #[ignore = "helper process spawned by committed_writes_survive_kill_9"]
    async fn crash_child() {
        let Some(path) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let store = SqliteStore::open(Path::new(&path)).unwrap();
        let mut revision = 0;
        for i in 0..CRASH_WRITES {
            revision = store
                .put(
                    &format!("k/{i:04}"),
                    i.to_string().into_bytes(),
                    Expect::Absent,
                )
                .await
                .unwrap();
        }
        println!("committed {revision}");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }

    #[tokio::test]
    async fn committed_writes_survive_kill_9() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sqlite::tests::crash_child",
                "--ignored",
                "--nocapture",
            ])
            .env(CRASH_CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let committed = stdout
            .lines()
            .map(Result::unwrap)
            .find_map(|line| line.strip_prefix("committed ").map(str::to_owned))
            .expect("the child process exited before committing");
        child.kill().unwrap(); // SIGKILL: no destructor, no SQLite close, no checkpoint
        child.wait().unwrap();

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.revision().await.unwrap().to_string(), committed);
        let all = store.list("k/").await.unwrap();
        assert_eq!(all.len() as u64, CRASH_WRITES);
        assert_eq!(
            all.last().unwrap().value,
            (CRASH_WRITES - 1).to_string().into_bytes()
        );
    }
}
