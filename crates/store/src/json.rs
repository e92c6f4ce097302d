//! Typed JSON access on top of any [`Store`].
//!
//! Values are stored as compact JSON. [`StoreJsonExt`] is implemented for every store,
//! `dyn Store` included, so callers write `store.get_json::<Task>("tasks/…")` and get the
//! decoded value together with its `mod_revision`, ready for a compare-and-swap write-back
//! with [`Expect::Revision`]. [`Op::put_json`] builds typed operations for multi-key
//! transactions.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Expect, KeyValue, Op, Store, StoreError};

/// A decoded value with the key it was read from and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub key: String,
    pub value: T,
    pub mod_revision: u64,
}

/// Typed JSON helpers, available on every [`Store`].
pub trait StoreJsonExt: Store {
    /// Reads and decodes `key`.
    fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Versioned<T>>, StoreError>> + Send;

    /// Reads and decodes every key under `prefix`, sorted by key.
    fn list_json<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<Versioned<T>>, StoreError>> + Send;

    /// Encodes `value` and writes it to `key`; returns the new revision.
    fn put_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        expect: Expect,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

impl<S: Store + ?Sized> StoreJsonExt for S {
    async fn get_json<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        self.get(key).await?.map(decode).transpose()
    }

    async fn list_json<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, StoreError> {
        self.list(prefix).await?.into_iter().map(decode).collect()
    }

    fn put_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        expect: Expect,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        // Encode before the future is created so it does not borrow `value`.
        let encoded = encode(key, value);
        async move { self.put(key, encoded?, expect).await }
    }
}

impl Op {
    /// A put of `value` encoded as JSON.
    pub fn put_json<T: Serialize + ?Sized>(
        key: impl Into<String>,
        value: &T,
        expect: Expect,
    ) -> Result<Op, StoreError> {
        let key = key.into();
        let value = encode(&key, value)?;
        Ok(Op::Put { key, value, expect })
    }
}

fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: key.to_owned(),
        source,
    })
}

fn decode<T: DeserializeOwned>(kv: KeyValue) -> Result<Versioned<T>, StoreError> {
    match serde_json::from_slice(&kv.value) {
        Ok(value) => Ok(Versioned {
            key: kv.key,
            value,
            mod_revision: kv.mod_revision,
        }),
        Err(source) => Err(StoreError::Decode {
            key: kv.key,
            type_name: std::any::type_name::<T>(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde::Deserialize;

    use super::*;
    use crate::SqliteStore;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Task {
        id: String,
        cpu: u32,
    }

    #[tokio::test]
    async fn typed_round_trip_through_dyn_store() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let task = Task {
            id: "t1".into(),
            cpu: 256,
        };
        let rev = store
            .put_json("tasks/c/t1", &task, Expect::Absent)
            .await
            .unwrap();
        let read = store.get_json::<Task>("tasks/c/t1").await.unwrap().unwrap();
        assert_eq!(read.value, task);
        assert_eq!(read.mod_revision, rev);
        assert_eq!(read.key, "tasks/c/t1");
        assert!(store
            .get_json::<Task>("tasks/c/t2")
            .await
            .unwrap()
            .is_none());

        let op = Op::put_json(
            "tasks/c/t2",
            &Task {
                id: "t2".into(),
                cpu: 512,
            },
            Expect::Absent,
        )
        .unwrap();
        store.txn(vec![op]).await.unwrap();
        let all = store.list_json::<Task>("tasks/c/").await.unwrap();
        let ids: Vec<_> = all.iter().map(|v| v.value.id.as_str()).collect();
        assert_eq!(ids, ["t1", "t2"]);
    }

    #[tokio::test]
    async fn decode_error_names_key_and_type() {
        let store = SqliteStore::in_memory().unwrap();
        store
            .put("tasks/bad", b"{not json".to_vec(), Expect::Any)
            .await
            .unwrap();
        let err = store.get_json::<Task>("tasks/bad").await.unwrap_err();
        match &err {
            StoreError::Decode { key, type_name, .. } => {
                assert_eq!(key, "tasks/bad");
                assert!(type_name.ends_with("Task"), "{type_name}");
            }
            other => panic!("expected Decode, got {other:?}"),
        }
        let listed = store.list_json::<Task>("tasks/").await;
        assert!(matches!(listed, Err(StoreError::Decode { .. })));
    }
}
