//! The world the workers run against: a KV bucket with JetStream's revisions and delete markers, Gateways
//! with listeners (on the Gateway, or in ListenerSets), Services and TCPRoutes, a controller whose status
//! lags or reports conflicts, a data plane that may refuse, the reply stream and the events stream. Every
//! seam call is a scheduling point; every change is checked against the promises at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use itg::clock::{self, Instant};
use itg::cluster::{
    ClassStatus, Cluster, ClusterError, Exposure, GatewayView, Inventory, ObjectKind, OwnedObject,
};
use itg::contract::{EventKind, Reply};
use itg::names;
use itg::probe::{DataPlane, Reach};
use itg::readiness::Verdict;
use itg::sink::{DeadLetter, Replier, SinkError};
use itg::state::Binding;
use itg::store::{Entry, KeyState, Outcome, Store, StoreError};
use tokio::sync::{Notify, watch};

use crate::faults::{Params, ReplyFail};
use crate::sched::Sched;

pub const RM: &str = "rm";
pub const NS: &str = "team-a";
pub const GW_NS: &str = "gw";
/// A port outside the range where the operator's placeholder listener stands.
pub const PLACEHOLDER_PORT: u16 = 39_000;

/// One listener on a Gateway (or in a ListenerSet attached to it).
#[derive(Debug, Clone)]
pub struct Listener {
    pub port: u16,
    /// The allocation it was applied for; `None` for a foreign one.
    pub owner: Option<String>,
    /// When the controller reports it programmed.
    pub programmed_at: Instant,
    /// When it was first applied on this port: the older of two conflicting listeners wins.
    pub since: Instant,
    /// Whether a foreign listener is hidden from the worker's view (a ListenerSet its watch does not show).
    pub hidden: bool,
}

/// One Gateway of the pool.
#[derive(Debug, Default)]
pub struct Gw {
    pub ip: String,
    pub name: String,
    pub listeners: BTreeMap<String, Listener>,
    /// The controller's status describes an older generation until then.
    pub stale_until: Option<Instant>,
}

/// A Service or a TCPRoute (or, in `listenerset` mode, a ListenerSet), with what its delete is
/// conditional on.
#[derive(Debug, Clone)]
pub struct Obj {
    pub uid: u64,
    pub rv: u64,
    pub created: i64,
    /// The Gateway of the pool it names, for a route.
    pub at: usize,
}

/// One message of the events stream.
#[derive(Debug, Clone)]
pub struct Msg {
    pub seq: u64,
    pub kind: EventKind,
    pub alloc: String,
    pub payload: Bytes,
    pub delivered: i64,
    pub state: MsgState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MsgState {
    /// Deliverable from then on.
    Ready(Instant),
    /// Delivered to this worker (its generation), not yet acknowledged.
    InFlight(usize, u64),
    /// Acknowledged or terminated.
    Done,
    /// Its last delivery's acknowledgement never came: JetStream will not deliver it again.
    Lost,
}

/// A reply as stored in the replies stream.
#[derive(Debug, Clone)]
pub struct Stored {
    #[allow(dead_code)]
    pub at_ms: u64,
    pub alloc: String,
    pub reply: Reply,
}

#[derive(Default)]
pub struct State {
    pub kv: BTreeMap<String, (Bytes, u64)>,
    pub kv_rev: u64,
    pub deleted: BTreeMap<String, SystemTime>,
    pub gws: Vec<Gw>,
    pub services: BTreeMap<(String, String), Obj>,
    pub routes: BTreeMap<(String, String), Obj>,
    /// ListenerSets by name: the Gateway they attach to.
    pub sets: BTreeMap<String, Obj>,
    pub uid: u64,
    pub msgs: Vec<Msg>,
    pub dedup: BTreeSet<String>,
    pub replies: Vec<Stored>,
    pub reply_ids: BTreeSet<String>,
    pub reply_tries: BTreeMap<String, u32>,
    pub dead_letters: u64,
    /// Allocations whose ended has been published, and when.
    pub ended_published: BTreeMap<String, u64>,
    pub violations: Vec<String>,
}

/// The world, shared by every task of one simulation.
pub struct World {
    pub sched: Sched,
    pub p: Params,
    pub st: Mutex<State>,
    ticks: Vec<watch::Sender<u64>>,
    pub arrivals: Notify,
    pub t0: Instant,
}

fn ms_since(t0: Instant) -> u64 {
    u64::try_from((clock::instant() - t0).as_millis()).unwrap_or(u64::MAX)
}

impl World {
    pub fn new(p: Params, sched: Sched) -> Arc<World> {
        let mut st = State::default();
        for at in 0..p.pool {
            st.gws.push(Gw {
                ip: format!("203.0.113.{}", 10 + at),
                name: format!("itg-{at}"),
                ..Gw::default()
            });
        }
        let now = clock::instant();
        let far = now;
        for gw in &mut st.gws {
            gw.listeners.insert(
                "placeholder".into(),
                Listener {
                    port: PLACEHOLDER_PORT,
                    owner: None,
                    programmed_at: far,
                    since: far,
                    hidden: false,
                },
            );
        }
        for (i, port) in p.foreign_ports.iter().enumerate() {
            let at = i % p.pool;
            st.gws[at].listeners.insert(
                format!("operator-{i}"),
                Listener {
                    port: *port,
                    owner: None,
                    programmed_at: far,
                    since: far,
                    hidden: p.listenerset && p.foreign_hidden,
                },
            );
        }
        let ticks = (0..p.pool).map(|_| watch::channel(0).0).collect();
        Arc::new(World {
            sched,
            p,
            st: Mutex::new(st),
            ticks,
            arrivals: Notify::new(),
            t0: now,
        })
    }

