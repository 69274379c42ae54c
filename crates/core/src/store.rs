//! The seam to the store of allocation records and port claims: a narrow compare-and-set trait.
//!
//! Every write is conditional. A refused condition is an [`Outcome::Conflict`], never an error: the caller
//! reads again and decides again. The JetStream KV bucket of the NATS adapter implements it.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;

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

/// What a key holds, for the port search's scan of the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// A live value.
    Live,
    /// No live value; when it was last deleted, where the store still knows (a delete marker's time).
    Free(Option<SystemTime>),
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
    /// Removes `key` and its history for good, only if it is at `revision` (a later write survives). For
    /// tombstones past any replay: unlike a delete, it leaves no marker behind, so the bucket stops growing.
    fn purge(
        &self,
        key: &str,
        revision: u64,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send {
        self.delete(key, revision)
    }
    /// Whether `key` is live and, when free, since when: the port search's scan keeps lately released
    /// ports for last, as the index does. A store that keeps no deletion times says only live or free.
    fn state_of(&self, key: &str) -> impl Future<Output = Result<KeyState, StoreError>> + Send {
        async move {
            Ok(match self.get(key).await? {
                Some(_) => KeyState::Live,
                None => KeyState::Free(None),
            })
        }
    }
    /// Every live key starting with `prefix`, in one listing where the store can (the port search at
    /// capacity lists one Gateway's claims this way instead of a get per port).
    fn keys(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Every live key starting with `prefix`, with its value and revision. A store that can read them in
    /// one pass should: a get per key is a round trip per record, and a reconciler pass reads them all.
    fn entries(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, Entry)>, StoreError>> + Send {
        async move {
            let mut out = Vec::new();
            for key in self.keys(prefix).await? {
                if let Some(e) = self.get(&key).await? {
                    out.push((key, e));
                }
            }
            Ok(out)
        }
    }
    /// The claimed ports under `prefix` as a watch last saw them, when this store keeps such an index and
    /// it has caught up; `None` sends the port search to the bucket itself.
    fn port_index(&self, prefix: &str) -> impl Future<Output = Option<Arc<PortIndex>>> + Send {
        let _ = prefix;
        async { None }
    }
}

/// The JSON of a record or a claim, as stored.
pub fn encode<T: Serialize>(v: &T) -> Bytes {
    // Records and claims are plain structs of strings and numbers: serializing them cannot fail.
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// The claimed ports of one Gateway, kept from a watch of its port keys, so the port search reads memory
/// instead of making a KV get per candidate. A hint only: the create decides, and a search that finds too
/// few ports here checks the bucket itself before anyone is told to wait for capacity.
#[derive(Debug)]
pub struct PortIndex {
    claimed: std::sync::RwLock<BTreeSet<u16>>,
    /// When each free port was last released, as the bucket stored it.
    released: std::sync::RwLock<BTreeMap<u16, SystemTime>>,
    /// True once the watch has caught up with the bucket, false again while it restarts.
    current: tokio::sync::watch::Sender<bool>,
}

impl PortIndex {
    /// Whether the watch last saw `port` claimed.
    pub fn is_claimed(&self, port: u16) -> bool {
        self.claimed.read().map_or(true, |set| set.contains(&port))
    }

    /// A port claimed (`live`) or released, as the watch reports it.
    pub fn set(&self, port: u16, live: bool) {
        if let Ok(mut set) = self.claimed.write() {
            if live {
                set.insert(port);
            } else {
                set.remove(&port);
            }
        }
    }

    /// Notes when `port` was released (`at`, the bucket's time of the delete), or that it was claimed again.
    pub fn note_release(&self, port: u16, at: Option<SystemTime>) {
        if let Ok(mut released) = self.released.write() {
            match at {
                Some(at) => released.insert(port, at),
                None => released.remove(&port),
            };
        }
    }

    /// When `port` was released, if that was less than `within` before `now`.
    pub fn released_within(
        &self,
        port: u16,
        within: Duration,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let at = *self.released.read().ok()?.get(&port)?;
        (now.duration_since(at).unwrap_or_default() < within).then_some(at)
    }

    /// Replaces the whole set with `fresh`, once the watch has caught up with the bucket.
    pub fn catch_up(&self, fresh: &mut Option<BTreeSet<u16>>) {
        if let (Some(set), Ok(mut claimed)) = (fresh.take(), self.claimed.write()) {
            *claimed = set;
        }
        self.current.send_replace(true);
    }
}

impl Default for PortIndex {
    fn default() -> Self {
        PortIndex {
            claimed: std::sync::RwLock::default(),
            released: std::sync::RwLock::default(),
            current: tokio::sync::watch::channel(false).0,
        }
    }
}

impl PortIndex {
    /// Counts the index as behind the bucket (its watch restarts): searches go to the bucket meanwhile.
    pub fn stale(&self) {
        self.current.send_replace(false);
    }

    /// Whether the index has caught up with the bucket.
    pub fn is_current(&self) -> bool {
        *self.current.borrow()
    }

    /// Waits until the index has caught up, for at most `limit`; `false` when it has not.
    pub async fn wait_current(&self, limit: std::time::Duration) -> bool {
        let mut current = self.current.subscribe();
        matches!(
            tokio::time::timeout(limit, current.wait_for(|c| *c)).await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_cools_for_its_span_and_a_new_claim_ends_it() {
        let index = PortIndex::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let span = Duration::from_secs(20);
        index.note_release(40001, Some(t0));
        assert_eq!(
            index.released_within(40001, span, t0 + Duration::from_secs(19)),
            Some(t0)
        );
        assert_eq!(index.released_within(40001, span, t0 + span), None);
        assert_eq!(
            index.released_within(40002, span, t0),
            None,
            "never released"
        );
        index.note_release(40001, None);
        assert_eq!(
            index.released_within(40001, span, t0),
            None,
            "claimed again"
        );
    }
}
