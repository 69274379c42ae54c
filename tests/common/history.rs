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
//!
//! A resource manager in `listener_mode: listenerset` writes its listeners into ListenerSets (one per
//! allocation) attached to its Gateway instead: for it the checker watches and lists the ListenerSets of the
//! Gateway's namespace, and a version is that of the whole collection of sets attached to the Gateway, keyed
//! by the resourceVersion of the change that made it (resourceVersions are one sequence across objects).
//! A list at resourceVersion r pins the collection in time as a read of the Gateway pins the Gateway. The
//! same violations count: two listeners on one port at once (across sets), a listener standing while the
//! port key names another allocation. A relist (after the watch lost its place) shows the collection at
//! some later resourceVersion than its newest object's; every set it shows stood unchanged from that
//! object's version on, so its listeners stand from there, and the version it makes is never taken as
//! followed without a gap.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::listenersets::ListenerSet;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};

use super::Env;

/// How often each Gateway (or its namespace's ListenerSets) is read to pin the watch's versions in time.
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

/// Where a watched resource manager writes its listeners (its `listener_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenerMode {
    /// On the Gateway itself.
    #[default]
    Gateway,
    /// In ListenerSets attached to the Gateway, made in the Gateway's namespace.
    ListenerSet,
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
    /// ListenerSet mode: the version the watch delivered right before this one, with no change of the
    /// Gateway's sets missed between (the version before it in rv order only when nothing came between).
    after: Option<u64>,
    /// ListenerSet mode: listeners of one name in more than one set, with their ports.
    doubled: Vec<(String, Vec<u16>)>,
}

/// Listener name -> port.
type Listeners = BTreeMap<String, u16>;
/// Listener names found in more than one ListenerSet, with their ports.
type Doubled = Vec<(String, Vec<u16>)>;
/// What a relist shows: each set with its resourceVersion and its listeners if attached to the Gateway.
pub type Listed = Vec<(String, u64, Option<Listeners>)>;

/// A consistent read of a Gateway: resourceVersion `rv` was current at some instant in [from, to].
#[derive(Debug, Clone)]
struct Probe {
    rv: u64,
    from: f64,
    to: f64,
    /// ListenerSet mode: what the list showed (the listeners of the sets attached to the Gateway, and
    /// names in more than one set); a list's resourceVersion need not be a version of the collection.
    sets: Option<(Listeners, Doubled)>,
}

#[derive(Debug, Default)]
struct GatewayLog {
    versions: BTreeMap<u64, Version>,
    probes: Vec<Probe>,
    /// The last version the current watch session delivered; `None` after a restart or error.
    last_watched: Option<u64>,
    relists: usize,
    /// ListenerSet mode: the sets attached to the Gateway as the watch has them, name -> listeners.
    sets: BTreeMap<String, BTreeMap<String, u16>>,
    /// ListenerSet mode: every set ever seen attached to the Gateway.
    sets_seen: BTreeSet<String>,
    /// ListenerSet mode: the watch failed and has not delivered since.
    broken: bool,
}

/// Everything recorded during a run. Fed by [`History::start`], or by hand to test the checker.
#[derive(Debug, Default)]
pub struct Log {
    watched: Vec<Watched>,
    /// Gateway (`namespace/name`) -> where its resource manager writes listeners.
    modes: BTreeMap<String, ListenerMode>,
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
    /// The record written most often, and the phases it was written with, in order.
    pub busiest_record: Option<(String, Vec<String>)>,
    /// Listener intervals proven to stand while the port key was free (a late apply; the reconciler's).
    pub unclaimed_listener_spans: usize,
    /// Listener instants the bounds pinned and checked against KV.
    pub pinned: usize,
    /// max concurrent holders -> number of ports.
    pub max_holders: BTreeMap<usize, usize>,
    /// ListenerSet mode: ListenerSets seen attached to a watched Gateway, and versions of those collections
    /// (counted in `versions` too).
    pub listener_sets: usize,
    pub set_versions: usize,
    /// For each port with a violation: its port key's writes and the listeners on it as the watch and the
    /// reads showed them, in order (to tell what happened).
    pub details: Vec<String>,
    /// (Gateway, port) of each violation.
    flagged: BTreeSet<(String, u16)>,
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
        if self.listener_sets > 0 {
            let _ = write!(
                s,
                " ({} of the versions are of ListenerSet collections, over {} ListenerSets)",
                self.set_versions, self.listener_sets
            );
        }
        if let Some((key, phases)) = &self.busiest_record {
            let _ = write!(
                s,
                "; the busiest record, {key}, was written {} times: {}",
                phases.len(),
                phases.join(" ")
            );
        }
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

/// The listeners of `sets` together, and the names found in more than one set.
fn union<'a>(sets: impl IntoIterator<Item = &'a BTreeMap<String, u16>>) -> (Listeners, Doubled) {
    let mut all: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for set in sets {
        for (n, p) in set {
            all.entry(n.clone()).or_default().push(*p);
        }
    }
    let doubled = all
        .iter()
        .filter(|(_, ps)| ps.len() > 1)
        .map(|(n, ps)| (n.clone(), ps.clone()))
        .collect();
    let listeners = all.into_iter().map(|(n, ps)| (n, ps[0])).collect();
    (listeners, doubled)
}

