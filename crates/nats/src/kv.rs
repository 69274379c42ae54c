//! The JetStream KV bucket as the core's [`Store`]: records and port claims, with compare-and-set.
//!
//! JetStream reports a conflict as error 10071 (wrong last sequence) and, on replicated streams, also as
//! 10164 while another conditional write to the key is in flight; async-nats only maps the first, so both
//! are recognised here. A watch of each Gateway's port keys feeds the core's [`PortIndex`] search hint.

use std::collections::{BTreeSet, HashMap};
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use itg_core::config::JetStreamConfig;
use itg_core::store::{Entry, KeyState, Outcome, PortIndex, Store, StoreError};

/// Why the bucket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bucket exists with a setting that would lose records or claims.
    #[error("KV bucket {bucket}: {problem}")]
    Settings { bucket: String, problem: String },
}

/// The JetStream KV bucket.
#[derive(Clone)]
pub struct KvStore {
    kv: kv::Store,
    bucket: String,
    /// One index per Gateway port prefix, started on the first search there.
    indexes: Arc<Mutex<HashMap<String, Arc<PortIndex>>>>,
}

/// Whether a write error means "the condition did not hold": JetStream's wrong-last-sequence (10071), or
/// 10164, which a replicated stream's leader answers while another conditional write to the key is in
/// flight. Read from the API error's code anywhere in the chain, never from its text.
fn is_conflict(err: &(dyn StdError + 'static)) -> bool {
    use jetstream::ErrorCode;
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(api) = e.downcast_ref::<jetstream::Error>()
            && matches!(
                api.error_code(),
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                    | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            )
        {
            return true;
        }
        cur = e.source();
    }
    false
}

impl KvStore {
    /// Opens the bucket, creating it when absent. It keeps one value per key and no TTL: tombstones must
    /// outlive the events stream, so they are never expired by the bucket.
    ///
    /// # Errors
    /// [`OpenError`] when JetStream refuses or cannot be reached, or the bucket's settings would lose data.
    pub async fn open(
        js: &jetstream::Context,
        cfg: &JetStreamConfig,
    ) -> Result<KvStore, OpenError> {
        let bucket = cfg.state_bucket.clone();
        let err = |op: &'static str, e: &dyn std::fmt::Display| StoreError {
            bucket: bucket.clone(),
            op,
            key: String::new(),
            message: e.to_string(),
        };
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => {
                check_settings(&kv).map_err(|problem| OpenError::Settings {
                    bucket: bucket.clone(),
                    problem,
                })?;
                kv
            }
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
        Ok(KvStore {
            kv,
            bucket,
            indexes: Arc::default(),
        })
    }

    /// A bucket that exists already, read as it is: no creation and no settings check, for readers that
    /// must change nothing (`itgctl describe`).
    pub fn existing(kv: kv::Store) -> KvStore {
        KvStore {
            bucket: kv.name.clone(),
            kv,
            indexes: Arc::default(),
        }
    }

    /// The stream subject that holds `key`.
    fn subject(&self, key: &str) -> String {
        format!("{}{key}", self.kv.prefix)
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

/// Refuses a bucket whose settings would lose what the worker keeps there: a TTL expires live claims and
/// the tombstones that stop a resurrection; a size limit that discards old entries drops them silently.
fn check_settings(kv: &kv::Store) -> Result<(), String> {
    let c = &kv.stream.cached_info().config;
    let fix = "recreate it without that setting (the worker creates it right when absent), or point \
               jetstream.state_bucket at a new bucket";
    if !c.max_age.is_zero() {
        return Err(format!(
            "its max_age (TTL) is {}: live port claims and tombstones would expire; {fix}",
            humantime::format_duration(c.max_age)
        ));
    }
    let limited = c.max_bytes > 0 || c.max_messages > 0;
    if limited && c.discard == jetstream::stream::DiscardPolicy::Old {
        return Err(format!(
            "it discards old entries at its limit (max_bytes {}, max_messages {}, discard old): claims would vanish; {fix}",
            c.max_bytes, c.max_messages
        ));
    }
    Ok(())
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

    async fn state_of(&self, key: &str) -> Result<KeyState, StoreError> {
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| self.error("get", key, &e))?;
        Ok(match entry {
            Some(e) if e.operation == kv::Operation::Put => KeyState::Live,
            // A delete marker carries the time of the release.
            Some(e) => KeyState::Free(Some(std::time::SystemTime::from(e.created))),
            None => KeyState::Free(None),
        })
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

    async fn purge(&self, key: &str, revision: u64) -> Result<Outcome, StoreError> {
        // A purge of the key's subject below revision + 1: the value read goes with its history, leaving no
        // marker, and a write made since (a higher sequence) survives.
        match self
            .kv
            .stream
            .purge()
            .filter(self.subject(key))
            .sequence(revision + 1)
            .await
        {
            Ok(p) if p.purged > 0 => Ok(Outcome::Written(revision)),
            Ok(_) => Ok(Outcome::Conflict),
            Err(e) => Err(self.error("purge", key, &e)),
        }
    }

    async fn port_index(&self, prefix: &str) -> Option<Arc<PortIndex>> {
        let index = {
            let mut map = self.indexes.lock().ok()?;
            if let Some(index) = map.get(prefix) {
                // Only the first search on a Gateway waits; while the watch restarts, searches go to the
                // bucket at once.
                return index.is_current().then(|| index.clone());
            }
            let index = Arc::new(PortIndex::default());
            tokio::spawn(follow(index.clone(), self.kv.clone(), prefix.to_owned()));
            map.insert(prefix.to_owned(), index.clone());
            index
        };
        // The first search on a Gateway waits briefly for the watch to catch up.
        index
            .wait_current(Duration::from_secs(2))
            .await
            .then_some(index)
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let keys = tokio::time::timeout(Duration::from_secs(30), self.keys_under(prefix))
            .await
            .map_err(|e| self.error("keys", prefix, &e))??;
        Ok(keys)
    }

    async fn entries(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        if !prefix.ends_with('.') {
            let mut out = Vec::new();
            for key in self.keys(prefix).await? {
                if let Some(e) = self.get(&key).await? {
                    out.push((key, e));
                }
            }
            return Ok(out);
        }
        tokio::time::timeout(
            Duration::from_secs(30),
            self.last_per_key("entries", prefix, false),
        )
        .await
        .map_err(|e| self.error("entries", prefix, &e))?
    }
}

impl KvStore {
    /// The live keys under `prefix`, read by a consumer filtered to it (the last entry per key, headers
    /// only), so a resource manager's records or one Gateway's claims are read without walking the whole
    /// bucket. A prefix that does not end a subject token (no trailing `.`) is read by walking it.
    async fn keys_under(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        if !prefix.ends_with('.') {
            let err = |e: &dyn std::fmt::Display| self.error("keys", prefix, e);
            let stream = self.kv.keys().await.map_err(|e| err(&e))?;
            return stream
                .try_filter(|k| futures::future::ready(k.starts_with(prefix)))
                .try_collect::<Vec<String>>()
                .await
                .map_err(|e| err(&e));
        }
        let live = self.last_per_key("keys", prefix, true).await?;
        Ok(live.into_iter().map(|(k, _)| k).collect())
    }

    /// The last live entry of every key under `prefix` (which ends a subject token), by one consumer
    /// filtered to it; values too unless `headers_only`.
    async fn last_per_key(
        &self,
        op: &'static str,
        prefix: &str,
        headers_only: bool,
    ) -> Result<Vec<(String, Entry)>, StoreError> {
        let err = |e: &dyn std::fmt::Display| self.error(op, prefix, e);
        let full = format!("{}{prefix}", self.kv.prefix);
        let consumer = self
            .kv
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("{full}>"),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                headers_only,
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let mut left = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        if left == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| err(&e))?;
            let removed = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            let info = m.info().ok().map(|i| (i.stream_sequence, i.pending));
            if !removed && let Some(key) = m.subject.strip_prefix(self.kv.prefix.as_str()) {
                out.push((
                    key.to_owned(),
                    Entry {
                        value: m.payload.clone(),
                        revision: info.map_or(0, |i| i.0),
                    },
                ));
            }
            left = left.saturating_sub(1);
            if left == 0 || info.is_some_and(|i| i.1 == 0) {
                break;
            }
        }
        Ok(out)
    }
}

