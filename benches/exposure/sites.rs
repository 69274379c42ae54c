//! Many sites: what a worker beside its cluster costs when only a leaf-node link with a round trip of
//! `RTT_MS` joins it to the master's hub (`scripts/testenv up --topology sites`, `--only sites`). Three
//! placements of the same worker, each beside the floor measured the same way:
//!
//! - `one server`: worker and master on testenv's single nats-server, no WAN;
//! - `site-local` (`jetstream.hub_domain: hub`): the worker on west's leaf, its streams and bucket there,
//!   events sourced from the hub, replies sourced by it;
//! - `hub domain` (`jetstream.domain: hub`): the worker on a leaf of its own behind west's WAN link, every
//!   stream, consumer and KV call in the hub's JetStream across the link.
//!
//! The floor is the path an event and its reply cannot avoid, with no Kubernetes and no KV: publish at the
//! master's server, pull at the worker's place, acknowledge, publish the reply there, read it at the
//! master's. Replies are timed where the master reads them: an ordered consumer on its `ITG_REPLIES`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::common::process::WorkerProcess;
use crate::common::sites::{Sites, WanGuard, site_yaml, wan};
use crate::common::{Env, Master, TestRm, config_yaml, env_var, suffix};
use crate::drive::pcts;
use crate::report::{Row, info, ms};

#[path = "../../tests/common/nats_server.rs"]
mod nats_server;
use nats_server::NatsServer;

/// The WAN round trip of the figures.
const RTT_MS: u64 = 50;

type Slot = oneshot::Sender<Instant>;

/// Hands each reply stored in a server's `ITG_REPLIES` to whoever waits for it (`<alloc>/<kind>`).
#[derive(Clone)]
struct StreamWaiter {
    pending: Arc<Mutex<HashMap<String, Slot>>>,
}

impl StreamWaiter {
    async fn start(env: &Env, rm: &str) -> StreamWaiter {
        let js = jetstream::new(env.nats().await);
        let stream = loop {
            match js.get_stream(itg::contract::REPLIES_STREAM).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let c = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: format!("_INBOX.bench.{}", suffix()),
                filter_subject: format!("itg.replies.{rm}.>"),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .expect("ordered consumer on the replies");
        let mut msgs = c.messages().await.expect("reply messages");
        let pending: Arc<Mutex<HashMap<String, Slot>>> = Arc::default();
        let sink = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = msgs.next().await {
                let at = Instant::now();
                let kind = m.subject.rsplit('.').next().unwrap_or("").to_owned();
                let body: serde_json::Value =
                    serde_json::from_slice(&m.payload).unwrap_or_default();
                let alloc = body["allocation_id"].as_str().unwrap_or("").to_owned();
                let tx = sink
                    .lock()
                    .expect("waiters")
                    .remove(&format!("{alloc}/{kind}"));
                if let Some(tx) = tx {
                    let _ = tx.send(at);
                }
            }
        });
        StreamWaiter { pending }
    }

    fn expect(&self, alloc: &str, kind: &str) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("waiters")
            .insert(format!("{alloc}/{kind}"), tx);
        rx
    }
}

async fn wait(rx: oneshot::Receiver<Instant>, what: &str) -> Instant {
    tokio::time::timeout(Duration::from_secs(120), rx)
        .await
        .unwrap_or_else(|_| panic!("no {what} within 120 s"))
        .expect("waiter alive")
}

/// One lifecycle as the master drives it: started, ready, ended, removed; the started → ready time.
async fn lifecycle(m: &Master, w: &StreamWaiter, alloc: &str, ns: &str) -> Duration {
    let ready = w.expect(alloc, "ready");
    let t0 = Instant::now();
    m.started(alloc, ns, &[("http", 8080)]).await;
    let took = wait(ready, "ready").await - t0;
    let removed = w.expect(alloc, "removed");
    m.ended(alloc).await;
    wait(removed, "removed").await;
    took
}

/// Where a placement's master and worker stand.
struct Placement {
    name: &'static str,
    master: Env,
    worker: Env,
    /// The worker's `jetstream` keys for the placement.
    js_keys: &'static str,
    /// The JetStream context the floor's worker side uses: the domain it reaches, if not its own.
    floor_domain: Option<&'static str>,
}

/// The floor: `n` events published at the master's server, each pulled, acknowledged and answered at the
/// worker's place and read back at the master's, one at a time.
async fn floor(p: &Placement, rm: &str, n: usize) -> Vec<Duration> {
    let wnats = p.worker.nats().await;
    let wjs = match p.floor_domain {
        Some(d) => jetstream::with_domain(wnats, d),
        None => jetstream::new(wnats),
    };
    let cfg = itg::config::JetStreamConfig::default();
    if p.js_keys == "hub_domain" {
        // The site's streams source the floor's resource manager as a worker of the site lays them out.
        let hub = jetstream::with_domain(p.master.nats().await, "hub");
        itg::nats::ensure_site(&wjs, &hub, "hub", "west", &cfg, &[rm.to_owned()])
            .await
            .expect("the floor's site streams");
    }
    let c = itg::nats::ensure_consumer(&wjs, &cfg, rm, 8)
        .await
        .expect("floor consumer");
    let waiter = StreamWaiter::start(&p.master, rm).await;
    let mjs = jetstream::new(p.master.nats().await);
    let mut out = Vec::new();
    let mut msgs = c.messages().await.expect("floor pull");
    for i in 0..n + 3 {
        let alloc = format!("f{i}");
        let rx = waiter.expect(&alloc, "ready");
        let id = Uuid::new_v4().to_string();
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", id.as_str());
        let t0 = Instant::now();
        mjs.publish_with_headers(
            format!("itg.events.{rm}.started"),
            h,
            serde_json::to_vec(&serde_json::json!({ "allocation_id": alloc }))
                .expect("json")
                .into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
        let m = msgs.next().await.expect("an event").expect("event");
        m.double_ack().await.expect("ack");
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("reply-{id}").as_str());
        wjs.publish_with_headers(
            format!("itg.replies.{rm}.ready"),
            h,
            serde_json::to_vec(&serde_json::json!({ "allocation_id": alloc }))
                .expect("json")
                .into(),
        )
        .await
        .expect("publish reply")
        .await
        .expect("reply stored");
        let at = wait(rx, "floor reply").await;
        if i >= 3 {
            out.push(at - t0);
        }
    }
    out
}

