//! The behaviour every [`Store`] backend must show, as reusable async checks.
//!
//! Each backend's test module instantiates the whole suite with
//! `conformance_tests!(factory)`, where `factory()` returns `(Arc<dyn Store>, guard)`
//! and the guard keeps any temporary resources (a directory, a server) alive.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::{Expect, KeyValue, Op, Store, StoreError, WatchEvent, WatchReceiver};

/// Generates one `#[tokio::test]` per check for the store built by `$factory`.
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance::conformance_tests!(@each $factory;
            compare_and_swap, delete_preconditions, txn_is_all_or_nothing,
            txn_without_changes_keeps_revision, prefix_listing, watch_delivery,
            concurrent_cas_increments);
    };
    (@each $factory:path; $($check:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let (store, _guard) = $factory();
                $crate::conformance::$check(store).await;
            }
        )+
    };
}
pub(crate) use conformance_tests;

pub async fn compare_and_swap(store: Arc<dyn Store>) {
    assert_eq!(store.revision().await.unwrap(), 0);
    let r1 = store
        .put("k", b"v1".to_vec(), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(r1, 1);
    let err = store
        .put("k", b"x".to_vec(), Expect::Absent)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { key, expected: Expect::Absent, found: Some(1) } if key == "k"),
        "{err:?}"
    );

    let r2 = store
        .put("k", b"v2".to_vec(), Expect::Revision(r1))
        .await
        .unwrap();
    assert_eq!(r2, 2);
    let stale = store.put("k", b"v3".to_vec(), Expect::Revision(r1)).await;
    assert!(matches!(
        stale,
        Err(StoreError::Conflict { found: Some(2), .. })
    ));
    let missing = store.put("other", b"v".to_vec(), Expect::Revision(1)).await;
    assert!(matches!(
        missing,
        Err(StoreError::Conflict { found: None, .. })
    ));

    assert_eq!(
        store.get("k").await.unwrap(),
        Some(KeyValue {
            key: "k".into(),
            value: b"v2".to_vec(),
            mod_revision: 2
        })
    );
    let r3 = store.put("k", b"v4".to_vec(), Expect::Any).await.unwrap();
    assert_eq!(r3, 3);
    assert_eq!(
        store.revision().await.unwrap(),
        3,
        "failed writes do not consume revisions"
    );
}

pub async fn delete_preconditions(store: Arc<dyn Store>) {
    let r1 = store.put("k", b"v".to_vec(), Expect::Any).await.unwrap();
    let stale = store.delete("k", Expect::Revision(r1 + 5)).await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })));
    let present = store.delete("k", Expect::Absent).await;
    assert!(matches!(present, Err(StoreError::Conflict { .. })));
    let r2 = store.delete("k", Expect::Revision(r1)).await.unwrap();
    assert_eq!(r2, r1 + 1);
    assert!(store.get("k").await.unwrap().is_none());
    let gone = store.delete("k", Expect::Revision(r1)).await;
    assert!(matches!(
        gone,
        Err(StoreError::Conflict { found: None, .. })
    ));
    assert_eq!(
        store.delete("k", Expect::Any).await.unwrap(),
        r2,
        "no-op delete"
    );
}

pub async fn txn_is_all_or_nothing(store: Arc<dyn Store>) {
    let r1 = store
        .put("a", b"a1".to_vec(), Expect::Absent)
        .await
        .unwrap();
    store
        .put("d", b"d1".to_vec(), Expect::Absent)
        .await
        .unwrap();
    let before = store.revision().await.unwrap();

    // The last precondition fails: the earlier put, delete and create must not happen.
    let err = store
        .txn(vec![
            Op::put("a", b"a2".to_vec(), Expect::Revision(r1)),
            Op::delete("d", Expect::Any),
            Op::put("new", b"n".to_vec(), Expect::Absent),
            Op::put("b", b"b".to_vec(), Expect::Revision(99)),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { key, .. } if key == "b"),
        "{err:?}"
    );
    assert_eq!(store.revision().await.unwrap(), before);
    assert_eq!(store.get("a").await.unwrap().unwrap().value, b"a1");
    assert!(store.get("d").await.unwrap().is_some());
    assert!(store.get("new").await.unwrap().is_none());

    let r = store
        .txn(vec![
            Op::put("a", b"a2".to_vec(), Expect::Revision(r1)),
            Op::delete("d", Expect::Any),
            Op::put("new", b"n".to_vec(), Expect::Absent),
        ])
        .await
        .unwrap();
    assert_eq!(r, before + 1, "one transaction, one revision");
    assert_eq!(store.get("a").await.unwrap().unwrap().mod_revision, r);
    assert_eq!(store.get("new").await.unwrap().unwrap().mod_revision, r);
    assert!(store.get("d").await.unwrap().is_none());

    let dup = store
        .txn(vec![
            Op::put("x", vec![], Expect::Any),
            Op::delete("x", Expect::Any),
        ])
        .await;
    assert!(matches!(dup, Err(StoreError::DuplicateKey { .. })));
    let empty = store.put("", vec![], Expect::Any).await;
    assert!(matches!(empty, Err(StoreError::EmptyKey)));
}

