//! The reconciler's decision: from what one pass saw (records, claims, listeners, objects found by label),
//! what to repair and what to remove. Pure; the worker's reconciler reads the inputs and acts.
//!
//! Anything touched by an allocation within the hold-off is left alone, so an allocation in flight is never
//! taken for an orphan. A listener, whose age the Gateway does not record, must be seen orphaned in two
//! passes a hold-off apart.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::claims::PortClaim;
use crate::cluster::OwnedObject;
use crate::contract::GatewayRef;
use crate::names;
use crate::state::Record;

/// One thing the reconciler does (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// A port claim whose owner does not list it.
    ReleaseClaim {
        port: u16,
        owner: String,
        revision: u64,
    },
    /// A listener of the worker's shape that no allocation wants.
    RemoveListener { name: String },
    /// A Service or TCPRoute that no allocation wants.
    DeleteObject { object: OwnedObject },
    /// A live allocation lacks an object, or an ending one was left half-cleaned: drive it again.
    Repair { allocation_id: String },
    /// A finished allocation's record, older than any event that could still be replayed about it.
    PurgeTombstone {
        allocation_id: String,
        revision: u64,
    },
}

impl Action {
    /// Every [`Action::label`], for series created at zero before the first action.
    pub const LABELS: [&'static str; 5] = [
        "release_claim",
        "remove_listener",
        "delete_object",
        "repair",
        "purge_tombstone",
    ];

    /// The action's name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Action::ReleaseClaim { .. } => "release_claim",
            Action::RemoveListener { .. } => "remove_listener",
            Action::DeleteObject { .. } => "delete_object",
            Action::Repair { .. } => "repair",
            Action::PurgeTombstone { .. } => "purge_tombstone",
        }
    }

    /// The name of the listener or object this action takes away, if it takes one away.
    pub fn removes(&self) -> Option<&str> {
        match self {
            Action::RemoveListener { name } => Some(name),
            Action::DeleteObject { object } => Some(&object.name),
            _ => None,
        }
    }
}

/// What one pass saw.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// Allocation id -> its record.
    pub records: BTreeMap<String, Record>,
    /// Allocation id -> its record's revision.
    pub revisions: BTreeMap<String, u64>,
    /// Seconds after which a finished allocation's record is purged: the events stream's max age, past
    /// which no event about it can be served again. `None` keeps every record.
    pub tombstone_max_age: Option<i64>,
    /// Port -> (claim, revision).
    pub claims: BTreeMap<u16, (PortClaim, u64)>,
    /// Names of the Gateway's listeners of the worker's shape.
    pub listeners: BTreeSet<String>,
    /// The port each of `listeners` stands on, where the Gateway says: a listener a stale pass moved off
    /// its allocation's port is repaired, not taken for healthy because its name is right.
    pub listener_ports: BTreeMap<String, u16>,
    /// Services and TCPRoutes found by label.
    pub objects: Vec<OwnedObject>,
    /// Listener name -> unix seconds it was first seen orphaned (kept across passes).
    pub suspects: BTreeMap<String, i64>,
    /// Task namespaces named by a record whose objects were not listed in this pass (objects are listed per
    /// namespace where a cluster-wide list is forbidden): a record there is not judged to lack anything.
    pub unlisted_namespaces: Option<BTreeSet<String>>,
    /// For a resource manager with a pool of Gateways: the Gateway whose claims and listeners this pass
    /// judges. `None` (one Gateway) judges everything.
    pub here: Option<GatewayRef>,
    /// Whether `here` is another Gateway of the pool than the resource manager's own. Such a pass judges
    /// only its claims and listeners; the own Gateway's pass also judges what belongs to no Gateway (the
    /// objects in task namespaces, the records).
    pub secondary: bool,
}

impl Inputs {
    /// Whether record `r` holds its ports on the Gateway this pass judges.
    fn holds_here(&self, r: &Record) -> bool {
        match (&self.here, &r.gateway) {
            (None, _) => true,
            (Some(_), None) => !self.secondary,
            (Some(h), Some(g)) => g == h,
        }
    }
}

/// The names of the listeners, Services and routes record `r` of allocation `id` stands for: one per proxy
/// port it holds or asks for.
fn port_names<'a>(rm: &'a str, id: &'a str, r: &'a Record) -> impl Iterator<Item = String> + 'a {
    let held = r.ports.iter().map(|b| b.name.as_str());
    let asked = r
        .spec
        .iter()
        .flat_map(|s| s.proxy_ports.iter().map(|p| p.name.as_str()));
    held.chain(asked)
        .map(move |port| names::object_name(rm, id, port))
}