/// Follows the port keys under `prefix` for as long as the process runs, starting over (and counting as
/// not current meanwhile) when the watch breaks.
async fn follow(index: Arc<PortIndex>, kv: kv::Store, prefix: String) {
    let full = format!("{}{prefix}", kv.prefix);
    loop {
        if let Err(e) = follow_once(&index, &kv, &full).await {
            tracing::warn!(prefix = %prefix, error = %e, "port index watch broke; restarting");
        }
        index.stale();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow_once(index: &PortIndex, kv: &kv::Store, full: &str) -> Result<(), String> {
    let consumer = kv
        .stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{full}>"),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            // The subject, the operation header and the time say all the index needs: no claim bodies.
            headers_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    // What was claimed is rebuilt from scratch; until it has caught up, searches go to the bucket.
    let mut fresh = Some(BTreeSet::new());
    if consumer.cached_info().num_pending == 0 {
        index.catch_up(&mut fresh);
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let Some(port) = m
            .subject
            .strip_prefix(full)
            .and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        let removed = m
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        // The bucket's time of the write: when a release happened, for the search's cooling.
        let at = m.info().ok().map(|i| {
            let nanos = u64::try_from(i.published.unix_timestamp_nanos()).unwrap_or(0);
            std::time::SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
        });
        index.note_release(port, at.filter(|_| removed));
        match fresh.as_mut() {
            Some(set) if removed => {
                set.remove(&port);
            }
            Some(set) => {
                set.insert(port);
            }
            None => index.set(port, !removed),
        }
        if fresh.is_some() && m.info().is_ok_and(|i| i.pending == 0) {
            index.catch_up(&mut fresh);
        }
    }
    Err("the watch ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};

    fn refused_with(err_code: u64) -> kv::UpdateError {
        let api: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": err_code,
            "description": "a description that names no code"
        }))
        .unwrap();
        kv::UpdateError::from(PublishError::with_source(PublishErrorKind::Other, api))
    }

    #[test]
    fn a_conflict_is_told_by_the_jetstream_error_code_not_the_text() {
        assert!(is_conflict(&refused_with(10164)));
        assert!(is_conflict(&refused_with(10071)));
        assert!(
            !is_conflict(&refused_with(10077)),
            "a stream-not-found is no conflict"
        );
    }
}