    pub fn now_ms(&self) -> u64 {
        ms_since(self.t0)
    }

    fn secs(&self) -> Duration {
        clock::instant() - self.t0
    }

    /// A change on Gateway `at`: its status goes stale for a while, and the watches tick now and when the
    /// controller catches up.
    fn changed(self: &Arc<Self>, st: &mut State, at: usize) -> Duration {
        let lag = Duration::from_millis(self.sched.with_rng(|r| r.below(self.p.lag_max_ms + 1)));
        let until = clock::instant() + lag;
        let gw = &mut st.gws[at];
        if self.p.stale_status {
            gw.stale_until = Some(gw.stale_until.map_or(until, |u| u.max(until)));
        }
        self.ticks[at].send_modify(|n| *n += 1);
        let (world, at) = (Arc::clone(self), at);
        tokio::spawn(async move {
            tokio::time::sleep(lag + Duration::from_millis(1)).await;
            world.ticks[at].send_modify(|n| *n += 1);
        });
        lag
    }

    fn next_uid(st: &mut State) -> u64 {
        st.uid += 1;
        st.uid
    }

    /// Runs the checks that hold after every step, and keeps what they find.
    pub fn check(&self, st: &mut State, after: &str) {
        let found = crate::checker::always(self, st);
        for v in found {
            let line = format!("t={}ms after {after}: {v}", self.now_ms());
            if !st.violations.contains(&line) {
                self.sched.note(|| format!("VIOLATION {line}"));
                st.violations.push(line);
            }
        }
    }

    fn store_fails(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        if self.p.store_err > 0.0 && self.sched.with_rng(|r| r.chance(self.p.store_err)) {
            self.sched.note(|| format!("store {op} {key} fails"));
            return Err(StoreError {
                bucket: "sim".into(),
                op,
                key: key.to_owned(),
                message: "timed out".into(),
            });
        }
        Ok(())
    }

    /// Publishes an event to the stream (deduplicated by `msg_id`, as JetStream does within its window).
    pub fn publish_event(
        &self,
        kind: EventKind,
        alloc: &str,
        payload: Bytes,
        msg_id: Option<String>,
    ) {
        let mut st = self.st.lock().unwrap();
        if let Some(id) = msg_id
            && !st.dedup.insert(id)
        {
            return;
        }
        let seq = st.msgs.len() as u64 + 1;
        if kind == EventKind::Ended {
            let now = self.now_ms();
            st.ended_published.entry(alloc.to_owned()).or_insert(now);
        }
        self.sched
            .note(|| format!("publish {} #{seq} {alloc}", kind.as_str()));
        st.msgs.push(Msg {
            seq,
            kind,
            alloc: alloc.to_owned(),
            payload,
            delivered: 0,
            state: MsgState::Ready(clock::instant()),
        });
        drop(st);
        self.arrivals.notify_waiters();
    }