/// The figures of one placement: started → ready p50/p99 (sequential), lifecycles per second (8 in
/// flight), and the floor's p50/p99.
async fn placement(p: &Placement, n: usize, lifecycles: usize, rows: &mut Vec<Row>) {
    let rm = TestRm::new(&p.worker, "sites", (42000, 42063)).await;
    let keys = p.js_keys;
    let mut w = WorkerProcess::spawn(
        |admin| {
            let y = config_yaml(&p.worker, &[&rm], "", admin);
            if keys == "hub_domain" {
                site_yaml(y)
            } else if keys == "domain" {
                y.replacen("jetstream:\n", "jetstream:\n  domain: hub\n", 1)
            } else {
                y
            }
        },
        &[],
    );
    w.ready(120).await;
    let waiter = StreamWaiter::start(&p.master, &rm.name).await;
    let m = Master::new(&p.master, &rm.name).await;
    let mut lat = Vec::new();
    for i in 0..n + 3 {
        let t = lifecycle(&m, &waiter, &format!("lat{i}"), &rm.task_ns).await;
        if i >= 3 {
            lat.push(t);
        }
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let per = lifecycles.div_ceil(8);
    for lane in 0..8 {
        let (m, waiter, ns) = (m.clone(), waiter.clone(), rm.task_ns.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                lifecycle(&m, &waiter, &format!("lc{lane}-{i}"), &ns).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("lane");
    }
    let rate = (per * 8) as f64 / t0.elapsed().as_secs_f64();
    drop(w);
    let fl = floor(p, &format!("floor-{}", suffix()), n).await;
    let (l, f) = (pcts(&lat), pcts(&fl));
    rows.push(info(
        format!("{}: started → ready p50 / p99", p.name),
        format!("{} / {}", ms(l.p50), ms(l.p99)),
    ));
    rows.push(info(
        format!("{}: floor p50 / p99", p.name),
        format!("{} / {}", ms(f.p50), ms(f.p99)),
    ));
    rows.push(info(
        format!("{}: worker over the floor, p50", p.name),
        format!(
            "{} ({:.2} round trips of {RTT_MS} ms)",
            ms(l.p50.saturating_sub(f.p50)),
            l.p50.saturating_sub(f.p50).as_secs_f64() * 1e3 / RTT_MS as f64
        ),
    ));
    rows.push(info(
        format!("{}: lifecycles/s, 8 in flight", p.name),
        format!("{rate:.1}"),
    ));
    rm.teardown(&p.worker).await;
}

/// The section: one row set per placement, with west's WAN link at `RTT_MS`.
pub async fn sites(n: usize, lifecycles: usize) -> Vec<Row> {
    let s = Sites::load();
    let _guard = WanGuard("west");
    wan(&["delay", "west", &RTT_MS.to_string()]);
    // A leaf of its own behind west's WAN link, with no deny rules: everything it does is in the hub.
    let remote =
        env_var("ITG_SITE_WEST_LEAF_REMOTE").expect("ITG_SITE_WEST_LEAF_REMOTE in .itg/env");
    let leaf = NatsServer::start(|dir| {
        format!(
            "server_name: plain\njetstream {{ store_dir: {:?}, domain: plain }}\nleafnodes {{ remotes: [ {{ url: {remote:?} }} ] }}\n",
            dir.join("js").display().to_string()
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let plain = Env {
        nats_url: leaf.nats_url(),
        kubeconfig: s.west.kubeconfig.clone(),
    };
    let one = Env::load();
    let places = [
        Placement {
            name: "one server",
            master: Env {
                nats_url: one.nats_url.clone(),
                kubeconfig: one.kubeconfig.clone(),
            },
            worker: one,
            js_keys: "",
            floor_domain: None,
        },
        Placement {
            name: "site-local (hub_domain), 50 ms WAN",
            master: Env {
                nats_url: s.hub.nats_url.clone(),
                kubeconfig: s.hub.kubeconfig.clone(),
            },
            worker: Env {
                nats_url: s.west.nats_url.clone(),
                kubeconfig: s.west.kubeconfig.clone(),
            },
            js_keys: "hub_domain",
            floor_domain: None,
        },
        Placement {
            name: "hub domain (domain), 50 ms WAN",
            master: Env {
                nats_url: s.hub.nats_url.clone(),
                kubeconfig: s.hub.kubeconfig.clone(),
            },
            worker: plain,
            js_keys: "domain",
            floor_domain: Some("hub"),
        },
    ];
    let mut rows = Vec::new();
    for p in &places {
        eprintln!("[bench] sites: {}", p.name);
        placement(p, n, lifecycles, &mut rows).await;
    }
    drop(leaf);
    rows
}
