//! The watch-fed port index the port search reads instead of making a KV get per candidate: it follows
//! claims and releases on the real server, and a search that finds too few free ports in it asks the bucket.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use common::{Env, suffix};
use itg::claims::unclaimed;
use itg::nats::KvStore;
use itg::store::{Outcome, Store};

async fn store(env: &Env) -> KvStore {
    let js = jetstream::new(env.nats().await);
    KvStore::open(&js, &Default::default())
        .await
        .expect("state bucket")
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn port_index_follows_claims_and_releases() {
    let env = Env::load();
    let s = store(&env).await;
    let prefix = format!("port.idx-{}.gateway-system.gw.", suffix());
    let claim = || Bytes::from_static(b"{\"allocation\":\"a\",\"proxy\":\"p\"}");
    // Claimed before the index starts: seen by its catch-up.
    assert!(matches!(
        s.create(&format!("{prefix}40001"), claim()).await.unwrap(),
        Outcome::Written(_)
    ));
    let index = s.port_index(&prefix).await.expect("index catches up");
    assert!(index.is_claimed(40001));
    assert!(!index.is_claimed(40002));
    // Claimed and released afterwards: followed live.
    let Outcome::Written(rev) = s.create(&format!("{prefix}40002"), claim()).await.unwrap() else {
        panic!("create refused");
    };
    eventually("claim seen", async || index.is_claimed(40002)).await;
    assert!(matches!(
        s.delete(&format!("{prefix}40002"), rev).await.unwrap(),
        Outcome::Written(_)
    ));
    eventually("release seen", async || !index.is_claimed(40002)).await;
    let free = unclaimed(&s, &prefix, 40001..=40003, 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(free, vec![40002, 40003]);
}

#[tokio::test]
async fn a_search_that_finds_too_few_in_the_index_asks_the_bucket() {
    let env = Env::load();
    let s = store(&env).await;
    let prefix = format!("port.idx-{}.gateway-system.gw.", suffix());
    let claim = Bytes::from_static(b"{\"allocation\":\"a\",\"proxy\":\"p\"}");
    s.create(&format!("{prefix}40001"), claim).await.unwrap();
    let index = s.port_index(&prefix).await.expect("index catches up");
    assert!(index.is_claimed(40001));
    // Everything looks taken, so the answer comes from the bucket: the one port that is really free.
    assert_eq!(
        unclaimed(&s, &prefix, 40001..=40002, 2, Duration::ZERO)
            .await
            .unwrap(),
        vec![40002]
    );
}

#[tokio::test]
async fn a_port_released_lately_is_chosen_after_the_others() {
    let env = Env::load();
    let s = store(&env).await;
    let prefix = format!("port.idx-{}.gateway-system.gw.", suffix());
    let claim = || Bytes::from_static(b"{\"allocation\":\"a\",\"proxy\":\"p\"}");
    let index = s.port_index(&prefix).await.expect("index catches up");
    // 40002 released first, then 40001; 40003 never claimed.
    for port in [40002, 40001] {
        let key = format!("{prefix}{port}");
        let Outcome::Written(rev) = s.create(&key, claim()).await.unwrap() else {
            panic!("create refused");
        };
        eventually("claim seen", async || index.is_claimed(port)).await;
        s.delete(&key, rev).await.unwrap();
        eventually("release seen", async || !index.is_claimed(port)).await;
    }
    let cooling = Duration::from_secs(60);
    assert_eq!(
        unclaimed(&s, &prefix, 40001..=40003, 1, cooling)
            .await
            .unwrap(),
        vec![40003],
        "a port never claimed goes before two released lately"
    );
    assert_eq!(
        unclaimed(&s, &prefix, 40001..=40003, 3, cooling)
            .await
            .unwrap(),
        vec![40003, 40001, 40002],
        "released lately: after the others, in the search's order"
    );
    assert_eq!(
        unclaimed(&s, &prefix, 40001..=40003, 3, Duration::ZERO)
            .await
            .unwrap(),
        vec![40001, 40002, 40003],
        "without cooling the search keeps its order"
    );
}

/// The bucket without its index, as the port search meets it while the index restarts or lags.
#[derive(Clone)]
struct NoIndex(KvStore);

impl Store for NoIndex {
    async fn get(&self, key: &str) -> Result<Option<itg::store::Entry>, itg::store::StoreError> {
        self.0.get(key).await
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<Outcome, itg::store::StoreError> {
        self.0.create(key, value).await
    }
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<Outcome, itg::store::StoreError> {
        self.0.update(key, value, revision).await
    }
    async fn delete(&self, key: &str, revision: u64) -> Result<Outcome, itg::store::StoreError> {
        self.0.delete(key, revision).await
    }
    async fn state_of(&self, key: &str) -> Result<itg::store::KeyState, itg::store::StoreError> {
        self.0.state_of(key).await
    }
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, itg::store::StoreError> {
        self.0.keys(prefix).await
    }
}

#[tokio::test]
async fn without_the_index_the_bucket_scan_keeps_a_lately_released_port_for_last() {
    let env = Env::load();
    let s = NoIndex(store(&env).await);
    let prefix = format!("port.cool-{}.gateway-system.gw.", suffix());
    let claim = Bytes::from_static(b"{\"allocation\":\"a\",\"proxy\":\"p\"}");
    let Outcome::Written(rev) = s.create(&format!("{prefix}40001"), claim).await.unwrap() else {
        panic!("create refused");
    };
    s.delete(&format!("{prefix}40001"), rev).await.unwrap();
    // 40001 was released just now: within the cooling it comes after the port never used.
    let cooling = Duration::from_secs(60);
    assert_eq!(
        unclaimed(&s, &prefix, 40001..=40002, 1, cooling)
            .await
            .unwrap(),
        vec![40002]
    );
    // Still chosen when nothing else is free, and chosen first once the cooling is over.
    assert_eq!(
        unclaimed(&s, &prefix, 40001..=40002, 2, cooling)
            .await
            .unwrap(),
        vec![40002, 40001]
    );
    assert_eq!(
        unclaimed(&s, &prefix, 40001..=40002, 1, Duration::ZERO)
            .await
            .unwrap(),
        vec![40001]
    );
}
