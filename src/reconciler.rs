//! The reconciler: a periodic, leader-less pass per resource manager that compares the KV records, the port
//! claims, the Gateway's listeners and the objects found by label, then repairs live allocations that lack
//! something and removes orphans.
//!
//! Deciding is pure ([`plan`]); only [`Reconciler::pass`] talks to the servers. Many workers may run it at
//! once: every removal is idempotent, a claim is released only at the revision read, and anything touched
//! by an allocation within the hold-off is left alone, so an allocation in flight is never taken for an
//! orphan. A listener, whose age the Gateway does not record, must be seen orphaned in two passes a hold-off
//! apart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::gateway::{Cluster, KubeGateway, OwnedObject};
use crate::metrics;
use crate::names;
use crate::state::Record;
use crate::store::Store;
use crate::worker::{Handler, PortClaim};

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
    fn label(&self) -> &'static str {
        match self {
            Action::ReleaseClaim { .. } => "release_claim",
            Action::RemoveListener { .. } => "remove_listener",
            Action::DeleteObject { .. } => "delete_object",
            Action::Repair { .. } => "repair",
            Action::PurgeTombstone { .. } => "purge_tombstone",
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
    /// Services and TCPRoutes found by label.
    pub objects: Vec<OwnedObject>,
    /// Listener name -> unix seconds it was first seen orphaned (kept across passes).
    pub suspects: BTreeMap<String, i64>,
    /// Task namespaces named by a record whose objects were not listed in this pass (objects are listed per
    /// namespace where a cluster-wide list is forbidden): a record there is not judged to lack anything.
    pub unlisted_namespaces: Option<BTreeSet<String>>,
}

