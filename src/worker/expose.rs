//! Exposing: choose and claim ports (all or none), apply the objects through the cluster seam, wait for
//! the controller's verdict, record `Ready`.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{
    DriveError, Handler, Pass, Placed, Purpose, REFUSAL_SETTLE, WAIT_SLICE, add_touched, now,
};
use crate::allocator::{self, PortView};
use crate::claims;
use crate::clock;
use crate::cluster::{Cluster, ClusterError, Exposure};
use crate::contract::FailureReason;
use crate::crashpoint;
use crate::names;
use crate::readiness::Verdict;
use crate::state::{Binding, Failure, GivenBack, Phase, Record};
use crate::store::{Outcome, Store, encode};

impl<S: Store, C: Cluster> Handler<S, C> {
    /// Claims ports for every proxy port of the record, applies the Kubernetes objects and, once the
    /// Gateway's controller reports them reachable (or the resource manager does not wait for it), marks it
    /// Ready.
    pub(super) async fn expose(
        &self,
        key: &str,
        mut rec: Record,
        mut rev: u64,
        touched: &mut Vec<Placed>,
        purpose: Purpose,
    ) -> Result<Pass, DriveError> {
        let Some(spec) = rec.spec.clone() else {
            return Err(DriveError::Fail(Failure {
                reason: FailureReason::InvalidEvent,
                message: "the allocation record has no spec; publish ended and started again"
                    .into(),
                retryable: false,
                status: None,
            }));
        };
        // Ports this pass lost to another allocation's claim: the search's index may not show those claims
        // yet, and choosing them again would lose again.
        let mut lost_ports = BTreeSet::new();
        loop {
            let unbound: Vec<_> = rec.unbound().into_iter().cloned().collect();
            if !unbound.is_empty() {
                // An allocation holding no port yet goes where its listeners stand (a record rebuilt
                // after the bucket was lost keeps its address), else on the pool's roomiest Gateway.
                let place = (rec.ports.is_empty() && self.clusters.len() > 1)
                    .then(|| self.standing(&rec).unwrap_or_else(|| self.roomiest()));
                let at = place.unwrap_or_else(|| self.placement(Some(&rec)));
                let proxies: Vec<&str> = unbound.iter().map(|p| p.name.as_str()).collect();
                let chosen = match self.choose_ports(&rec, at, &proxies, &lost_ports).await {
                    Ok(chosen) => chosen,
                    // All or none: an allocation that waits gives back what it holds, so two half-served
                    // allocations never wait on each other.
                    Err(DriveError::Capacity(m))
                        if !rec.ports.is_empty() && rec.phase == Phase::Exposing =>
                    {
                        return self
                            .give_back(key, &rec, rev)
                            .await?
                            .then_wait(DriveError::Capacity(m));
                    }
                    Err(e) => return Err(e),
                };
                let mut next = rec.clone();
                if let Some(at) = place {
                    next.gateway = Some(self.rm.pool[at].gateway.clone());
                }
                for (p, port) in unbound.iter().zip(chosen) {
                    next.ports.push(Binding {
                        name: p.name.clone(),
                        container_port: p.port,
                        gateway_port: port,
                    });
                }
                next.updated_at = now();
                if next.bound_at == 0 {
                    next.bound_at = next.updated_at;
                }
                // Intent first: a port key is only ever created after the record lists it, so cleanup finds it.
                match self.store.update(key, encode(&next), rev).await? {
                    Outcome::Written(r) => (rec, rev) = (next, r),
                    Outcome::Conflict => return Ok(Pass::Moved),
                }
                crashpoint::reach("expose.ports_recorded");
            }
            let mut lost = Vec::new();
            let here = self.placement(Some(&rec));
            let on = &self.rm.pool[here].gateway;
            for b in &rec.ports {
                add_touched(touched, here, b);
                if !claims::claim(
                    &self.store,
                    &self.rm,
                    on,
                    key,
                    &b.name,
                    b.gateway_port,
                    now(),
                )
                .await?
                {
                    tracing::debug!(port = b.gateway_port, proxy = %b.name, "the chosen port was claimed by another allocation first; choosing again");
                    lost.push(b.name.clone());
                    lost_ports.insert(b.gateway_port);
                }
                crashpoint::reach("expose.port_claimed");
            }
            if lost.is_empty() {
                break;
            }
            let mut next = rec.clone();
            next.ports.retain(|b| !lost.contains(&b.name));
            match self.store.update(key, encode(&next), rev).await? {
                Outcome::Written(r) => (rec, rev) = (next, r),
                Outcome::Conflict => return Ok(Pass::Moved),
            }
        }
        let at = self.placement(Some(&rec));
        let cluster = &self.clusters[at];
        if !cluster.view().present {
            let g = &self.rm.pool[at].gateway;
            return Err(DriveError::Kube(format!(
                "Gateway {}/{} was not found; create it or fix internal_task_gateway",
                g.namespace, g.name
            )));
        }
        let exposures: Vec<Exposure<'_>> = rec
            .ports
            .iter()
            .map(|b| Exposure {
                rm: &self.rm.name,
                allocation_id: &rec.allocation_id,
                spec: &spec,
                binding: b,
            })
            .collect();
        for e in &exposures {
            match cluster.expose(e).await {
                Ok(()) => {}
                // The Gateway refused a listener (no slot left, or the port is taken there): an allocation
                // still exposing gives back everything it holds, as when no port is free, so two of them
                // never wait on each other's slots; a port found taken is not chosen again for a while.
                Err(err @ ClusterError::Capacity(_)) if rec.phase == Phase::Exposing => {
                    let given = self.give_back(key, &rec, rev).await?;
                    if given.given() && err.is_port_taken() {
                        self.refused.note(
                            at,
                            e.binding.gateway_port,
                            self.timing.capacity_deadline.0,
                        );
                    }
                    return given.then_wait(DriveError::Capacity(err.to_string()));
                }
                Err(_) if self.moved(key, rev).await? => return Ok(Pass::Moved),
                Err(e) => return Err(e.into()),
            }
            // An ended (or another pass) may have moved the record while this apply was on its way, and its
            // cleanup may have freed the port already: go round at once, so the next pass undoes the apply
            // before someone else claims the port.
            if self.moved(key, rev).await? {
                return Ok(Pass::Moved);
            }
        }
        let waits = self.rm.config.wait_for_controller;
        match purpose {
            // The started's own delivery moves it to Ready once the controller agrees; a repair only
            // puts objects back.
            Purpose::Repair if waits && rec.phase == Phase::Exposing => {
                return Ok(Pass::Settled(Box::new(rec.clone())));
            }
            Purpose::Answer if waits => {
                // A Ready allocation asked again waits a whole slice; an exposing one no longer than its
                // deadline allows.
                let since = (rec.phase == Phase::Exposing).then_some(rec.updated_at);
                match self.await_controller(cluster, &exposures, since).await {
                    Verdict::Reachable => {}
                    // Another listener shares the port: give everything back and choose again, the
                    // conflicted port avoided for a while.
                    Verdict::Conflicted {
                        listener,
                        reason,
                        message,
                    } if rec.phase == Phase::Exposing => {
                        let given = self.give_back(key, &rec, rev).await?;
                        for b in rec.ports.iter().filter(|_| given.given()) {
                            if names::object_name(&self.rm.name, &rec.allocation_id, &b.name)
                                == listener
                            {
                                self.refused.note(
                                    at,
                                    b.gateway_port,
                                    self.timing.capacity_deadline.0,
                                );
                            }
                        }
                        return given.then_wait(DriveError::Capacity(format!(
                            "the Gateway's controller reports listener {listener} conflicted ({reason}): {message}; choosing another port"
                        )));
                    }
                    Verdict::Refused { reason, message }
                    | Verdict::Conflicted {
                        reason, message, ..
                    } => {
                        return Err(DriveError::Fail(Failure {
                            reason: FailureReason::GatewayRejected,
                            message: format!(
                                "the Gateway's controller refused it ({reason}): {message}; fix the Gateway or the task's Service, then publish the started event again"
                            ),
                            retryable: false,
                            status: None,
                        }));
                    }
                    Verdict::Pending(_) if self.moved(key, rev).await? => {
                        return Ok(Pass::Moved);
                    }
                    Verdict::Pending(message) => {
                        return Err(DriveError::Waiting {
                            message,
                            since: rec.updated_at,
                        });
                    }
                }
            }
            _ => {}
        }
        // The status is the controller's opinion: a port its data plane does not serve is chosen again.
        if purpose == Purpose::Answer
            && rec.phase == Phase::Exposing
            && self.rm.config.probes_data_plane()
            && let Some((refused, why)) = self.unserved(at, &rec).await
        {
            // A refusal seen by a pass whose record moved meanwhile (an ended withdrew the listener, another
            // pass made it ready) says nothing of the port: only a won give-back notes it.
            let given = self.give_back(key, &rec, rev).await?;
            if given.given() {
                self.note_unserved(at, &refused);
            }
            // The retry chooses again; past the deadline the started's failure quotes `why` as it is.
            return given.then_wait(DriveError::Unserved(why));
        }
        // The record must not have moved while the objects were applied: if an ended slipped in, its
        // cleanup may have run before these applies, and the next pass must undo them.
        if rec.phase == Phase::Exposing {
            let mut next = rec.clone();
            next.phase = Phase::Ready;
            next.updated_at = now();
            match self.store.update(key, encode(&next), rev).await? {
                Outcome::Written(_) => rec = next,
                Outcome::Conflict => return Ok(Pass::Moved),
            }
            crashpoint::reach("expose.ready_recorded");
        } else if self.moved(key, rev).await? {
            return Ok(Pass::Moved);
        }
        Ok(Pass::Settled(Box::new(rec)))
    }