impl Log {
    /// Every resource manager in `listener_mode: gateway`.
    pub fn new(watched: Vec<Watched>) -> Log {
        Log::with_modes(
            watched
                .into_iter()
                .map(|w| (w, ListenerMode::Gateway))
                .collect(),
        )
    }

    /// Each resource manager with where it writes its listeners.
    pub fn with_modes(watched: Vec<(Watched, ListenerMode)>) -> Log {
        let gateways = watched
            .iter()
            .map(|(w, _)| (w.gw(), GatewayLog::default()))
            .collect();
        let modes = watched.iter().map(|(w, m)| (w.gw(), *m)).collect();
        Log {
            watched: watched.into_iter().map(|(w, _)| w).collect(),
            modes,
            gateways,
            ..Default::default()
        }
    }

    fn mode(&self, gw: &str) -> ListenerMode {
        self.modes.get(gw).copied().unwrap_or_default()
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
            // The phase, and the ports it holds: `exposing[40001]`.
            let phase = value
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .and_then(|v| {
                    let ports: Vec<String> = v["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|b| b["gateway_port"].as_u64())
                        .map(|p| p.to_string())
                        .collect();
                    v["phase"]
                        .as_str()
                        .map(|p| format!("{p}[{}]", ports.join(",")))
                })
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
        g.probes.push(Probe {
            rv,
            from,
            to,
            sets: None,
        });
        g.versions.entry(rv).or_default().listeners = listeners;
    }

    /// ListenerSet mode: the watch of the Gateway's namespace delivered, at `seen`, a change of set `set`
    /// with resourceVersion `rv`: its listeners when it is attached to Gateway `gw`, `None` when it was
    /// deleted or is not attached. A change of a set that neither was nor is attached is no version.
    pub fn set_watched(
        &mut self,
        gw: &str,
        set: &str,
        rv: u64,
        seen: f64,
        listeners: Option<BTreeMap<String, u16>>,
    ) {
        let g = self.gateways.entry(gw.to_owned()).or_default();
        let was = match listeners {
            Some(l) => {
                g.sets_seen.insert(set.to_owned());
                g.sets.insert(set.to_owned(), l)
            }
            None => g.sets.remove(set),
        };
        if was.is_none() && !g.sets.contains_key(set) {
            return;
        }
        if std::mem::take(&mut g.broken) {
            g.relists += 1;
        }
        let (listeners, doubled) = union(g.sets.values());
        let after = g.last_watched.filter(|last| *last < rv);
        let v = g.versions.entry(rv).or_default();
        if v.seen.is_none() {
            v.seen = Some(seen);
            v.after = after;
        }
        v.listeners = listeners;
        v.doubled = doubled;
        g.last_watched = Some(rv);
    }

    /// ListenerSet mode: the watch listed the Gateway's namespace (anew, after it lost its place) and had
    /// it all by `seen`: each set with its resourceVersion and its listeners (`None` when not attached to
    /// `gw`). The collection it shows is that of some resourceVersion at least the newest set's, which
    /// keys the version it makes; nothing is taken as delivered right before it.
    pub fn sets_relisted(&mut self, gw: &str, seen: f64, sets: Listed) {
        let g = self.gateways.entry(gw.to_owned()).or_default();
        g.broken = false;
        g.relists += 1;
        let rv = sets.iter().map(|(_, rv, _)| *rv).max().unwrap_or(0);
        g.sets = sets
            .into_iter()
            .filter_map(|(name, _, l)| l.map(|l| (name, l)))
            .collect();
        g.sets_seen.extend(g.sets.keys().cloned());
        let (listeners, doubled) = union(g.sets.values());
        let v = g.versions.entry(rv).or_default();
        if v.seen.is_none() {
            v.seen = Some(seen);
        }
        // A version the earlier watch delivered keeps its place after its predecessor: what the list shows
        // of it stood throughout, as the sets it lists were not changed since.
        v.listeners = listeners;
        v.doubled = doubled;
        g.last_watched = Some(rv);
    }

    /// ListenerSet mode: the watch failed; what it delivers next does not follow what it delivered last.
    pub fn sets_watch_failed(&mut self, gw: &str) {
        let g = self.gateways.entry(gw.to_owned()).or_default();
        g.last_watched = None;
        g.broken = true;
    }

    /// ListenerSet mode: a consistent list of the Gateway's namespace at resourceVersion `rv`, between
    /// `from` and `to`: the listeners of each set attached to `gw`.
    pub fn sets_probed(
        &mut self,
        gw: &str,
        rv: u64,
        from: f64,
        to: f64,
        sets: Vec<(String, BTreeMap<String, u16>)>,
    ) {
        let g = self.gateways.entry(gw.to_owned()).or_default();
        g.sets_seen.extend(sets.iter().map(|(n, _)| n.clone()));
        let (listeners, doubled) = union(sets.iter().map(|(_, l)| l));
        g.probes.push(Probe {
            rv,
            from,
            to,
            sets: Some((listeners, doubled)),
        });
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
        r.busiest_record = self
            .records
            .iter()
            .max_by_key(|(_, w)| w.len())
            .map(|(k, w)| (k.clone(), w.iter().map(|(_, p)| p.clone()).collect()));
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
            let sets = self.mode(&w.gw()) == ListenerMode::ListenerSet;
            // How this Gateway's listeners are named in a violation.
            let what = if sets {
                format!("ListenerSets of Gateway {}", w.gw())
            } else {
                format!("Gateway {}", w.gw())
            };
            r.relists += g.relists;
            r.probes += g.probes.len();
            r.versions += g.versions.len();
            if sets {
                r.set_versions += g.versions.len();
                r.listener_sets += g.sets_seen.len();
            }
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
            // Whether the watch delivered version `next` right after version `rv`, nothing missed between.
            let follows = |rv: u64, next: u64| {
                let n = &g.versions[&next];
                if sets { n.after == Some(rv) } else { n.follows }
            };
            let mut prev: Option<&Version> = None;
            for (i, rv) in rvs.iter().enumerate() {
                let v = &g.versions[rv];
                // Listener changes, between versions the watch delivered one after the other.
                let before = if sets {
                    v.after.and_then(|a| g.versions.get(&a))
                } else {
                    prev.filter(|_| v.follows)
                };
                if let Some(p) = before {
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
                two_on_a_port(&mut r, w, &what, "version", *rv, &v.listeners, &v.doubled);
                // Where this version provably stood: throughout [began_before(rv), began_after(next)] when
                // the watch delivered the next version right after it, and somewhere in each probe that
                // read it (of the Gateway: a list's resourceVersion is not one of a collection's versions,
                // so in ListenerSet mode each list is pinned on its own below).
                let mut spans: Vec<(f64, f64, bool)> = Vec::new();
                if let Some(next) = rvs.get(i + 1)
                    && follows(*rv, *next)
                {
                    let (a, b) = (began_before(*rv), began_after(*next));
                    if a <= b {
                        spans.push((a, b, true));
                    }
                }
                if !sets {
                    for p in &probes[first_at(*rv)..first_at(*rv + 1)] {
                        spans.push((p.from, p.to, false));
                    }
                }
                self.pin(
                    &mut r,
                    &mut holders_max,
                    w,
                    &what,
                    *rv,
                    &v.listeners,
                    &spans,
                    &listener_holder,
                );
            }
            // ListenerSet mode: what each list showed stood somewhere within it.
            for p in &probes {
                let Some((listeners, doubled)) = &p.sets else {
                    continue;
                };
                two_on_a_port(&mut r, w, &what, "list at", p.rv, listeners, doubled);
                self.pin(
                    &mut r,
                    &mut holders_max,
                    w,
                    &what,
                    p.rv,
                    listeners,
                    &[(p.from, p.to, false)],
                    &listener_holder,
                );
            }
        }
        for (gw, port) in &r.flagged {
            if let Some(w) = self.watched.iter().find(|w| w.gw() == *gw) {
                r.details.push(self.story(w, *port));
            }
        }
        for n in holders_max.values() {
            *r.max_holders.entry(*n).or_default() += 1;
        }
        r
    }
    /// What happened on `port` of `w`'s Gateway: the port key's writes, and each version and read whose
    /// listeners on the port differ from the one before, in resourceVersion order.
    fn story(&self, w: &Watched, port: u16) -> String {
        let key = itg::names::port_key(&w.rm, &w.gateway_ns, &w.gateway, port);
        let mut s = format!("{} port {port}:", w.gw());
        let mut ops = self.ports.get(&key).cloned().unwrap_or_default();
        ops.sort_by_key(|o| o.rev);
        for o in &ops {
            let _ = write!(
                s,
                "\n  kv rev {} at {:.3}: {}",
                o.rev,
                o.at,
                o.holder.as_deref().unwrap_or("released")
            );
        }
        let Some(g) = self.gateways.get(&w.gw()) else {
            return s;
        };
        let on = |l: &Listeners| -> Vec<String> {
            l.iter()
                .filter(|(_, p)| **p == port)
                .map(|(n, _)| n.clone())
                .collect()
        };
        let mut rows: Vec<(u64, String, Vec<String>)> = g
            .versions
            .iter()
            .map(|(rv, v)| {
                let how = format!(
                    "version seen at {}{}",
                    v.seen.map_or("-".into(), |t| format!("{t:.3}")),
                    match (v.after, v.follows) {
                        (Some(a), _) => format!(" after {a}"),
                        (None, true) => " right after the one before".into(),
                        (None, false) => String::new(),
                    }
                );
                (*rv, how, on(&v.listeners))
            })
            .collect();
        for p in &g.probes {
            let listeners = match &p.sets {
                Some((l, _)) => on(l),
                None => g
                    .versions
                    .get(&p.rv)
                    .map(|v| on(&v.listeners))
                    .unwrap_or_default(),
            };
            rows.push((
                p.rv,
                format!("read in [{:.3}, {:.3}]", p.from, p.to),
                listeners,
            ));
        }
        rows.sort_by_key(|(rv, _, _)| *rv);
        let mut last: Option<Vec<String>> = None;
        for (rv, how, names) in rows {
            if last.as_ref() != Some(&names) {
                let _ = write!(s, "\n  rv {rv} {how}: listeners on the port {names:?}");
                last = Some(names);
            }
        }
        s
    }

    /// Checks each owned listener of `listeners` (what `what` showed at `rv`) against the port key over each
    /// span where it provably stood: throughout the span, or somewhere within it.
    #[allow(clippy::too_many_arguments)]
    fn pin(
        &self,
        r: &mut Report,
        holders_max: &mut BTreeMap<String, usize>,
        w: &Watched,
        what: &str,
        rv: u64,
        listeners: &BTreeMap<String, u16>,
        spans: &[(f64, f64, bool)],
        listener_holder: &BTreeMap<String, String>,
    ) {
        for (name, port) in listeners
            .iter()
            .filter(|(n, _)| itg::names::is_owned_listener_name(n))
        {
            let key = itg::names::port_key(&w.rm, &w.gateway_ns, &w.gateway, *port);
            let mine = listener_holder.get(name);
            let ops = self.ports.get(&key).map(Vec::as_slice).unwrap_or_default();
            for (a, b, throughout) in spans {
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
                        "{what} port {port}: listener {name} of {} stood {} [{a:.3}, {b:.3}] \
                         (version {rv}) while the port key named {:?}",
                        mine.map_or("an allocation never seen claiming", String::as_str),
                        if *throughout { "throughout" } else { "within" },
                        others
                    ));
                    holders_max.insert(key.clone(), 2);
                    r.flagged.insert((w.gw(), *port));
                } else if during.iter().all(Option::is_none) {
                    r.unclaimed_listener_spans += 1;
                }
            }
        }
    }
}