pub async fn txn_without_changes_keeps_revision(store: Arc<dyn Store>) {
    store.put("k", vec![], Expect::Any).await.unwrap();
    let before = store.revision().await.unwrap();
    assert_eq!(store.txn(vec![]).await.unwrap(), before);
    let noop = store
        .txn(vec![
            Op::delete("absent", Expect::Any),
            Op::delete("gone", Expect::Absent),
        ])
        .await
        .unwrap();
    assert_eq!(noop, before);
    assert_eq!(store.revision().await.unwrap(), before);
}

pub async fn prefix_listing(store: Arc<dyn Store>) {
    // Neighbours of "tasks/" in byte order: "tasks" < "tasks/..." < "tasks0" < "tasksa".
    let keys = [
        "tasks/b/2",
        "tasks/a/1",
        "tasks",
        "tasks0",
        "tasksa",
        "tasks/a/\u{10ffff}",
        "t",
        "services/x",
    ];
    for key in keys {
        store
            .put(key, key.as_bytes().to_vec(), Expect::Absent)
            .await
            .unwrap();
    }
    let listed = |items: Vec<KeyValue>| items.into_iter().map(|kv| kv.key).collect::<Vec<_>>();

    assert_eq!(
        listed(store.list("tasks/").await.unwrap()),
        ["tasks/a/1", "tasks/a/\u{10ffff}", "tasks/b/2"]
    );
    assert_eq!(
        listed(store.list("tasks/a/").await.unwrap()),
        ["tasks/a/1", "tasks/a/\u{10ffff}"]
    );
    assert_eq!(
        listed(store.list("tasks/c/").await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(listed(store.list("tasks0").await.unwrap()), ["tasks0"]);
    let mut everything: Vec<_> = keys.iter().map(|k| k.to_string()).collect();
    everything.sort();
    assert_eq!(listed(store.list("").await.unwrap()), everything);

    let with_values = store.list("services/").await.unwrap();
    assert_eq!(with_values[0].value, b"services/x");
    assert!(with_values[0].mod_revision > 0);
}

pub async fn watch_delivery(store: Arc<dyn Store>) {
    store
        .put("tasks/old", b"before".to_vec(), Expect::Any)
        .await
        .unwrap();
    let mut tasks = store.watch("tasks/");
    let mut all = store.watch("");
    let dropped = store.watch("tasks/");
    drop(dropped);

    let r1 = store
        .put("tasks/a", b"1".to_vec(), Expect::Absent)
        .await
        .unwrap();
    store
        .put("services/s", b"s".to_vec(), Expect::Absent)
        .await
        .unwrap();
    let r3 = store
        .txn(vec![
            Op::put("tasks/b", b"2".to_vec(), Expect::Absent),
            Op::delete("tasks/old", Expect::Any),
            Op::delete("tasks/never-existed", Expect::Any),
        ])
        .await
        .unwrap();

    let expected = [
        WatchEvent::Put(KeyValue {
            key: "tasks/a".into(),
            value: b"1".to_vec(),
            mod_revision: r1,
        }),
        WatchEvent::Put(KeyValue {
            key: "tasks/b".into(),
            value: b"2".to_vec(),
            mod_revision: r3,
        }),
        WatchEvent::Delete {
            key: "tasks/old".into(),
            mod_revision: r3,
        },
    ];
    for event in &expected {
        assert_eq!(&next_event(&mut tasks).await, event);
    }
    let seen: Vec<_> = [
        next_event(&mut all).await,
        next_event(&mut all).await,
        next_event(&mut all).await,
        next_event(&mut all).await,
    ]
    .iter()
    .map(|e| (e.key().to_owned(), e.mod_revision()))
    .collect();
    assert_eq!(
        seen,
        [
            ("tasks/a".to_owned(), r1),
            ("services/s".to_owned(), r1 + 1),
            ("tasks/b".to_owned(), r3),
            ("tasks/old".to_owned(), r3)
        ]
    );

    // Failed transactions publish nothing.
    store
        .put("tasks/a", vec![], Expect::Absent)
        .await
        .unwrap_err();
    drop(store);
    assert_eq!(tasks.try_recv().ok(), None);
}

async fn next_event(watch: &mut WatchReceiver) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("no watch event within 10 s")
        .expect("watch closed")
}

/// Many tasks increment one counter with read-modify-CAS loops; none may be lost.
pub async fn concurrent_cas_increments(store: Arc<dyn Store>) {
    const WORKERS: u64 = 16;
    const INCREMENTS: u64 = 25;
    let mut watch = store.watch("counter");
    let handles: Vec<_> = (0..WORKERS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    loop {
                        let current = store.get("counter").await.unwrap();
                        let (value, expect) = match &current {
                            Some(kv) => (parse(&kv.value) + 1, Expect::Revision(kv.mod_revision)),
                            None => (1, Expect::Absent),
                        };
                        match store
                            .put("counter", value.to_string().into_bytes(), expect)
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(err) => panic!("unexpected store error: {err}"),
                        }
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let total = WORKERS * INCREMENTS;
    let counter = store.get("counter").await.unwrap().unwrap();
    assert_eq!(parse(&counter.value), total);
    assert_eq!(counter.mod_revision, total);

    // The watch saw every increment exactly once, in order.
    let mut revisions = BTreeSet::new();
    for expected in 1..=total {
        let event = next_event(&mut watch).await;
        assert_eq!(event.mod_revision(), expected);
        revisions.insert(event.mod_revision());
    }
    assert_eq!(revisions.len() as u64, total);
}

fn parse(value: &[u8]) -> u64 {
    std::str::from_utf8(value).unwrap().parse().unwrap()
}