    /// The next deliverable message for worker `w` (generation `gen`), marked in flight; or when the
    /// next one becomes deliverable.
    pub fn take(&self, w: usize, gen_: u64) -> Result<Msg, Option<Instant>> {
        let now = clock::instant();
        let mut st = self.st.lock().unwrap();
        let mut next: Option<Instant> = None;
        for m in &mut st.msgs {
            if let MsgState::Ready(at) = m.state {
                if at <= now {
                    m.delivered += 1;
                    m.state = MsgState::InFlight(w, gen_);
                    return Ok(m.clone());
                }
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Err(next)
    }

    /// Settles message `seq` as the consumer decided: done, or deliverable again after `delay`.
    pub fn settle(&self, seq: u64, again: Option<Duration>) {
        let mut st = self.st.lock().unwrap();
        let m = &mut st.msgs[usize::try_from(seq - 1).unwrap()];
        m.state = match again {
            None => MsgState::Done,
            // Whole milliseconds, as the scheduler's waits (sched.rs says why).
            Some(d) => MsgState::Ready(
                clock::instant()
                    + Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
        };
        drop(st);
        self.arrivals.notify_waiters();
    }

    /// Worker `w` died: what it had in flight comes back after the ack wait, unless that was the last
    /// delivery.
    pub fn crashed(&self, w: usize) {
        let ack_wait = self.p.ack_wait;
        let max = self.p.max_deliver;
        let mut st = self.st.lock().unwrap();
        for m in &mut st.msgs {
            if matches!(m.state, MsgState::InFlight(x, _) if x == w) {
                m.state = if max > 0 && m.delivered >= max {
                    MsgState::Lost
                } else {
                    MsgState::Ready(clock::instant() + ack_wait)
                };
            }
        }
    }

    /// Whether every published event is settled: acknowledged, terminated or lost.
    pub fn settled(&self) -> bool {
        let st = self.st.lock().unwrap();
        st.msgs
            .iter()
            .all(|m| matches!(m.state, MsgState::Done | MsgState::Lost))
    }

    /// The KV bucket is lost: everything in it is gone, and its revisions start again.
    pub fn lose_bucket(&self) {
        let mut st = self.st.lock().unwrap();
        st.kv.clear();
        st.deleted.clear();
        st.kv_rev = 0;
        self.sched.note(|| "BUCKET LOST".into());
    }

    /// Every event published so far, as a replay reads the stream.
    pub fn stream(&self) -> Vec<itg::replay::StoredEvent> {
        let st = self.st.lock().unwrap();
        st.msgs
            .iter()
            .map(|m| itg::replay::StoredEvent {
                sequence: m.seq,
                subject: itg::contract::event_subject(RM, m.kind),
                payload: m.payload.clone(),
            })
            .collect()
    }

    fn refused(&self, at: usize, port: u16) -> bool {
        let now = self.secs();
        now < self.p.refuse_until
            && (self.p.refuse_gateway == Some(at) || self.p.refuse_ports.contains(&(at, port)))
    }

    /// Whether the data plane of Gateway `at` serves `port` now, and for whom.
    pub fn serves(&self, st: &State, at: usize, port: u16) -> Reach {
        if self.refused(at, port) {
            return Reach::Refused;
        }
        let on: Vec<_> = st.gws[at]
            .listeners
            .iter()
            .filter(|(_, l)| l.port == port)
            .collect();
        match on.first() {
            None => Reach::Refused,
            Some((name, _)) => {
                if st.routes.contains_key(&(NS.to_owned(), (*name).clone())) {
                    Reach::Accepted
                } else {
                    Reach::Closed
                }
            }
        }
    }
}

/// The store seam over the world's bucket.
#[derive(Clone)]
pub struct SimStore(pub Arc<World>);

impl Store for SimStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.0.sched.point(|| format!("kv get {key}")).await;
        self.0.store_fails("get", key)?;
        let st = self.0.st.lock().unwrap();
        Ok(st.kv.get(key).map(|(v, r)| Entry {
            value: v.clone(),
            revision: *r,
        }))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<Outcome, StoreError> {
        self.0.sched.point(|| format!("kv create {key}")).await;
        self.0.store_fails("create", key)?;
        let mut st = self.0.st.lock().unwrap();
        if st.kv.contains_key(key) {
            return Ok(Outcome::Conflict);
        }
        st.kv_rev += 1;
        let rev = st.kv_rev;
        st.kv.insert(key.to_owned(), (value, rev));
        st.deleted.remove(key);
        self.0.check(&mut st, &format!("kv create {key}"));
        Ok(Outcome::Written(rev))
    }

    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<Outcome, StoreError> {
        self.0
            .sched
            .point(|| format!("kv update {key}@{revision}"))
            .await;
        self.0.store_fails("update", key)?;
        let mut st = self.0.st.lock().unwrap();
        if st.kv.get(key).map(|e| e.1) != Some(revision) {
            return Ok(Outcome::Conflict);
        }
        st.kv_rev += 1;
        let rev = st.kv_rev;
        st.kv.insert(key.to_owned(), (value, rev));
        self.0.check(&mut st, &format!("kv update {key}"));
        Ok(Outcome::Written(rev))
    }

    async fn delete(&self, key: &str, revision: u64) -> Result<Outcome, StoreError> {
        self.0
            .sched
            .point(|| format!("kv delete {key}@{revision}"))
            .await;
        self.0.store_fails("delete", key)?;
        let mut st = self.0.st.lock().unwrap();
        if st.kv.get(key).map(|e| e.1) != Some(revision) {
            return Ok(Outcome::Conflict);
        }
        st.kv_rev += 1;
        st.kv.remove(key);
        st.deleted.insert(key.to_owned(), clock::system_now());
        self.0.check(&mut st, &format!("kv delete {key}"));
        Ok(Outcome::Written(st.kv_rev))
    }

    async fn state_of(&self, key: &str) -> Result<KeyState, StoreError> {
        self.0.sched.point(|| format!("kv state {key}")).await;
        self.0.store_fails("state", key)?;
        let st = self.0.st.lock().unwrap();
        Ok(if st.kv.contains_key(key) {
            KeyState::Live
        } else {
            KeyState::Free(st.deleted.get(key).copied())
        })
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.0.sched.point(|| format!("kv keys {prefix}")).await;
        self.0.store_fails("keys", prefix)?;
        let st = self.0.st.lock().unwrap();
        Ok(st
            .kv
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn entries(&self, prefix: &str) -> Result<Vec<(String, Entry)>, StoreError> {
        self.0.sched.point(|| format!("kv entries {prefix}")).await;
        self.0.store_fails("entries", prefix)?;
        let st = self.0.st.lock().unwrap();
        Ok(st
            .kv
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| {
                (
                    k.clone(),
                    Entry {
                        value: v.clone(),
                        revision: *r,
                    },
                )
            })
            .collect())
    }
}

/// The cluster seam for Gateway `at` of the pool.
#[derive(Clone)]
pub struct SimCluster {
    pub w: Arc<World>,
    pub at: usize,
}

impl SimCluster {
    fn transient(&self, what: &str) -> Result<(), ClusterError> {
        if self.w.p.transient > 0.0 && self.w.sched.with_rng(|r| r.chance(self.w.p.transient)) {
            self.w.sched.note(|| format!("apiserver fails {what}"));
            return Err(ClusterError::Transient(format!(
                "{what}: the apiserver answered 503; retrying"
            )));
        }
        Ok(())
    }

    fn apply_object(w: &World, st: &mut State, route: bool, name: &str, at: usize) {
        let created = clock::unix_secs();
        let uid = World::next_uid(st);
        let key = (NS.to_owned(), name.to_owned());
        let map = if route {
            &mut st.routes
        } else {
            &mut st.services
        };
        match map.get_mut(&key) {
            // An identical apply keeps the resourceVersion; a route moved to another Gateway does not.
            Some(o) if o.at == at => {}
            Some(o) => {
                o.at = at;
                o.rv += 1;
            }
            None => {
                map.insert(
                    key,
                    Obj {
                        uid,
                        rv: 1,
                        created,
                        at,
                    },
                );
            }
        }
        let _ = w;
    }
}

impl Cluster for SimCluster {
    fn view(&self) -> Arc<GatewayView> {
        let st = self.w.st.lock().unwrap();
        let gw = &st.gws[self.at];
        let mut v = GatewayView {
            present: true,
            ..GatewayView::default()
        };
        for (name, l) in &gw.listeners {
            if l.hidden {
                continue;
            }
            v.listeners.insert(name.clone());
            if l.owner.is_some() {
                v.owned_ports.insert(l.port);
                v.owned_port_of.insert(name.clone(), l.port);
                v.owned.insert(name.clone());
            } else {
                v.foreign_ports.insert(l.port);
            }
        }
        Arc::new(v)
    }

    async fn expose(&self, e: &Exposure<'_>) -> Result<(), ClusterError> {
        let name = names::object_name(e.rm, e.allocation_id, &e.binding.name);
        let port = e.binding.gateway_port;
        let at = self.at;
        self.w
            .sched
            .point(|| format!("apply service {} ({})", short(&name), e.allocation_id))
            .await;
        self.transient("apply service")?;
        {
            let mut st = self.w.st.lock().unwrap();
            SimCluster::apply_object(&self.w, &mut st, false, &name, at);
        }
        self.w
            .sched
            .point(|| {
                format!(
                    "apply listener {} :{port} gw{at} ({})",
                    short(&name),
                    e.allocation_id
                )
            })
            .await;
        self.transient("apply listener")?;
        {
            let mut st = self.w.st.lock().unwrap();
            let listenerset = self.w.p.listenerset;
            let gw = &st.gws[at];
            if !listenerset {
                if let Some((other, _)) = gw
                    .listeners
                    .iter()
                    .find(|(n, l)| l.port == port && **n != name)
                {
                    return Err(ClusterError::Capacity(format!(
                        "Gateway {GW_NS}/{}: listener {name} and {other}: spec.listeners: Invalid value: must be unique by port, protocol and hostname",
                        gw.name
                    )));
                }
                // The placeholder and up to two foreign listeners count against the limit too.
                if !gw.listeners.contains_key(&name)
                    && gw.listeners.len() >= self.w.p.listener_limit + 3
                {
                    return Err(ClusterError::Capacity(format!(
                        "Gateway {GW_NS}/{} has no room for another listener",
                        gw.name
                    )));
                }
            }
            let now = clock::instant();
            let unchanged = gw.listeners.get(&name).is_some_and(|l| l.port == port);
            if !unchanged {
                let lag = self.w.changed(&mut st, at);
                let since = st.gws[at]
                    .listeners
                    .get(&name)
                    .filter(|l| l.port == port)
                    .map_or(now, |l| l.since);
                st.gws[at].listeners.insert(
                    name.clone(),
                    Listener {
                        port,
                        owner: Some(e.allocation_id.to_owned()),
                        programmed_at: now + lag,
                        since,
                        hidden: false,
                    },
                );
                if listenerset {
                    let set = names::listenerset_name(e.rm, e.allocation_id);
                    if !st.sets.contains_key(&set) {
                        let uid = World::next_uid(&mut st);
                        st.sets.insert(
                            set,
                            Obj {
                                uid,
                                rv: 1,
                                created: clock::unix_secs(),
                                at,
                            },
                        );
                    }
                }
            }
            self.w
                .check(&mut st, &format!("apply listener {}", short(&name)));
        }
        self.w
            .sched
            .point(|| format!("apply route {} ({})", short(&name), e.allocation_id))
            .await;
        self.transient("apply route")?;
        {
            let mut st = self.w.st.lock().unwrap();
            SimCluster::apply_object(&self.w, &mut st, true, &name, at);
            self.w.changed(&mut st, at);
        }
        Ok(())
    }

    async fn withdraw(
        &self,
        rm: &str,
        allocation_id: &str,
        _namespace: Option<&str>,
        binding: &Binding,
    ) -> Result<(), ClusterError> {
        let name = names::object_name(rm, allocation_id, &binding.name);
        let at = self.at;
        self.w
            .sched
            .point(|| format!("delete route {} ({allocation_id})", short(&name)))
            .await;
        self.transient("delete route")?;
        self.w
            .st
            .lock()
            .unwrap()
            .routes
            .remove(&(NS.to_owned(), name.clone()));
        self.w
            .sched
            .point(|| format!("remove listener {} gw{at} ({allocation_id})", short(&name)))
            .await;
        self.transient("remove listener")?;
        {
            let mut st = self.w.st.lock().unwrap();
            if st.gws[at].listeners.remove(&name).is_some() {
                self.w.changed(&mut st, at);
            }
            if self.w.p.listenerset {
                let prefix_owner = allocation_id.to_owned();
                let left = st.gws[at]
                    .listeners
                    .values()
                    .any(|l| l.owner.as_deref() == Some(prefix_owner.as_str()));
                if !left {
                    st.sets.remove(&names::listenerset_name(rm, allocation_id));
                }
            }
        }
        self.w
            .sched
            .point(|| format!("delete service {} ({allocation_id})", short(&name)))
            .await;
        self.transient("delete service")?;
        self.w
            .st
            .lock()
            .unwrap()
            .services
            .remove(&(NS.to_owned(), name));
        Ok(())
    }

    fn controller_verdict(&self, exposures: &[Exposure<'_>]) -> Verdict {
        let st = self.w.st.lock().unwrap();
        let gw = &st.gws[self.at];
        let now = clock::instant();
        if gw.stale_until.is_some_and(|u| u > now) {
            return Verdict::Pending("the Gateway's status describes an older generation".into());
        }
        for e in exposures {
            let name = names::object_name(e.rm, e.allocation_id, &e.binding.name);
            let Some(l) = gw.listeners.get(&name) else {
                return Verdict::Pending(format!("listener {name} is not on the Gateway yet"));
            };
            if l.port != e.binding.gateway_port {
                return Verdict::Pending(format!("listener {name} is on another port"));
            }
            if self.w.p.listenerset
                && let Some((other, _)) = gw
                    .listeners
                    .iter()
                    .find(|(n, o)| **n != name && o.port == l.port && o.since <= l.since)
            {
                return Verdict::Conflicted {
                    listener: name.clone(),
                    reason: "PortConflict".into(),
                    message: format!("port {} is also {other}'s", l.port),
                };
            }
            if l.programmed_at > now {
                return Verdict::Pending(format!("listener {name} is not programmed yet"));
            }
            if !st.routes.contains_key(&(NS.to_owned(), name.clone())) {
                return Verdict::Pending(format!("route {name} is not accepted yet"));
            }
        }
        Verdict::Reachable
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.w.ticks[self.at].subscribe()
    }
}

impl Inventory for SimCluster {
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }

    async fn class_status(&self) -> ClassStatus {
        ClassStatus::Accepted {
            class: "sim".into(),
            controller: "sim".into(),
        }
    }

    fn describe(&self) -> String {
        "simulated".into()
    }

    async fn owned_objects(
        &self,
        _namespaces: Option<&[String]>,
    ) -> Result<Vec<OwnedObject>, ClusterError> {
        self.w.sched.point(|| "list owned objects".into()).await;
        self.transient("list")?;
        let st = self.w.st.lock().unwrap();
        let mk = |kind, ns: &str, name: &str, o: &Obj| OwnedObject {
            kind,
            namespace: ns.to_owned(),
            name: name.to_owned(),
            created: o.created,
            uid: Some(o.uid.to_string()),
            resource_version: Some(o.rv.to_string()),
        };
        let mut out: Vec<OwnedObject> = Vec::new();
        for ((ns, name), o) in &st.services {
            out.push(mk(ObjectKind::Service, ns, name, o));
        }
        for ((ns, name), o) in &st.routes {
            out.push(mk(ObjectKind::TcpRoute, ns, name, o));
        }
        for (name, o) in &st.sets {
            out.push(mk(ObjectKind::ListenerSet, GW_NS, name, o));
        }
        Ok(out)
    }

    async fn delete_object(&self, o: &OwnedObject) -> Result<(), ClusterError> {
        self.w
            .sched
            .point(|| format!("reconciler deletes {:?} {}", o.kind, short(&o.name)))
            .await;
        self.transient("delete object")?;
        let mut st = self.w.st.lock().unwrap();
        let matches = |x: &Obj| {
            o.uid.as_deref() == Some(x.uid.to_string().as_str())
                && o.resource_version.as_deref() == Some(x.rv.to_string().as_str())
        };
        let key = (o.namespace.clone(), o.name.clone());
        match o.kind {
            ObjectKind::Service => {
                if st.services.get(&key).is_some_and(matches) {
                    st.services.remove(&key);
                }
            }
            ObjectKind::TcpRoute => {
                if st.routes.get(&key).is_some_and(matches) {
                    st.routes.remove(&key);
                }
            }
            ObjectKind::ListenerSet => {
                if let Some(set) = st.sets.get(&o.name).filter(|s| matches(s)).cloned() {
                    st.sets.remove(&o.name);
                    let owner = st.gws[set.at]
                        .listeners
                        .iter()
                        .find(|(_, l)| {
                            l.owner
                                .as_deref()
                                .is_some_and(|a| names::listenerset_name(RM, a) == o.name)
                        })
                        .and_then(|(_, l)| l.owner.clone());
                    if let Some(owner) = owner {
                        st.gws[set.at]
                            .listeners
                            .retain(|_, l| l.owner.as_deref() != Some(owner.as_str()));
                        self.w.changed(&mut st, set.at);
                    }
                }
            }
        }
        Ok(())
    }

    async fn remove_owned_listener(&self, name: &str) -> Result<(), ClusterError> {
        self.w
            .sched
            .point(|| format!("reconciler removes listener {} gw{}", short(name), self.at))
            .await;
        self.transient("remove listener")?;
        let mut st = self.w.st.lock().unwrap();
        if st.gws[self.at].listeners.remove(name).is_some() {
            self.w.changed(&mut st, self.at);
        }
        Ok(())
    }
}

/// The data plane: a port accepts where some listener stands on it and its route is there, unless a fault
/// makes it refuse.
#[derive(Clone)]
pub struct SimDataPlane(pub Arc<World>);

impl DataPlane for SimDataPlane {
    fn connect<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reach> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .sched
                .point(|| format!("connect {host}:{port}"))
                .await;
            let st = self.0.st.lock().unwrap();
            match st.gws.iter().position(|g| g.ip == host) {
                Some(at) => self.0.serves(&st, at, port),
                None => Reach::Unreachable("no route to host".into()),
            }
        })
    }
}

/// Where replies, requeued events and dead letters go.
#[derive(Clone)]
pub struct SimReplier(pub Arc<World>);

impl Replier for SimReplier {
    async fn publish(&self, reply: &Reply, msg_id: &str) -> Result<(), SinkError> {
        let w = &self.0;
        let alloc = reply_alloc(reply);
        w.sched
            .point(|| format!("publish {} {alloc}", reply.kind().as_str()))
            .await;
        let fail = {
            let mut st = w.st.lock().unwrap();
            let tries = st.reply_tries.entry(msg_id.to_owned()).or_insert(0);
            *tries += 1;
            let first = *tries == 1;
            match &w.p.reply_fail {
                ReplyFail::None => false,
                ReplyFail::Once(p) => first && w.sched.with_rng(|r| r.chance(*p)),
                ReplyFail::Always { alloc: a, until } => *a == alloc && w.secs() < *until,
            }
        };
        if fail {
            w.sched
                .note(|| format!("reply {} {alloc} NOT STORED", reply.kind().as_str()));
            return Err(SinkError {
                what: "reply".into(),
                message: "no response from JetStream".into(),
            });
        }
        let mut st = w.st.lock().unwrap();
        if st.reply_ids.insert(msg_id.to_owned()) {
            let at_ms = w.now_ms();
            w.sched.note(|| {
                format!(
                    "reply {} {alloc} stored {}",
                    reply.kind().as_str(),
                    crate::checker::describe(reply)
                )
            });
            let found = crate::checker::on_reply(w, &st, &alloc, reply);
            st.replies.push(Stored {
                at_ms,
                alloc,
                reply: reply.clone(),
            });
            for v in found {
                let line = format!("t={at_ms}ms: {v}");
                w.sched.note(|| format!("VIOLATION {line}"));
                st.violations.push(line);
            }
        }
        Ok(())
    }

