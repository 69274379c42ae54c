//! The promises of docs/contract.md, checked after every step, at every stored reply, and at rest.

use std::collections::{BTreeMap, BTreeSet};

use itg::claims::PortClaim;
use itg::contract::{FailureReason, Reply};
use itg::names;
use itg::probe::Reach;
use itg::state::{Phase, Record};

use crate::world::{NS, RM, State, World};

/// Every record in the bucket, by allocation id.
pub fn records(st: &State) -> BTreeMap<String, Record> {
    let prefix = names::allocation_key_prefix(RM);
    st.kv
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, (v, _))| {
            let (_, id) = names::parse_allocation_key(k)?;
            Some((id, serde_json::from_slice::<Record>(v).ok()?))
        })
        .collect()
}

/// Every claim on Gateway `at`, by port: the allocation id holding it.
fn claims(st: &State, at: usize) -> BTreeMap<u16, (String, String)> {
    let prefix = names::port_key_prefix(RM, crate::world::GW_NS, &st.gws[at].name);
    st.kv
        .iter()
        .filter_map(|(k, (v, _))| {
            let port = names::parse_port_key(k, &prefix)?;
            let c = serde_json::from_slice::<PortClaim>(v).ok()?;
            let (_, id) = names::parse_allocation_key(&c.allocation)?;
            Some((port, (id, c.proxy)))
        })
        .collect()
}

/// After every step: no Gateway port is held by two live allocations, counting their listeners as well
/// as their claims.
pub fn always(_w: &World, st: &State) -> Vec<String> {
    let recs = records(st);
    let live = |a: &str| recs.get(a).is_some_and(|r| r.phase.wants_exposure());
    let mut out = Vec::new();
    for at in 0..st.gws.len() {
        let mut holders: BTreeMap<u16, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for (name, l) in &st.gws[at].listeners {
            if let Some(a) = &l.owner {
                holders
                    .entry(l.port)
                    .or_default()
                    .entry(a.clone())
                    .or_default()
                    .push(format!("listener {}", crate::world::short(name)));
            }
        }
        for (port, (a, proxy)) in claims(st, at) {
            holders
                .entry(port)
                .or_default()
                .entry(a)
                .or_default()
                .push(format!("claim for {proxy}"));
        }
        for (port, by) in holders {
            let live_holders: Vec<_> = by.iter().filter(|(a, _)| live(a)).collect();
            if live_holders.len() > 1 {
                out.push(format!(
                    "port {port} of Gateway {at} is held by two live allocations: {}",
                    live_holders
                        .iter()
                        .map(|(a, what)| format!("{a} ({}, {:?})", what.join(", "), recs[*a].phase))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ));
            }
        }
    }
    out
}

/// A reply, briefly: its kind and what it says.
pub fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Ready(r) => format!(
            "on {} {:?}",
            r.gateway.name,
            r.proxies.iter().map(|p| p.gateway_port).collect::<Vec<_>>()
        ),
        Reply::Failed(f) => format!("{}: {}", f.reason, f.message),
        Reply::Removed(r) => format!("{} released", r.released.len()),
    }
}

fn addresses(reply: &Reply) -> Option<(String, Vec<(String, u16)>)> {
    match reply {
        Reply::Ready(r) => Some((
            r.gateway.name.clone(),
            r.proxies
                .iter()
                .map(|p| (p.name.clone(), p.gateway_port))
                .collect(),
        )),
        _ => None,
    }
}

