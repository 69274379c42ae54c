//! A history checker: watches the KV bucket's port keys and records and each Gateway's listeners for the
//! whole of a run, records every claim, release and listener change with its time (and KV revision or
//! resourceVersion), and afterwards proves that no port ever had two live holders at one instant.
//!
//! The protocol a worker follows for one port is: claim (port key created) → listener added → ... →
//! listener removed → release (port key deleted). A holder of a port is an allocation whose claim is live,
//! or whose listener stands on the Gateway. Violations:
//! - a port key written for one allocation while it is live for another (two claims);
//! - two listeners on one port in one Gateway version;
//! - a listener of allocation A standing while the port key names B.
//!
//! KV times are the server's stored times, exact and in revision order. A Gateway change is only ever seen
//! late by a watch, so the watch gives an upper bound of when a version began; a consistent read (a probe,
//! every [`PROBE_EVERY`]) of resourceVersion r at [s, e] says that every later version began after s and
//! every version up to r began before e. A listener counts as standing only where those bounds prove it:
//! a watch that lags never makes a legitimate removal-then-release look like an overlap, and a listener
//! that really outlives its claim into another allocation's is caught once a probe or a later watch event
//! pins it there.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use gateway_api::experimental::gateways::Gateway;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::Env;

/// How often each Gateway is read to pin the watch's versions in time.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Seconds since the epoch, as f64: the clock both nats-server and this process read on one machine.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One Gateway and the resource manager whose port keys belong to it.
#[derive(Debug, Clone)]
pub struct Watched {
    pub rm: String,
    pub gateway_ns: String,
    pub gateway: String,
}

impl Watched {
    fn gw(&self) -> String {
        format!("{}/{}", self.gateway_ns, self.gateway)
    }
}

/// A write to a port key, in revision order.
#[derive(Debug, Clone)]
struct KvOp {
    rev: u64,
    at: f64,
    /// `<allocation key>/<proxy>` for a claim, `None` for a release.
    holder: Option<String>,
}

/// One version of a Gateway, by resourceVersion.
#[derive(Debug, Clone, Default)]
struct Version {
    /// When the watch delivered it (an upper bound of when it began), if it did.
    seen: Option<f64>,
    /// Delivered by the watch right after the version before it in rv order, with nothing missed between.
    follows: bool,
    listeners: BTreeMap<String, u16>,
}

/// A consistent read of a Gateway: resourceVersion `rv` was current at some instant in [from, to].
#[derive(Debug, Clone, Copy)]
struct Probe {
    rv: u64,
    from: f64,
    to: f64,
}

#[derive(Debug, Default)]
struct GatewayLog {
    versions: BTreeMap<u64, Version>,
    probes: Vec<Probe>,
    /// The last version the current watch session delivered; `None` after a restart or error.
    last_watched: Option<u64>,
    relists: usize,
}

/// Everything recorded during a run. Fed by [`History::start`], or by hand to test the checker.
#[derive(Debug, Default)]
pub struct Log {
    watched: Vec<Watched>,
    /// port key -> its writes as seen.
    ports: BTreeMap<String, Vec<KvOp>>,
    /// allocation record key -> (revision, phase) as seen.
    records: BTreeMap<String, Vec<(u64, String)>>,
    gateways: BTreeMap<String, GatewayLog>,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub claims: usize,
    pub releases: usize,
    /// Releases whose claim the watch never delivered (history 1 keeps only a key's last write).
    pub unseen_claims: usize,
    pub listener_adds: usize,
    pub listener_removes: usize,
    pub versions: usize,
    pub probes: usize,
    pub relists: usize,
    pub record_writes: usize,
    pub allocations: usize,
    /// Listener intervals proven to stand while the port key was free (a late apply; the reconciler's).
    pub unclaimed_listener_spans: usize,
    /// Listener instants the bounds pinned and checked against KV.
    pub pinned: usize,
    /// max concurrent holders -> number of ports.
    pub max_holders: BTreeMap<usize, usize>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "history: {} claims, {} releases ({} of whose claims the watch missed), {} listener adds, {} \
             listener removes over {} Gateway versions and {} probes ({} watch restarts); {} record writes \
             over {} allocations; {} listener spans pinned against KV, {} with the port key free; max \
             concurrent holders per port -> ports: {:?}; {} violations",
            self.claims,
            self.releases,
            self.unseen_claims,
            self.listener_adds,
            self.listener_removes,
            self.versions,
            self.probes,
            self.relists,
            self.record_writes,
            self.allocations,
            self.pinned,
            self.unclaimed_listener_spans,
            self.max_holders,
            self.violations.len()
        );
        s
    }
}