    /// Waits, for at most one slice (less when the deadline counted from `since` is nearer), until the
    /// controller's verdict on `exposures` is reachable or a refusal has stood for [`REFUSAL_SETTLE`].
    /// It reads the watches' views on every change they report; it neither polls the apiserver nor holds
    /// the Gateway write lock.
    pub(super) async fn await_controller(
        &self,
        cluster: &C,
        exposures: &[Exposure<'_>],
        since: Option<i64>,
    ) -> Verdict {
        let budget = since.map_or(WAIT_SLICE, |since| {
            let waited = u64::try_from(now().saturating_sub(since)).unwrap_or(0);
            self.timing
                .controller_deadline
                .0
                .saturating_sub(Duration::from_secs(waited))
                .min(WAIT_SLICE)
        });
        let start = clock::instant();
        let mut changes = cluster.changes();
        let mut refused_at: Option<clock::Instant> = None;
        loop {
            changes.borrow_and_update();
            let verdict = cluster.controller_verdict(exposures);
            let until = match &verdict {
                Verdict::Reachable => return verdict,
                Verdict::Refused { .. } | Verdict::Conflicted { .. } => {
                    let at = *refused_at.get_or_insert_with(clock::instant);
                    at + REFUSAL_SETTLE
                }
                Verdict::Pending(_) => {
                    refused_at = None;
                    start + budget
                }
            };
            if clock::instant() >= until {
                return verdict;
            }
            tokio::select! {
                biased;
                changed = changes.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(until).await;
                    }
                }
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Picks a port for each of `proxies` (in that order) that looks free on the pool's Gateway `at`:
    /// allowed by config, not a foreign listener's, not claimed in KV, not in `avoid`. A proxy port whose
    /// listener already stands keeps that listener's port when it is free.
    pub(super) async fn choose_ports(
        &self,
        rec: &Record,
        at: usize,
        proxies: &[&str],
        avoid: &BTreeSet<u16>,
    ) -> Result<Vec<u16>, DriveError> {
        let view = self.clusters[at].view();
        let g = &self.rm.pool[at].gateway;
        if !view.present {
            return Err(DriveError::Kube(format!(
                "Gateway {}/{} was not found; create it or fix internal_task_gateway",
                g.namespace, g.name
            )));
        }
        let ours_present = rec
            .ports
            .iter()
            .filter(|b| {
                view.listeners.contains(&names::object_name(
                    &self.rm.name,
                    &rec.allocation_id,
                    &b.name,
                ))
            })
            .count();
        let wanted = rec.spec.as_ref().map_or(0, |s| s.proxy_ports.len());
        if view.listeners.len() + wanted.saturating_sub(ours_present) > self.rm.listener_limit {
            return Err(DriveError::Capacity(format!(
                "Gateway {}/{} has {} of {} listeners in use",
                g.namespace,
                g.name,
                view.listeners.len(),
                self.rm.listener_limit
            )));
        }
        let mut taken: BTreeSet<u16> = rec.ports.iter().map(|b| b.gateway_port).collect();
        taken.extend(self.refused.current(at));
        taken.extend(avoid);
        // Each proxy prefers the port its listener stands on: a record rebuilt by a replay after the bucket
        // was lost keeps the address the master was given. Another allocation's standing listener keeps
        // its port from this one, its record may not be back yet.
        let ours = self.listener_names(rec);
        let preferred: Vec<Option<u16>> = proxies
            .iter()
            .map(|p| {
                let name = names::object_name(&self.rm.name, &rec.allocation_id, p);
                view.owned_port_of.get(&name).copied()
            })
            .collect();
        taken.extend(
            view.owned_port_of
                .iter()
                .filter(|(name, _)| !ours.contains(*name))
                .map(|(_, p)| *p),
        );
        let unserved = self.unserved_ports.current(at);
        let mut pv = PortView {
            excluded: self.rm.excluded.clone(),
            foreign: view.foreign_ports.clone(),
            taken: taken.iter().chain(&unserved).copied().collect(),
        };
        let seed = clock::random_u32();
        let hold_off = self.timing.reconcile_hold_off.0;
        let mut chosen =
            claims::choose_keeping(&self.store, &self.rm, g, &pv, &preferred, seed, hold_off)
                .await?;
        // A port the data plane refused is a hint, not a claim: trying it again beats waiting for capacity,
        // and a data plane that serves no port at all is then answered as such, not as a full range.
        if chosen.is_none() && !unserved.is_empty() {
            pv.taken = taken;
            chosen =
                claims::choose_keeping(&self.store, &self.rm, g, &pv, &preferred, seed, hold_off)
                    .await?;
        }
        chosen.ok_or_else(|| {
            DriveError::Capacity(format!(
                "no free port in {}-{} on Gateway {}/{} ({} usable)",
                self.rm.range.start(),
                self.rm.range.end(),
                g.namespace,
                g.name,
                allocator::capacity(self.rm.range.clone(), &pv)
            ))
        })
    }

    /// The names of every listener the allocation's spec asks for.
    fn listener_names(&self, rec: &Record) -> BTreeSet<String> {
        rec.spec
            .iter()
            .flat_map(|s| &s.proxy_ports)
            .map(|p| names::object_name(&self.rm.name, &rec.allocation_id, &p.name))
            .collect()
    }

    /// The Gateway of the pool where a listener of a record that never gave ports back stands: its record
    /// was rebuilt (the bucket was lost) and the master holds that Gateway's address.
    fn standing(&self, rec: &Record) -> Option<usize> {
        if !rec.given_back.is_empty() {
            return None;
        }
        let ours = self.listener_names(rec);
        self.clusters
            .iter()
            .position(|c| c.view().owned_port_of.keys().any(|n| ours.contains(n)))
    }

    /// Gives back every binding of an allocation still exposing, to choose again: one holding some ports
    /// while it waits for others could wait on another doing the same. Intent first: the compare-and-set
    /// that moves the bindings to `given_back` is won before anything is withdrawn or released, and then
    /// only what that won record gave back is. A pass that decided from a record that has moved since
    /// (another pass made it ready, an ended) changes nothing.
    pub(super) async fn give_back(
        &self,
        key: &str,
        rec: &Record,
        rev: u64,
    ) -> Result<GaveBack, DriveError> {
        let at = self.placement(Some(rec));
        let on = &self.rm.pool[at].gateway;
        let mut next = rec.clone();
        // Remembered, not forgotten: another pass of this allocation may still land an apply on them, and
        // the allocation's cleanup must then find it, on the Gateway it was on.
        for b in next.ports.drain(..) {
            let g = GivenBack {
                binding: b,
                gateway: Some(on.clone()),
            };
            if !next.given_back.contains(&g) {
                next.given_back.push(g);
            }
        }
        next.updated_at = now();
        let Outcome::Written(won) = self.store.update(key, encode(&next), rev).await? else {
            return Ok(GaveBack::Lost);
        };
        let given: Vec<Placed> = rec.ports.iter().map(|b| (at, b.clone())).collect();
        let ns = rec.spec.as_ref().map(|s| s.namespace.as_str());
        self.withdraw_all(&rec.allocation_id, &given, ns, false)
            .await?;
        Ok(GaveBack::Given {
            moved: self.moved(key, won).await?,
        })
    }

    /// The Gateway of the pool with the most room: free listener slots and free ports, as its watch shows
    /// them, less the ports its data plane refused or that were found taken (the first on a tie). A
    /// Gateway whose data plane looks down, or whose address the probe cannot reach, comes after every
    /// other with room. A hint: the port claims decide, and a full Gateway gives the allocation back to be
    /// placed again.
    pub(super) fn roomiest(&self) -> usize {
        let room = |at: usize, c: &C| {
            let view = c.view();
            if !view.present {
                return 0;
            }
            let slots = self.rm.listener_limit.saturating_sub(view.listeners.len());
            let mut taken = view.owned_ports.clone();
            taken.extend(self.unserved_ports.current(at));
            taken.extend(self.refused.current(at));
            let pv = PortView {
                excluded: self.rm.excluded.clone(),
                foreign: view.foreign_ports.clone(),
                taken,
            };
            slots.min(allocator::candidates(self.rm.range.clone(), &pv, 0).count())
        };
        let mut best = (0, (false, false, 0));
        for (at, c) in self.clusters.iter().enumerate() {
            let r = room(at, c);
            let key = (r > 0 && !self.down_now(at), !self.unreachable_now(at), r);
            if key > best.1 {
                best = (at, key);
            }
        }
        best.0
    }
}

/// What a give-back did.
pub(super) enum GaveBack {
    /// The record moved before the compare-and-set: nothing was given back, withdrawn or released.
    Lost,
    /// Given back, withdrawn and released; `moved` when the record moved again meanwhile (another pass
    /// chose again, and the withdrawal may have taken its objects), so the next round puts back what the
    /// record now wants.
    Given { moved: bool },
}

impl GaveBack {
    fn given(&self) -> bool {
        matches!(self, GaveBack::Given { .. })
    }

    /// `wait` when the ports were given back and nothing moved since, else go round.
    fn then_wait(self, wait: DriveError) -> Result<Pass, DriveError> {
        match self {
            GaveBack::Given { moved: false } => Err(wait),
            _ => Ok(Pass::Moved),
        }
    }
}