    async fn requeue(
        &self,
        subject: &str,
        payload: &[u8],
        original_sequence: u64,
    ) -> Result<(), SinkError> {
        self.0
            .sched
            .point(|| format!("requeue #{original_sequence}"))
            .await;
        let kind = itg::contract::parse_event_subject(subject).map_or(EventKind::Ended, |(_, k)| k);
        let alloc = itg::contract::decode_event(kind, payload)
            .map(|e| e.allocation_id().to_owned())
            .unwrap_or_default();
        self.0.publish_event(
            kind,
            &alloc,
            Bytes::copy_from_slice(payload),
            Some(names::requeue_msg_id(original_sequence)),
        );
        Ok(())
    }

    async fn dead_letter(&self, letter: &DeadLetter<'_>) -> Result<(), SinkError> {
        self.0
            .sched
            .point(|| format!("dead letter #{} {}", letter.original_sequence, letter.error))
            .await;
        self.0.st.lock().unwrap().dead_letters += 1;
        Ok(())
    }
}

pub fn reply_alloc(reply: &Reply) -> String {
    match reply {
        Reply::Ready(r) => r.allocation_id.clone(),
        Reply::Removed(r) => r.allocation_id.clone(),
        Reply::Failed(f) => f.allocation_id.clone().unwrap_or_default(),
    }
}

/// A listener name, shortened for the trace.
pub fn short(name: &str) -> &str {
    name.get(name.len().saturating_sub(6)..).unwrap_or(name)
}