/// Two listeners on one port in what `what` showed at `rv`, or one name in two ListenerSets.
fn two_on_a_port(
    r: &mut Report,
    w: &Watched,
    what: &str,
    at: &str,
    rv: u64,
    listeners: &BTreeMap<String, u16>,
    doubled: &[(String, Vec<u16>)],
) {
    let mut by_port: BTreeMap<u16, Vec<&String>> = BTreeMap::new();
    for (n, p) in listeners {
        by_port.entry(*p).or_default().push(n);
    }
    for (p, ns) in by_port.iter().filter(|(_, ns)| ns.len() > 1) {
        r.violations
            .push(format!("{what} {at} {rv}: listeners {ns:?} on port {p}"));
        r.flagged.insert((w.gw(), *p));
    }
    for (n, ps) in doubled {
        r.violations.push(format!(
            "{what} {at} {rv}: listener {n} in more than one ListenerSet, on ports {ps:?}"
        ));
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
        History::start_with_modes(
            env,
            bucket,
            watched
                .into_iter()
                .map(|w| (w, ListenerMode::Gateway))
                .collect(),
        )
        .await
    }

    /// As [`History::start`], with where each resource manager writes its listeners: the Gateway, or
    /// ListenerSets in the Gateway's namespace (then those are watched and listed instead).
    pub async fn start_with_modes(
        env: &Env,
        bucket: &str,
        watched: Vec<(Watched, ListenerMode)>,
    ) -> History {
        let log = Arc::new(Mutex::new(Log::with_modes(watched.clone())));
        let mut tasks = Vec::new();
        let nats = env.nats().await;
        for (w, mode) in &watched {
            tasks.push(tokio::spawn(watch_kv(
                nats.clone(),
                bucket.to_owned(),
                format!("*.{}.>", w.rm),
                log.clone(),
            )));
            let client = env.kube().await;
            if *mode == ListenerMode::ListenerSet {
                let api: Api<ListenerSet> = Api::namespaced(client, &w.gateway_ns);
                tasks.push(tokio::spawn(watch_sets(
                    api.clone(),
                    w.clone(),
                    log.clone(),
                )));
                tasks.push(tokio::spawn(probe_sets(api, w.clone(), log.clone())));
                continue;
            }
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

/// The listeners of `set` if it is attached to `w`'s Gateway.
fn attached_listeners(set: &ListenerSet, w: &Watched) -> Option<BTreeMap<String, u16>> {
    let p = &set.spec.parent_ref;
    let set_ns = set.metadata.namespace.as_deref().unwrap_or(&w.gateway_ns);
    let attached = p.name == w.gateway
        && p.namespace.as_deref().unwrap_or(set_ns) == w.gateway_ns
        && p.kind.as_deref().unwrap_or("Gateway") == "Gateway";
    attached.then(|| {
        set.spec
            .listeners
            .iter()
            .map(|l| (l.name.clone(), u16::try_from(l.port).unwrap_or(0)))
            .collect()
    })
}

fn set_rv(set: &ListenerSet) -> u64 {
    set.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Follows every ListenerSet of the Gateway's namespace; a relist is handed over whole, once complete.
async fn watch_sets(api: Api<ListenerSet>, w: Watched, log: Arc<Mutex<Log>>) {
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let gw = w.gw();
    let mut listing: Option<Listed> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => listing = Some(Vec::new()),
            Ok(watcher::Event::InitApply(s)) => {
                if let Some(l) = listing.as_mut() {
                    l.push((
                        s.metadata.name.clone().unwrap_or_default(),
                        set_rv(&s),
                        attached_listeners(&s, &w),
                    ));
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(l) = listing.take() {
                    log.lock().unwrap().sets_relisted(&gw, now(), l);
                }
            }
            Ok(watcher::Event::Apply(s)) => {
                let name = s.metadata.name.clone().unwrap_or_default();
                log.lock().unwrap().set_watched(
                    &gw,
                    &name,
                    set_rv(&s),
                    now(),
                    attached_listeners(&s, &w),
                );
            }
            Ok(watcher::Event::Delete(s)) => {
                let name = s.metadata.name.clone().unwrap_or_default();
                log.lock()
                    .unwrap()
                    .set_watched(&gw, &name, set_rv(&s), now(), None);
            }
            Err(_) => {
                listing = None;
                log.lock().unwrap().sets_watch_failed(&gw);
            }
        }
    }
}

/// Lists the ListenerSets of the Gateway's namespace every [`PROBE_EVERY`] (a consistent read: no
/// resourceVersion asked).
async fn probe_sets(api: Api<ListenerSet>, w: Watched, log: Arc<Mutex<Log>>) {
    let gw = w.gw();
    loop {
        let from = now();
        if let Ok(list) = api.list(&ListParams::default()).await {
            let to = now();
            let rv = list
                .metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let sets = list
                .items
                .iter()
                .filter_map(|s| {
                    attached_listeners(s, &w)
                        .map(|l| (s.metadata.name.clone().unwrap_or_default(), l))
                })
                .collect();
            log.lock().unwrap().sets_probed(&gw, rv, from, to, sets);
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}