/// Decides what to do. Returns the actions and the listeners now suspected (to pass to the next plan).
pub fn plan(rm: &str, i: &Inputs, now: i64, hold_off: i64) -> (Vec<Action>, BTreeMap<String, i64>) {
    let recent = |t: i64| now.saturating_sub(t) < hold_off;
    // Names every live allocation wants, and names of any allocation touched within the hold-off.
    let mut wanted = BTreeSet::new();
    let mut protected = BTreeSet::new();
    for (id, r) in &i.records {
        let all_ports = r.ports.iter().map(|b| b.name.as_str());
        let spec_ports = r
            .spec
            .iter()
            .flat_map(|s| s.proxy_ports.iter().map(|p| p.name.as_str()));
        for port in all_ports.chain(spec_ports) {
            let n = names::object_name(rm, id, port);
            if r.phase.wants_exposure() {
                wanted.insert(n.clone());
            }
            if recent(r.updated_at) {
                protected.insert(n);
            }
        }
    }
    let mut actions = Vec::new();
    for (port, (claim, revision)) in &i.claims {
        let owner =
            names::parse_allocation_key(&claim.allocation).and_then(|(_, id)| i.records.get(&id));
        let listed = owner.is_some_and(|r| {
            r.ports
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
        if wanted.contains(name) || protected.contains(name) {
            continue;
        }
        let since = i.suspects.get(name).copied().unwrap_or(now);
        suspects.insert(name.clone(), since);
        if !recent(since) {
            actions.push(Action::RemoveListener { name: name.clone() });
        }
    }
    for o in &i.objects {
        if !wanted.contains(&o.name) && !protected.contains(&o.name) && !recent(o.created) {
            actions.push(Action::DeleteObject { object: o.clone() });
        }
    }
    for (id, r) in &i.records {
        if recent(r.updated_at) {
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
                !i.listeners.contains(&n)
                    || !has(crate::gateway::ObjectKind::Service)
                    || !has(crate::gateway::ObjectKind::TcpRoute)
            });
        let half_clean = r.phase == crate::state::Phase::Ending
            || (!r.phase.wants_exposure() && !r.ports.is_empty());
        if lacking || half_clean {
            actions.push(Action::Repair {
                allocation_id: id.clone(),
            });
        } else if let (Some(max_age), Some(revision)) = (i.tombstone_max_age, i.revisions.get(id))
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

/// Runs passes for one resource manager.
pub struct Reconciler<S> {
    rm: String,
    store: S,
    gateway: KubeGateway,
    handler: Handler<S, KubeGateway>,
    namespaces: Option<Vec<String>>,
    hold_off: Duration,
    suspects: BTreeMap<String, i64>,
    /// Set once a cluster-wide list was forbidden (the shipped RBAC grants lists per task namespace only):
    /// from then on objects are listed in each namespace the records name.
    per_namespace: bool,
    /// Task namespaces named by the records of earlier passes.
    known_namespaces: BTreeSet<String>,
    tombstone_max_age: Option<Duration>,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl<S: Store> Reconciler<S> {
    /// A reconciler over the same store and Gateway the handler uses.
    pub fn new(
        handler: Handler<S, KubeGateway>,
        store: S,
        gateway: KubeGateway,
        hold_off: Duration,
    ) -> Self {
        let rm = handler.rm().name.clone();
        let namespaces = handler.rm().config.allowed_namespaces.clone();
        Reconciler {
            rm,
            store,
            gateway,
            handler,
            namespaces,
            hold_off,
            suspects: BTreeMap::new(),
            per_namespace: false,
            known_namespaces: BTreeSet::new(),
            tombstone_max_age: None,
        }
    }

    /// Purges finished allocations' records once they are older than `max_age`, the events stream's max
    /// age: no event about them can be served again, and without this the bucket, and every pass, grows
    /// with every allocation ever seen.
    pub fn purging_tombstones_after(mut self, max_age: Duration) -> Self {
        self.tombstone_max_age = Some(max_age);
        self
    }

    /// Reads what the plan needs. What is derived (claims, listeners, objects) is read BEFORE what it derives
    /// from (the records): a record lists its ports before they are claimed and exists before its objects, so
    /// anything seen here is still listed by the records read after it, unless its allocation really let it
    /// go. Read the other way round, a port recorded and claimed in between looked orphaned.
    async fn inputs(&mut self) -> Result<Inputs, String> {
        let mut i = Inputs {
            suspects: self.suspects.clone(),
            ..Inputs::default()
        };
        let g = &self.handler.rm().gateway;
        let prefix = names::port_key_prefix(&self.rm, &g.namespace, &g.name);
        for key in self.store.keys(&prefix).await.map_err(|e| e.to_string())? {
            let (Some(port), Some(e)) = (
                key.strip_prefix(&prefix).and_then(|p| p.parse().ok()),
                self.store.get(&key).await.map_err(|e| e.to_string())?,
            ) else {
                continue;
            };
            // A claim that cannot be read is never released: skipping it is the safe side.
            if let Ok(c) = serde_json::from_slice::<PortClaim>(&e.value) {
                i.claims.insert(port, (c, e.revision));
            }
        }
        // Only listeners this resource manager provably owns: others on a shared Gateway are not ours.
        i.listeners = self.gateway.view().owned;
        let listed = self.objects(&mut i).await?;
        for key in self
            .store
            .keys(&names::allocation_key_prefix(&self.rm))
            .await
            .map_err(|e| e.to_string())?
        {
            let Some(e) = self.store.get(&key).await.map_err(|e| e.to_string())? else {
                continue;
            };
            // A record that cannot be read would make its ports and objects look orphaned: stop the pass
            // rather than release what a live allocation may hold.
            let (Some((_, id)), Ok(r)) = (
                names::parse_allocation_key(&key),
                serde_json::from_slice::<Record>(&e.value),
            ) else {
                return Err(format!(
                    "allocation record {key} cannot be decoded; the pass stops without acting. Inspect it \
                     (itgctl allocations, or the KV bucket) and fix or delete it by hand"
                ));
            };
            i.revisions.insert(id.clone(), e.revision);
            i.records.insert(id, r);
        }
        i.tombstone_max_age = self
            .tombstone_max_age
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        for r in i.records.values() {
            if let Some(spec) = &r.spec {
                self.known_namespaces.insert(spec.namespace.clone());
            }
        }
        i.unlisted_namespaces = listed.map(|listed| {
            self.known_namespaces
                .iter()
                .filter(|n| !listed.contains(*n))
                .cloned()
                .collect()
        });
        Ok(i)
    }

    /// The Services and routes found by label: in the configured namespaces, else cluster-wide, else (once
    /// a cluster-wide list is forbidden) in each task namespace the records name. Returns the namespaces
    /// listed when that is not all of them.
    async fn objects(&mut self, i: &mut Inputs) -> Result<Option<BTreeSet<String>>, String> {
        if let Some(list) = &self.namespaces {
            i.objects = self
                .gateway
                .owned_objects(Some(list))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(None);
        }
        if !self.per_namespace {
            match self.gateway.owned_objects(None).await {
                Ok(objects) => {
                    i.objects = objects;
                    return Ok(None);
                }
                Err(e) if e.is_forbidden() => {
                    tracing::info!(resource_manager = %self.rm, error = %e, "listing Services and TCPRoutes cluster-wide is forbidden; listing them in each task namespace instead");
                    self.per_namespace = true;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        if self.known_namespaces.is_empty() {
            // The first pass of this reconciler (a one-off pass has no other): learn the task namespaces from
            // the records before listing, so it finds what is there.
            self.known_namespaces = self.record_namespaces().await?;
        }
        let mut listed = BTreeSet::new();
        for ns in &self.known_namespaces {
            match self
                .gateway
                .owned_objects(Some(std::slice::from_ref(ns)))
                .await
            {
                Ok(objects) => {
                    i.objects.extend(objects);
                    listed.insert(ns.clone());
                }
                // A namespace without the worker's RoleBinding holds nothing the worker could have made.
                Err(e) if e.is_forbidden() => {
                    tracing::debug!(resource_manager = %self.rm, namespace = %ns, "not allowed to list here; skipped");
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(Some(listed))
    }

    /// The task namespaces that the records of this resource manager name.
    async fn record_namespaces(&self) -> Result<BTreeSet<String>, String> {
        let mut out = BTreeSet::new();
        for key in self
            .store
            .keys(&names::allocation_key_prefix(&self.rm))
            .await
            .map_err(|e| e.to_string())?
        {
            if let Some(e) = self.store.get(&key).await.map_err(|e| e.to_string())?
                && let Ok(r) = serde_json::from_slice::<Record>(&e.value)
                && let Some(spec) = r.spec
            {
                out.insert(spec.namespace);
            }
        }
        Ok(out)
    }

    /// One pass: plans and, unless `dry_run`, acts. Returns what it did (or would do).
    ///
    /// # Errors
    /// A server could not be read; nothing was changed.
    pub async fn pass(&mut self, dry_run: bool) -> Result<Vec<Action>, String> {
        let inputs = self.inputs().await?;
        let hold_off = i64::try_from(self.hold_off.as_secs()).unwrap_or(i64::MAX);
        let (actions, suspects) = plan(&self.rm, &inputs, now(), hold_off);
        if dry_run {
            return Ok(actions);
        }
        self.suspects = suspects;
        let g = &self.handler.rm().gateway;
        for a in &actions {
            let result = match a {
                Action::ReleaseClaim { port, revision, .. } => {
                    let key = names::port_key(&self.rm, &g.namespace, &g.name, *port);
                    self.store
                        .delete(&key, *revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Action::RemoveListener { name } => self
                    .gateway
                    .remove_owned_listener(name)
                    .await
                    .map_err(|e| e.to_string()),
                Action::DeleteObject { object } => self
                    .gateway
                    .delete_object(object)
                    .await
                    .map_err(|e| e.to_string()),
                Action::Repair { allocation_id } => self.handler.repair(allocation_id).await,
                Action::PurgeTombstone {
                    allocation_id,
                    revision,
                } => self
                    .store
                    .purge(&names::allocation_key(&self.rm, allocation_id), *revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            match result {
                Ok(()) => {
                    tracing::info!(resource_manager = %self.rm, action = ?a, "reconciler repaired");
                    metrics::get().reconciler_action(&self.rm, a.label());
                }
                Err(e) => {
                    tracing::warn!(resource_manager = %self.rm, action = ?a, error = %e, "reconciler action failed; next pass retries")
                }
            }
        }
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::ObjectKind;
    use crate::state::{Binding, Phase};

    const RM: &str = "rm";

    fn mk_record(id: &str, phase: Phase, port: u16, updated_at: i64) -> Record {
        Record {
            allocation_id: id.into(),
            resource_manager: RM.into(),
            phase,
            spec: None,
            started_event_id: None,
            ports: vec![Binding {
                name: "jupyter".into(),
                container_port: 8888,
                gateway_port: port,
            }],
            released: vec![],
            ended_event_id: None,
            failure: None,
            created_at: updated_at,
            updated_at,
        }
    }

    fn mk_object(id: &str, kind: ObjectKind, created: i64) -> OwnedObject {
        OwnedObject {
            kind,
            namespace: "team-a".into(),
            name: names::object_name(RM, id, "jupyter"),
            created,
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
}