/// Every name record `r` of allocation `id` stands for: its ports' objects and, in `listenerset` mode, its
/// ListenerSet.
pub fn names_of<'a>(rm: &'a str, id: &'a str, r: &'a Record) -> impl Iterator<Item = String> + 'a {
    port_names(rm, id, r).chain(std::iter::once(names::listenerset_name(rm, id)))
}

/// Decides what to do. Returns the actions and the listeners now suspected (to pass to the next plan).
pub fn plan(rm: &str, i: &Inputs, now: i64, hold_off: i64) -> (Vec<Action>, BTreeMap<String, i64>) {
    let recent = |t: i64| now.saturating_sub(t) < hold_off;
    // Names every live allocation wants, and names of any allocation touched within the hold-off.
    let mut wanted = BTreeSet::new();
    // Listener names live allocations want on this Gateway: in a pool, another Gateway's are not.
    let mut wanted_here = BTreeSet::new();
    let mut protected = BTreeSet::new();
    for (id, r) in &i.records {
        for n in port_names(rm, id, r) {
            if r.phase.wants_exposure() {
                wanted.insert(n.clone());
                if i.holds_here(r) {
                    wanted_here.insert(n.clone());
                }
            }
            if recent(r.updated_at) {
                protected.insert(n);
            }
        }
        // In `listenerset` mode the allocation's listeners live in a ListenerSet of its own.
        let set = names::listenerset_name(rm, id);
        if r.phase.wants_exposure() {
            wanted.insert(set.clone());
        }
        if recent(r.updated_at) {
            protected.insert(set);
        }
    }
    let mut actions = Vec::new();
    for (port, (claim, revision)) in &i.claims {
        let owner =
            names::parse_allocation_key(&claim.allocation).and_then(|(_, id)| i.records.get(&id));
        let listed = owner.is_some_and(|r| {
            i.holds_here(r)
                && r.ports
                    .iter()
                    .any(|b| b.gateway_port == *port && b.name == claim.proxy)
        });
        if !listed && !recent(claim.claimed_at) && !owner.is_some_and(|r| recent(r.updated_at)) {
            actions.push(Action::ReleaseClaim {
                port: *port,
                owner: claim.allocation.clone(),
                revision: *revision,
            });
        }
    }
    let mut suspects = BTreeMap::new();
    for name in &i.listeners {
        if wanted_here.contains(name) || protected.contains(name) {
            continue;
        }
        let since = i.suspects.get(name).copied().unwrap_or(now);
        suspects.insert(name.clone(), since);
        if !recent(since) {
            actions.push(Action::RemoveListener { name: name.clone() });
        }
    }
    for o in i.objects.iter().filter(|_| !i.secondary) {
        if !wanted.contains(&o.name) && !protected.contains(&o.name) && !recent(o.created) {
            actions.push(Action::DeleteObject { object: o.clone() });
        }
    }
    for (id, r) in &i.records {
        if recent(r.updated_at) || !i.holds_here(r) {
            continue;
        }
        let unlisted = match (&i.unlisted_namespaces, &r.spec) {
            (Some(unlisted), Some(spec)) => unlisted.contains(&spec.namespace),
            _ => false,
        };
        let lacking = !unlisted
            && r.phase == crate::state::Phase::Ready
            && r.ports.iter().any(|b| {
                let n = names::object_name(rm, id, &b.name);
                let has = |kind| i.objects.iter().any(|o| o.name == n && o.kind == kind);
                let elsewhere = i
                    .listener_ports
                    .get(&n)
                    .is_some_and(|p| *p != b.gateway_port);
                !i.listeners.contains(&n)
                    || elsewhere
                    || !has(crate::cluster::ObjectKind::Service)
                    || !has(crate::cluster::ObjectKind::TcpRoute)
            });
        let half_clean = !i.secondary
            && (r.phase == crate::state::Phase::Ending
                || (!r.phase.wants_exposure() && !r.ports.is_empty()));
        if lacking || half_clean {
            actions.push(Action::Repair {
                allocation_id: id.clone(),
            });
        } else if let (Some(max_age), Some(revision)) = (i.tombstone_max_age, i.revisions.get(id))
            && !i.secondary
            && !r.phase.wants_exposure()
            && r.phase != crate::state::Phase::Ending
            && r.ports.is_empty()
            && now.saturating_sub(r.updated_at) > max_age
        {
            actions.push(Action::PurgeTombstone {
                allocation_id: id.clone(),
                revision: *revision,
            });
        }
    }
    (actions, suspects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ObjectKind;
    use crate::state::{Binding, Phase};

    const RM: &str = "rm";

    fn mk_record(id: &str, phase: Phase, port: u16, updated_at: i64) -> Record {
        Record {
            version: crate::state::RECORD_VERSION,
            allocation_id: id.into(),
            resource_manager: RM.into(),
            phase,
            spec: None,
            started_event_id: None,
            gateway: None,
            ports: vec![Binding {
                name: "jupyter".into(),
                container_port: 8888,
                gateway_port: port,
            }],
            released: vec![],
            given_back: vec![],
            ended_event_id: None,
            failure: None,
            created_at: updated_at,
            updated_at,
            bound_at: 0,
            ready_stored: false,
        }
    }

    fn mk_object(id: &str, kind: ObjectKind, created: i64) -> OwnedObject {
        OwnedObject {
            kind,
            namespace: "team-a".into(),
            name: names::object_name(RM, id, "jupyter"),
            created,
            uid: None,
            resource_version: None,
        }
    }

    fn mk_claim(id: &str, claimed_at: i64) -> (PortClaim, u64) {
        (
            PortClaim {
                allocation: names::allocation_key(RM, id),
                proxy: "jupyter".into(),
                claimed_at,
            },
            7,
        )
    }

    /// A ready allocation `a.1` on port 40000 with all its objects, seen at t=1000 with a 60 s hold-off.
    fn mk_healthy() -> Inputs {
        let mut i = Inputs::default();
        i.records
            .insert("a.1".into(), mk_record("a.1", Phase::Ready, 40000, 100));
        i.claims.insert(40000, mk_claim("a.1", 100));
        i.listeners.insert(names::object_name(RM, "a.1", "jupyter"));
        i.objects.push(mk_object("a.1", ObjectKind::Service, 100));
        i.objects.push(mk_object("a.1", ObjectKind::TcpRoute, 100));
        i
    }

    #[test]
    fn a_healthy_allocation_needs_nothing() {
        assert_eq!(plan(RM, &mk_healthy(), 1000, 60).0, vec![]);
    }

    #[test]
    fn a_claim_whose_owner_is_gone_is_released_only_after_the_hold_off() {
        let mut i = mk_healthy();
        i.claims.insert(40001, mk_claim("gone.1", 990));
        assert_eq!(
            plan(RM, &i, 1000, 60).0,
            vec![],
            "claimed 10 s ago: maybe in flight"
        );
        let (actions, _) = plan(RM, &i, 1100, 60);
        assert_eq!(
            actions,
            vec![Action::ReleaseClaim {
                port: 40001,
                owner: names::allocation_key(RM, "gone.1"),
                revision: 7
            }]
        );
    }

    #[test]
    fn an_orphan_listener_must_be_seen_twice_a_hold_off_apart() {
        let mut i = mk_healthy();
        let orphan = names::object_name(RM, "gone.1", "jupyter");
        i.listeners.insert(orphan.clone());
        let (actions, suspects) = plan(RM, &i, 1000, 60);
        assert_eq!(actions, vec![]);
        i.suspects = suspects;
        let (actions, _) = plan(RM, &i, 1061, 60);
        assert_eq!(actions, vec![Action::RemoveListener { name: orphan }]);
    }

    #[test]
    fn objects_of_an_ended_allocation_are_deleted_but_not_while_it_is_being_cleaned() {
        let mut i = mk_healthy();
        i.records
            .insert("b.1".into(), mk_record("b.1", Phase::Removed, 40002, 995));
        i.records.get_mut("b.1").unwrap().ports.clear();
        i.records.get_mut("b.1").unwrap().spec = Some(crate::state::Spec {
            namespace: "team-a".into(),
            pod_selector: Default::default(),
            proxy_ports: vec![crate::contract::ProxyPort {
                name: "jupyter".into(),
                port: 8888,
            }],
            task_id: None,
        });
        i.objects.push(mk_object("b.1", ObjectKind::Service, 900));
        assert_eq!(plan(RM, &i, 1000, 60).0, vec![], "touched 5 s ago");
        let (actions, _) = plan(RM, &i, 1100, 60);
        assert_eq!(
            actions,
            vec![Action::DeleteObject {
                object: mk_object("b.1", ObjectKind::Service, 900)
            }]
        );
    }

    #[test]
    fn a_finished_record_is_purged_only_past_the_events_max_age() {
        let mut i = mk_healthy();
        let mut done = mk_record("d.1", Phase::Removed, 40003, 100);
        done.ports.clear();
        i.records.insert("d.1".into(), done);
        i.revisions.insert("d.1".into(), 42);
        i.records
            .insert("e.1".into(), mk_record("e.1", Phase::Ending, 40004, 100));
        assert_eq!(plan(RM, &i, 1000, 60).0.len(), 1, "kept without a max age");
        i.tombstone_max_age = Some(3600);
        assert!(
            !plan(RM, &i, 1000, 60)
                .0
                .iter()
                .any(|a| matches!(a, Action::PurgeTombstone { .. })),
            "younger than the max age"
        );
        let purges: Vec<Action> = plan(RM, &i, 100 + 3601, 60)
            .0
            .into_iter()
            .filter(|a| matches!(a, Action::PurgeTombstone { .. }))
            .collect();
        assert_eq!(
            purges,
            vec![Action::PurgeTombstone {
                allocation_id: "d.1".into(),
                revision: 42
            }],
            "the live and the ending records stay"
        );
    }

    #[test]
    fn a_ready_allocation_missing_its_service_is_repaired() {
        let mut i = mk_healthy();
        i.objects.retain(|o| o.kind != ObjectKind::Service);
        assert_eq!(
            plan(RM, &i, 1000, 60).0,
            vec![Action::Repair {
                allocation_id: "a.1".into()
            }]
        );
    }

    #[test]
    fn a_ready_allocation_whose_listener_stands_on_another_port_is_repaired() {
        let mut i = mk_healthy();
        let n = names::object_name(RM, "a.1", "jupyter");
        i.listener_ports.insert(n.clone(), 40000);
        assert_eq!(plan(RM, &i, 1000, 60).0, vec![], "on its own port");
        i.listener_ports.insert(n, 40007);
        assert_eq!(
            plan(RM, &i, 1000, 60).0,
            vec![Action::Repair {
                allocation_id: "a.1".into()
            }],
            "the record says 40000, the listener stands on 40007"
        );
    }

    #[test]
    fn in_a_pool_each_gateway_judges_only_what_its_allocations_hold_there() {
        let (a, b) = (
            GatewayRef {
                namespace: "gw".into(),
                name: "a".into(),
            },
            GatewayRef {
                namespace: "gw".into(),
                name: "b".into(),
            },
        );
        // Allocation x holds port 40001 on the own Gateway a (an old record names none); y on b.
        let x = mk_record("x", Phase::Ready, 40001, 0);
        let mut y = mk_record("y", Phase::Ready, 40001, 0);
        y.gateway = Some(b.clone());
        let mut i = Inputs {
            records: BTreeMap::from([("x".into(), x), ("y".into(), y)]),
            here: Some(b.clone()),
            secondary: true,
            ..Inputs::default()
        };
        // On b: y's claim and listener are wanted; x's listener name is a stray there, and x's claim (a
        // stale one on b's port key) is released.
        i.claims.insert(40001, mk_claim("y", 0));
        i.listeners = BTreeSet::from([
            names::object_name(RM, "y", "jupyter"),
            names::object_name(RM, "x", "jupyter"),
        ]);
        i.suspects = BTreeMap::from([(names::object_name(RM, "x", "jupyter"), 0)]);
        let (actions, _) = plan(RM, &i, 1000, 10);
        assert!(
            actions.contains(&Action::RemoveListener {
                name: names::object_name(RM, "x", "jupyter")
            }),
            "{actions:?}"
        );
        // Nothing else of x, and nothing that belongs to no Gateway: y lacks its objects (none were
        // listed here), so it is repaired, as its own Gateway's pass would.
        assert!(
            actions
                .iter()
                .all(|a| matches!(a, Action::RemoveListener { .. })
                    || *a
                        == Action::Repair {
                            allocation_id: "y".into()
                        }),
            "b's pass judged another Gateway's allocation: {actions:?}"
        );
        i.claims.insert(40001, mk_claim("x", 0));
        i.listeners.clear();
        let (actions, _) = plan(RM, &i, 1000, 10);
        assert!(
            actions.contains(&Action::ReleaseClaim {
                port: 40001,
                owner: names::allocation_key(RM, "x"),
                revision: 7
            }),
            "{actions:?}"
        );
        // The own Gateway's pass takes the old record (no Gateway named) as its own.
        i.here = Some(a);
        i.secondary = false;
        let (actions, _) = plan(RM, &i, 1000, 10);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::ReleaseClaim { .. })),
            "{actions:?}"
        );
    }
}
