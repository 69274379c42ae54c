//! The KV bucket that holds allocation records and port claims, behind a narrow compare-and-set trait.
//!
//! Every write is conditional. A refused condition is an [`Outcome::Conflict`], never an error: the caller
//! reads again and decides again. JetStream reports a conflict as error 10071 (wrong last sequence) and, on
//! replicated streams, also as 10164 while another conditional write to the key is in flight; async-nats only
//! maps the first, so both are recognised here.

use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;

use crate::config::JetStreamConfig;

/// A failed KV call that is not a conflict: the server is unreachable, timed out or refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "KV bucket {bucket}: {op} {key}: {message}; check that NATS is up and JetStream is enabled"
)]
pub struct StoreError {
    pub bucket: String,
    pub op: &'static str,
    pub key: String,
    pub message: String,
}

/// The result of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written; the key's new revision.
    Written(u64),
    /// The key was not at the expected revision (or, for create, already existed).
    Conflict,
}

/// One live value and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub revision: u64,
}

/// Compare-and-set storage. Implemented by a JetStream KV bucket; the worker is generic over it.
pub trait Store: Clone + Send + Sync + 'static {
    /// The live value of `key`, or `None` when absent or deleted.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;
    /// Writes `key` only if it is absent (or deleted).
    fn create(
        &self,
        key: &str,
        value: Bytes,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send;
    /// Writes `key` only if it is at `revision`.
    fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send;
    /// Deletes `key` only if it is at `revision`.
    fn delete(
        &self,
        key: &str,
        revision: u64,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send;
    /// Every live key starting with `prefix`. Not for hot paths: it walks the bucket.
    fn keys(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}

/// Up to `n` ports of `candidates`, in order, whose key (`prefix` and the port) holds no live claim. A hint
/// for the port search: the create that follows is what makes a claim exclusive.
///
/// # Errors
/// [`StoreError`] when the bucket cannot be read.
pub async fn unclaimed<S: Store>(
    store: &S,
    prefix: &str,
    candidates: impl Iterator<Item = u16>,
    n: usize,
) -> Result<Vec<u16>, StoreError> {
    let mut chosen = Vec::with_capacity(n);
    for port in candidates {
        if chosen.len() == n {
            break;
        }
        if store.get(&format!("{prefix}{port}")).await?.is_none() {
            chosen.push(port);
        }
    }
    Ok(chosen)
}

/// The JetStream KV bucket.
#[derive(Clone)]
pub struct KvStore {
    kv: kv::Store,
    bucket: String,
}

fn chain_has(err: &(dyn StdError + 'static), needles: &[&str]) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        let text = e.to_string();
        if needles.iter().any(|n| text.contains(n)) {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Whether a write error means "the condition did not hold" (10071, or 10164 on replicated streams).
fn is_conflict(err: &(dyn StdError + 'static)) -> bool {
    chain_has(
        err,
        &[
            "wrong last sequence",
            "error code 10071",
            "error code 10164",
        ],
    )
}

impl KvStore {
    /// Opens the bucket, creating it when absent. It keeps one value per key and no TTL: tombstones must
    /// outlive the events stream, so they are never expired by the bucket.
    ///
    /// # Errors
    /// [`StoreError`] when JetStream refuses or cannot be reached.
    pub async fn open(
        js: &jetstream::Context,
        cfg: &JetStreamConfig,
    ) -> Result<KvStore, StoreError> {
        let bucket = cfg.state_bucket.clone();
        let err = |op: &'static str, e: &dyn std::fmt::Display| StoreError {
            bucket: bucket.clone(),
            op,
            key: String::new(),
            message: e.to_string(),
        };
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "Internal Task Gateway: allocation records and port claims".into(),
                    history: 1,
                    num_replicas: cfg.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| err("create bucket", &e))?,
        };
        Ok(KvStore { kv, bucket })
    }

    fn error(&self, op: &'static str, key: &str, e: &dyn std::fmt::Display) -> StoreError {
        StoreError {
            bucket: self.bucket.clone(),
            op,
            key: key.to_owned(),
            message: e.to_string(),
        }
    }
}

impl Store for KvStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| self.error("get", key, &e))?;
        Ok(entry.and_then(|e| {
            (e.operation == kv::Operation::Put).then_some(Entry {
                value: e.value,
                revision: e.revision,
            })
        }))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Outcome, StoreError> {
        match self.kv.create(key, value).await {
            Ok(rev) => Ok(Outcome::Written(rev)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists || is_conflict(&e) => {
                Ok(Outcome::Conflict)
            }
            Err(e) => Err(self.error("create", key, &e)),
        }
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<Outcome, StoreError> {
        match self.kv.update(key, value, revision).await {
            Ok(rev) => Ok(Outcome::Written(rev)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || is_conflict(&e) => {
                Ok(Outcome::Conflict)
            }
            Err(e) => Err(self.error("update", key, &e)),
        }
    }

    async fn delete(&self, key: &str, revision: u64) -> Result<Outcome, StoreError> {
        match self.kv.delete_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(Outcome::Written(revision + 1)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision || is_conflict(&e) => {
                Ok(Outcome::Conflict)
            }
            Err(e) => Err(self.error("delete", key, &e)),
        }
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let keys = tokio::time::timeout(Duration::from_secs(30), async {
            let stream = self
                .kv
                .keys()
                .await
                .map_err(|e| self.error("keys", prefix, &e))?;
            stream
                .try_filter(|k| futures::future::ready(k.starts_with(prefix)))
                .try_collect::<Vec<String>>()
                .await
                .map_err(|e| self.error("keys", prefix, &e))
        })
        .await
        .map_err(|e| self.error("keys", prefix, &e))??;
        Ok(keys)
    }
}