fn holder_of(value: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(value).unwrap_or_default();
    format!(
        "{}/{}",
        v["allocation"].as_str().unwrap_or("?"),
        v["proxy"].as_str().unwrap_or("?")
    )
}

impl Log {
    pub fn new(watched: Vec<Watched>) -> Log {
        let gateways = watched
            .iter()
            .map(|w| (w.gw(), GatewayLog::default()))
            .collect();
        Log {
            watched,
            gateways,
            ..Default::default()
        }
    }

    /// A write to the bucket: `value` is the new value, `None` for a delete or purge.
    pub fn kv(&mut self, key: &str, rev: u64, at: f64, value: Option<&[u8]>) {
        if key.starts_with("port.") {
            self.ports.entry(key.to_owned()).or_default().push(KvOp {
                rev,
                at,
                holder: value.map(holder_of),
            });
        } else if key.starts_with("alloc.") {
            let phase = value
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .and_then(|v| v["phase"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "deleted".into());
            self.records
                .entry(key.to_owned())
                .or_default()
                .push((rev, phase));
        }
    }

    /// A Gateway version delivered by the watch at `seen`; `restarted` when the watch had to start over
    /// (a relist, an error), so versions between the last one and this may be missing.
    pub fn watched(
        &mut self,
        gw: &str,
        rv: u64,
        seen: f64,
        listeners: BTreeMap<String, u16>,
        restarted: bool,
    ) {
        let g = self.gateways.entry(gw.to_owned()).or_default();
        if restarted {
            g.last_watched = None;
            g.relists += 1;
        }
        let follows = g.last_watched.is_some_and(|last| last < rv);
        let v = g.versions.entry(rv).or_default();
        if v.seen.is_none() {
            v.seen = Some(seen);
            v.follows = follows;
        }
        v.listeners = listeners;
        g.last_watched = Some(rv);
    }

    /// A consistent read of a Gateway that returned version `rv` between `from` and `to`.
    pub fn probed(
        &mut self,
        gw: &str,
        rv: u64,
        from: f64,
        to: f64,
        listeners: BTreeMap<String, u16>,
    ) {
        let g = self.gateways.entry(gw.to_owned()).or_default();
        g.probes.push(Probe { rv, from, to });
        g.versions.entry(rv).or_default().listeners = listeners;
    }

    /// Checks the whole history; see the module doc for what counts as a violation.
    pub fn check(&self) -> Report {
        let mut r = Report::default();
        let mut holders_max: BTreeMap<String, usize> = BTreeMap::new();
        // Two claims: a port key written for one holder while live for another.
        for (key, ops) in &self.ports {
            let mut ops = ops.clone();
            ops.sort_by_key(|o| o.rev);
            let mut live: Option<&KvOp> = None;
            for op in &ops {
                match (&op.holder, live) {
                    (Some(h), Some(prev)) if prev.holder.as_ref() != Some(h) => {
                        r.violations.push(format!(
                            "{key}: claimed by {h} at rev {} while {} held it since rev {}",
                            op.rev,
                            prev.holder.as_deref().unwrap_or("?"),
                            prev.rev
                        ));
                        holders_max.insert(key.clone(), 2);
                    }
                    (Some(_), Some(_)) => {}
                    (Some(_), None) => r.claims += 1,
                    (None, Some(_)) => r.releases += 1,
                    (None, None) => {
                        r.releases += 1;
                        r.unseen_claims += 1;
                    }
                }
                live = if op.holder.is_some() { Some(op) } else { None };
                holders_max.entry(key.clone()).or_insert(1);
            }
        }
        r.record_writes = self.records.values().map(Vec::len).sum();
        r.allocations = self.records.len();
        // Listener name -> holder, from every claim seen.
        let mut listener_holder: BTreeMap<String, String> = BTreeMap::new();
        for ops in self.ports.values() {
            for h in ops.iter().filter_map(|o| o.holder.as_ref()) {
                if let Some((alloc_key, proxy)) = h.rsplit_once('/')
                    && let Some((rm, id)) = itg::names::parse_allocation_key(alloc_key)
                {
                    listener_holder.insert(itg::names::object_name(&rm, &id, proxy), h.clone());
                }
            }
        }
        for w in &self.watched {
            let Some(g) = self.gateways.get(&w.gw()) else {
                continue;
            };
            r.relists += g.relists;
            r.probes += g.probes.len();
            r.versions += g.versions.len();
            let rvs: Vec<u64> = g.versions.keys().copied().collect();
            // Probes by resourceVersion, with the latest start of those before each and the earliest end
            // of those from each on: the bounds of when a version began.
            let mut probes = g.probes.clone();
            probes.sort_by_key(|p| p.rv);
            let mut latest_from = vec![f64::NEG_INFINITY; probes.len() + 1];
            for (i, p) in probes.iter().enumerate() {
                latest_from[i + 1] = latest_from[i].max(p.from);
            }
            let mut earliest_to = vec![f64::INFINITY; probes.len() + 1];
            for (i, p) in probes.iter().enumerate().rev() {
                earliest_to[i] = earliest_to[i + 1].min(p.to);
            }
            let first_at = |rv: u64| probes.partition_point(|p| p.rv < rv);
            let began_after = |rv: u64| latest_from[first_at(rv)];
            let began_before = |rv: u64| {
                let by_probe = earliest_to[first_at(rv)];
                g.versions[&rv].seen.map_or(by_probe, |s| s.min(by_probe))
            };
            let mut prev: Option<&Version> = None;
            for (i, rv) in rvs.iter().enumerate() {
                let v = &g.versions[rv];
                // Listener changes, between versions the watch delivered one after the other.
                if let Some(p) = prev.filter(|_| v.follows) {
                    r.listener_adds += v
                        .listeners
                        .keys()
                        .filter(|n| !p.listeners.contains_key(*n))
                        .count();
                    r.listener_removes += p
                        .listeners
                        .keys()
                        .filter(|n| !v.listeners.contains_key(*n))
                        .count();
                }
                prev = Some(v);
                // Two listeners on one port.
                let mut by_port: BTreeMap<u16, Vec<&String>> = BTreeMap::new();
                for (n, p) in &v.listeners {
                    by_port.entry(*p).or_default().push(n);
                }
                for (p, ns) in by_port.iter().filter(|(_, ns)| ns.len() > 1) {
                    r.violations.push(format!(
                        "Gateway {} version {rv}: listeners {ns:?} on port {p}",
                        w.gw()
                    ));
                }
                // Where this version provably stood: throughout [began_before(rv), began_after(next)] when
                // the watch delivered the next version right after it, and somewhere in each probe that
                // read it.
                let mut spans: Vec<(f64, f64, bool)> = Vec::new();
                if let Some(next) = rvs.get(i + 1)
                    && g.versions[next].follows
                {
                    let (a, b) = (began_before(*rv), began_after(*next));
                    if a <= b {
                        spans.push((a, b, true));
                    }
                }
                for p in &probes[first_at(*rv)..first_at(*rv + 1)] {
                    spans.push((p.from, p.to, false));
                }
                for (name, port) in v
                    .listeners
                    .iter()
                    .filter(|(n, _)| itg::names::is_owned_listener_name(n))
                {
                    let key = itg::names::port_key(&w.rm, &w.gateway_ns, &w.gateway, *port);
                    let mine = listener_holder.get(name);
                    let ops = self.ports.get(&key).map(Vec::as_slice).unwrap_or_default();
                    for (a, b, throughout) in &spans {
                        r.pinned += 1;
                        let during = holders_during(ops, *a, *b);
                        let others: Vec<&Option<String>> = during
                            .iter()
                            .filter(|h| h.is_some() && h.as_ref() != mine)
                            .collect();
                        let clash = if *throughout {
                            !others.is_empty()
                        } else {
                            during.len() == 1 && !others.is_empty()
                        };
                        if clash {
                            r.violations.push(format!(
                                "Gateway {} port {port}: listener {name} of {} stood {} [{a:.3}, {b:.3}] \
                                 (version {rv}) while the port key named {:?}",
                                w.gw(),
                                mine.map_or("an allocation never seen claiming", String::as_str),
                                if *throughout { "throughout" } else { "within" },
                                others
                            ));
                            holders_max.insert(key.clone(), 2);
                        } else if during.iter().all(Option::is_none) {
                            r.unclaimed_listener_spans += 1;
                        }
                    }
                }
            }
        }
        for n in holders_max.values() {
            *r.max_holders.entry(*n).or_default() += 1;
        }
        r
    }
}

/// The holders a port key had at some instant of [a, b]: the one live at `a` and every later write up to b.
fn holders_during(ops: &[KvOp], a: f64, b: f64) -> Vec<Option<String>> {
    let mut sorted: Vec<&KvOp> = ops.iter().collect();
    sorted.sort_by_key(|o| o.rev);
    let at_a = sorted
        .iter()
        .rev()
        .find(|o| o.at <= a)
        .and_then(|o| o.holder.clone());
    let mut out: Vec<Option<String>> = vec![at_a];
    for o in sorted.iter().filter(|o| o.at > a && o.at <= b) {
        if !out.contains(&o.holder) {
            out.push(o.holder.clone());
        }
    }
    out
}

/// The watches and probes of one run; [`History::finish`] stops them and checks.
pub struct History {
    log: Arc<Mutex<Log>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn listeners_of(gw: &Gateway) -> BTreeMap<String, u16> {
    gw.spec
        .listeners
        .iter()
        .map(|l| (l.name.clone(), u16::try_from(l.port).unwrap_or(0)))
        .collect()
}

fn rv_of(gw: &Gateway) -> u64 {
    gw.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl History {
    /// Starts watching `bucket` (the port keys and records of each resource manager) and each Gateway.
    pub async fn start(env: &Env, bucket: &str, watched: Vec<Watched>) -> History {
        let log = Arc::new(Mutex::new(Log::new(watched.clone())));
        let mut tasks = Vec::new();
        let nats = env.nats().await;
        for w in &watched {
            tasks.push(tokio::spawn(watch_kv(
                nats.clone(),
                bucket.to_owned(),
                format!("*.{}.>", w.rm),
                log.clone(),
            )));
            let client = env.kube().await;
            let api: Api<Gateway> = Api::namespaced(client, &w.gateway_ns);
            tasks.push(tokio::spawn(watch_gateway(
                api.clone(),
                w.clone(),
                log.clone(),
            )));
            tasks.push(tokio::spawn(probe_gateway(api, w.clone(), log.clone())));
        }
        History { log, tasks }
    }

    /// Stops watching and checks what was recorded.
    pub async fn finish(self) -> Report {
        // Let the watches deliver what the last writes produced.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for t in &self.tasks {
            t.abort();
        }
        self.log.lock().unwrap().check()
    }
}

impl Drop for History {
    /// A run that fails for another reason still shows what the checker recorded up to then.
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if std::thread::panicking()
            && let Ok(log) = self.log.lock()
        {
            println!("history of the failed run: {}", log.check().summary());
        }
    }
}

/// Follows the bucket's keys matching `filter` from now on, resuming after the last revision seen when the
/// server goes away.
async fn watch_kv(nats: async_nats::Client, bucket: String, filter: String, log: Arc<Mutex<Log>>) {
    let js = async_nats::jetstream::new(nats);
    let mut next: Option<u64> = None;
    loop {
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let watch = match next {
            Some(rev) => kv.watch_from_revision(&filter, rev).await,
            None => kv.watch_with_history(&filter).await,
        };
        if let Ok(mut w) = watch {
            while let Some(Ok(e)) = w.next().await {
                let at = e.created.unix_timestamp_nanos() as f64 / 1e9;
                let value = match e.operation {
                    async_nats::jetstream::kv::Operation::Put => Some(&e.value[..]),
                    _ => None,
                };
                log.lock().unwrap().kv(&e.key, e.revision, at, value);
                next = Some(e.revision + 1);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Resuming from the first revision would replay what was seen: start after it.
        if next.is_none() {
            next = Some(1);
        }
    }
}

async fn watch_gateway(api: Api<Gateway>, w: Watched, log: Arc<Mutex<Log>>) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={}", w.gateway));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let gw = w.gw();
    let mut restarted = true;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => restarted = true,
            Ok(watcher::Event::InitApply(g) | watcher::Event::Apply(g)) => {
                log.lock()
                    .unwrap()
                    .watched(&gw, rv_of(&g), now(), listeners_of(&g), restarted);
                restarted = false;
            }
            Ok(watcher::Event::InitDone | watcher::Event::Delete(_)) => {}
            Err(_) => restarted = true,
        }
    }
}

async fn probe_gateway(api: Api<Gateway>, w: Watched, log: Arc<Mutex<Log>>) {
    let gw = w.gw();
    loop {
        let from = now();
        if let Ok(g) = api.get(&w.gateway).await {
            let to = now();
            log.lock()
                .unwrap()
                .probed(&gw, rv_of(&g), from, to, listeners_of(&g));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}