/// When a reply is stored: the order of an allocation's replies, and, for a `ready`, that its listeners,
/// routes and (with the probe on) the data plane serve it on each address at this moment.
pub fn on_reply(w: &World, st: &State, alloc: &str, reply: &Reply) -> Vec<String> {
    let mut out = Vec::new();
    let hist: Vec<&Reply> = st
        .replies
        .iter()
        .filter(|s| s.alloc == alloc)
        .map(|s| &s.reply)
        .collect();
    let removed = hist.iter().any(|r| matches!(r, Reply::Removed(_)));
    let ready_before = hist.iter().rev().find_map(|r| addresses(r));
    match reply {
        Reply::Ready(r) => {
            if removed {
                out.push(format!(
                    "{alloc}: a ready after its removed ({})",
                    describe(reply)
                ));
            }
            if let Some(first) = hist.iter().find_map(|r| addresses(r))
                && Some(&first) != addresses(reply).as_ref()
            {
                out.push(format!(
                    "{alloc}: a ready with other addresses: first {first:?}, now {:?}",
                    addresses(reply)
                ));
            }
            if st.ended_published.contains_key(alloc) {
                return out;
            }
            let Some(at) = st.gws.iter().position(|g| g.name == r.gateway.name) else {
                out.push(format!("{alloc}: a ready naming an unknown Gateway"));
                return out;
            };
            for p in &r.proxies {
                let name = names::object_name(RM, alloc, &p.name);
                let gw = &st.gws[at];
                match gw.listeners.get(&name) {
                    Some(l) if l.port == p.gateway_port => {}
                    Some(l) => out.push(format!(
                        "{alloc}: ready on port {} while its listener {} stands on {}",
                        p.gateway_port,
                        crate::world::short(&name),
                        l.port
                    )),
                    None => out.push(format!(
                        "{alloc}: ready on port {} while its listener is not on Gateway {at}",
                        p.gateway_port
                    )),
                }
                let others: Vec<_> = gw
                    .listeners
                    .iter()
                    .filter(|(n, l)| **n != name && l.port == p.gateway_port)
                    .map(|(n, l)| format!("{} of {:?}", crate::world::short(n), l.owner))
                    .collect();
                if !others.is_empty() {
                    out.push(format!(
                        "{alloc}: ready on port {} which also holds {}",
                        p.gateway_port,
                        others.join(", ")
                    ));
                }
                if !st.routes.contains_key(&(NS.to_owned(), name.clone())) {
                    out.push(format!(
                        "{alloc}: ready on port {} without its route",
                        p.gateway_port
                    ));
                }
                if w.p.probe && w.serves(st, at, p.gateway_port) == Reach::Refused {
                    out.push(format!(
                        "{alloc}: ready on port {} while the data plane refuses it",
                        p.gateway_port
                    ));
                }
            }
        }
        // A started served after its ended is answered so; the master ended the allocation itself.
        Reply::Failed(f) if f.reason == FailureReason::InvalidEvent => {}
        Reply::Failed(f) => {
            if let Some(ready) = ready_before
                && !removed
            {
                out.push(format!(
                    "{alloc}: a failed after its ready {ready:?} and before any removed: {}: {}",
                    f.reason, f.message
                ));
            }
        }
        Reply::Removed(_) => {}
    }
    out
}

