//! The reconciler: a periodic, leader-less pass per resource manager that compares the KV records, the port
//! claims, the Gateway's listeners and the objects found by label, then repairs live allocations that lack
//! something and removes orphans.
//!
//! Deciding is pure ([`crate::plan`]); only [`Reconciler::pass`] talks to the servers, through the store and
//! cluster seams. Many workers may run it at
//! once: every removal is idempotent, a claim is released only at the revision read, and anything touched
//! by an allocation within the hold-off is left alone, so an allocation in flight is never taken for an
//! orphan. A listener, whose age the Gateway does not record, must be seen orphaned in two passes a hold-off
//! apart.
//!
//! A removal has no precondition that sees an identical re-apply (a listener's none at all, an object's
//! uid and resourceVersion stay the same), so it is judged again on the records read just before it, and an
//! allocation whose record was written between that reading and the removal is repaired after it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::claims;
use crate::cluster::Inventory;
use crate::metrics;
use crate::names;
use crate::plan::{Action, Inputs, plan};
use crate::state::Record;
use crate::store::Store;
use crate::worker::Handler;

/// Runs passes for one resource manager.
pub struct Reconciler<S, C> {
    rm: String,
    store: S,
    gateway: C,
    handler: Handler<S, C>,
    namespaces: Option<Vec<String>>,
    hold_off: Duration,
    suspects: BTreeMap<String, i64>,
    /// Set once a cluster-wide list was forbidden (the shipped RBAC grants lists per task namespace only):
    /// from then on objects are listed in each namespace the records name.
    per_namespace: bool,
    /// Task namespaces named by the records of earlier passes.
    known_namespaces: BTreeSet<String>,
    tombstone_max_age: Option<Duration>,
    /// Which Gateway of the resource manager's pool this reconciler judges (its `gateway`), and whether
    /// there is a pool at all.
    at: usize,
    pooled: bool,
}

fn now() -> i64 {
    crate::clock::unix_secs()
}

impl<S: Store, C: Inventory> Reconciler<S, C> {
    /// A reconciler over the same store and Gateway the handler uses.
    pub fn new(handler: Handler<S, C>, store: S, gateway: C, hold_off: Duration) -> Self {
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
            at: 0,
            pooled: false,
        }
    }

    /// Judges Gateway `at` of the resource manager's pool (its `gateway` is that Gateway's cluster): its
    /// claims and listeners, and, for the resource manager's own Gateway (0), what belongs to no Gateway.
    pub fn judging(mut self, at: usize) -> Self {
        self.pooled = self.handler.rm().pool.len() > 1;
        self.at = at;
        self
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
        let rm = self.handler.rm();
        let on = &rm.pool[self.at.min(rm.pool.len() - 1)].gateway;
        if self.pooled {
            i.here = Some(on.clone());
            i.secondary = self.at != 0;
        }
        i.claims = claims::claims(&self.store, rm, on)
            .await
            .map_err(|e| e.to_string())?;
        // Only listeners this resource manager provably owns: others on a shared Gateway are not ours.
        let view = self.gateway.view();
        i.listeners = view.owned.clone();
        i.listener_ports = view
            .owned_port_of
            .iter()
            .filter(|(name, _)| view.owned.contains(*name))
            .map(|(name, port)| (name.clone(), *port))
            .collect();
        let listed = self.objects(&mut i).await?;
        (i.records, i.revisions) = self.records().await?;
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

    /// Every record of this resource manager, and its revision, by allocation id.
    async fn records(&self) -> Result<(BTreeMap<String, Record>, BTreeMap<String, u64>), String> {
        let (mut records, mut revisions) = (BTreeMap::new(), BTreeMap::new());
        for (key, e) in self
            .store
            .entries(&names::allocation_key_prefix(&self.rm))
            .await
            .map_err(|e| e.to_string())?
        {
            // A record that cannot be read would make its ports and objects look orphaned: stop the pass
            // rather than release what a live allocation may hold.
            let decoded = crate::state::decode(&e.value);
            if let Err(crate::state::DecodeError::Newer { found }) = &decoded {
                metrics::newer_record(
                    &self.rm,
                    &key,
                    *found,
                    "this reconciler's pass stops without acting",
                );
            }
            let (Some((_, id)), Ok(r)) = (names::parse_allocation_key(&key), decoded) else {
                return Err(format!(
                    "allocation record {key} cannot be read by this worker; the pass stops without acting. \
                     Inspect it (itgctl describe, or the KV bucket): a record of a newer version belongs to \
                     newer workers, anything else fix or delete by hand"
                ));
            };
            revisions.insert(id.clone(), e.revision);
            records.insert(id, r);
        }
        Ok((records, revisions))
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
        for (_, e) in self
            .store
            .entries(&names::allocation_key_prefix(&self.rm))
            .await
            .map_err(|e| e.to_string())?
        {
            if let Ok(r) = serde_json::from_slice::<Record>(&e.value)
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
        // Every reconciler of the pool reads every record: the first one reports.
        if self.at == 0 && !dry_run {
            let age = crate::state::oldest_exposing_age(inputs.records.values(), now());
            metrics::get()
                .oldest_exposing
                .get_or_create(&metrics::rm(&self.rm))
                .set(age);
        }
        let hold_off = i64::try_from(self.hold_off.as_secs()).unwrap_or(i64::MAX);
        let (mut actions, suspects) = plan(&self.rm, &inputs, now(), hold_off);
        if dry_run {
            return Ok(actions);
        }
        self.suspects = suspects;
        // A listener's removal has no precondition, and an object's (the uid and resourceVersion listed)
        // does not see an identical re-apply, which keeps the resourceVersion. So a removal is judged again
        // on the records as they are now, and an allocation whose record was written between that judgement
        // and the removal (a replay, say, which writes its record before it applies) is repaired after it.
        let mut judged = None;
        if actions.iter().any(|a| a.removes().is_some()) {
            let mut fresh = inputs.clone();
            (fresh.records, fresh.revisions) = self.records().await?;
            let (again, _) = plan(&self.rm, &fresh, now(), hold_off);
            actions.retain(|a| a.removes().is_none() || again.contains(a));
            judged = Some(fresh.revisions);
        }
        let mut removed = BTreeSet::new();
        for a in &actions {
            if self.act(a).await
                && let Some(name) = a.removes()
            {
                removed.insert(name.to_owned());
            }
        }
        if let Some(judged) = judged
            && !removed.is_empty()
        {
            let (records, revisions) = self.records().await?;
            for (id, r) in &records {
                let since = revisions.get(id) != judged.get(id);
                if since
                    && r.phase.wants_exposure()
                    && crate::plan::names_of(&self.rm, id, r).any(|n| removed.contains(&n))
                {
                    let repair = Action::Repair {
                        allocation_id: id.clone(),
                    };
                    self.act(&repair).await;
                    actions.push(repair);
                }
            }
        }
        Ok(actions)
    }

    /// Does one action, logs and counts it; `true` when it succeeded.
    async fn act(&self, a: &Action) -> bool {
        let result = match a {
            Action::ReleaseClaim { port, revision, .. } => {
                let rm = self.handler.rm();
                let on = &rm.pool[self.at.min(rm.pool.len() - 1)].gateway;
                claims::release_at(&self.store, rm, on, *port, *revision)
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
                true
            }
            Err(e) => {
                tracing::warn!(resource_manager = %self.rm, action = ?a, error = %e, "reconciler action failed; next pass retries");
                false
            }
        }
    }
}