/// Once every event has settled and the reconcilers have run: each live allocation holds exactly its
/// objects on its addresses, an ended or failed one holds nothing but its record.
pub fn at_rest(w: &World) -> Vec<String> {
    let st = w.st.lock().unwrap();
    let recs = records(&st);
    let mut out = Vec::new();
    let claims: Vec<_> = (0..st.gws.len()).map(|at| claims(&st, at)).collect();
    for i in 0..w.p.allocs {
        let a = format!("a{i}");
        let rec = recs.get(&a);
        let ended = st.ended_published.contains_key(&a);
        let last_reply = st
            .replies
            .iter()
            .rev()
            .find(|s| s.alloc == a)
            .map(|s| &s.reply);
        let listeners: BTreeSet<(usize, u16, String)> = st
            .gws
            .iter()
            .enumerate()
            .flat_map(|(at, g)| {
                g.listeners
                    .iter()
                    .filter(|(_, l)| l.owner.as_deref() == Some(a.as_str()))
                    .map(move |(n, l)| (at, l.port, n.clone()))
            })
            .collect();
        let held: BTreeSet<(usize, u16)> = claims
            .iter()
            .enumerate()
            .flat_map(|(at, c)| {
                c.iter()
                    .filter(|(_, (x, _))| *x == a)
                    .map(move |(p, _)| (at, *p))
            })
            .collect();
        let proxies = ["p0", "p1", "p2"];
        let objects: Vec<String> = proxies
            .iter()
            .map(|p| names::object_name(RM, &a, p))
            .filter(|n| {
                st.services.contains_key(&(NS.to_owned(), n.clone()))
                    || st.routes.contains_key(&(NS.to_owned(), n.clone()))
            })
            .collect();
        let set = st.sets.contains_key(&names::listenerset_name(RM, &a));
        let holds_nothing = |why: &str, out: &mut Vec<String>| {
            if !listeners.is_empty() || !held.is_empty() || !objects.is_empty() || set {
                out.push(format!(
                    "{a} ({why}) still holds: listeners {:?}, claims {held:?}, Services/TCPRoutes {}, ListenerSet {set}",
                    listeners.iter().map(|(at, p, n)| format!("gw{at}:{p} {}", crate::world::short(n))).collect::<Vec<_>>(),
                    objects.len()
                ));
            }
        };
        if ended {
            match rec.map(|r| r.phase) {
                Some(Phase::Removed) => {}
                other => out.push(format!(
                    "{a}: its ended was published, and its record is {other:?}, not a tombstone"
                )),
            }
            holds_nothing("ended", &mut out);
            continue;
        }
        match rec {
            Some(r) if r.phase == Phase::Ready => {
                let at = st
                    .gws
                    .iter()
                    .position(|g| Some(&g.name) == r.gateway.as_ref().map(|g| &g.name))
                    .unwrap_or(0);
                let want: BTreeSet<(usize, u16, String)> = r
                    .ports
                    .iter()
                    .map(|b| (at, b.gateway_port, names::object_name(RM, &a, &b.name)))
                    .collect();
                if listeners != want {
                    out.push(format!(
                        "{a} is ready on {:?} but its listeners stand at {:?}",
                        want.iter().map(|(at, p, _)| (at, p)).collect::<Vec<_>>(),
                        listeners
                            .iter()
                            .map(|(at, p, _)| (at, p))
                            .collect::<Vec<_>>()
                    ));
                }
                let want_held: BTreeSet<(usize, u16)> =
                    r.ports.iter().map(|b| (at, b.gateway_port)).collect();
                if held != want_held {
                    out.push(format!("{a} is ready on {want_held:?} but claims {held:?}"));
                }
                for b in &r.ports {
                    let n = names::object_name(RM, &a, &b.name);
                    if !st.routes.contains_key(&(NS.to_owned(), n.clone()))
                        || !st.services.contains_key(&(NS.to_owned(), n))
                    {
                        out.push(format!(
                            "{a} is ready but lacks the Service or TCPRoute of {}",
                            b.name
                        ));
                    }
                }
                if let Some(Reply::Ready(last)) = last_reply {
                    let said: BTreeSet<u16> = last.proxies.iter().map(|p| p.gateway_port).collect();
                    let has: BTreeSet<u16> = r.ports.iter().map(|b| b.gateway_port).collect();
                    if said != has
                        || Some(&last.gateway.name)
                            != r.gateway
                                .as_ref()
                                .map(|g| &g.name)
                                .or(Some(&st.gws[0].name))
                    {
                        out.push(format!(
                            "{a}: the master was told {} {said:?}, the record holds {:?} {has:?}",
                            last.gateway.name,
                            r.gateway.as_ref().map(|g| &g.name)
                        ));
                    }
                }
            }
            Some(r) if matches!(r.phase, Phase::Failed | Phase::Removed) => {
                if let Some(Reply::Ready(_)) = last_reply {
                    out.push(format!(
                        "{a}: the master's last word is ready, and the allocation is {:?} ({})",
                        r.phase,
                        r.failure
                            .as_ref()
                            .map_or(String::new(), |f| f.message.clone())
                    ));
                }
                holds_nothing(&format!("{:?}", r.phase), &mut out);
            }
            Some(r) if r.phase == Phase::Ending => {
                out.push(format!("{a}: its record is still ending at rest"));
            }
            None => holds_nothing("no record", &mut out),
            _ => {}
        }
    }
    out
}
