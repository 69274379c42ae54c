//! Exposing: choose and claim ports (all or none), apply the objects through the cluster seam, wait for
//! the controller's verdict, record `Ready`.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{DriveError, Handler, Pass, Purpose, REFUSAL_SETTLE, WAIT_SLICE, add_touched, now};
use crate::allocator::{self, PortView};
use crate::claims;
use crate::clock;
use crate::cluster::{Cluster, ClusterError, Exposure};
use crate::contract::FailureReason;
use crate::crashpoint;
use crate::names;
use crate::readiness::Verdict;
use crate::state::{Binding, Failure, Phase, Record};
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
        touched: &mut Vec<Binding>,
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
                // An allocation holding no port yet is placed on the pool's roomiest Gateway.
                let place =
                    (rec.ports.is_empty() && self.clusters.len() > 1).then(|| self.roomiest());
                let at = place.unwrap_or_else(|| self.placement(Some(&rec)));
                let proxies: Vec<&str> = unbound.iter().map(|p| p.name.as_str()).collect();
                let chosen = match self.choose_ports(&rec, at, &proxies, &lost_ports).await {
                    Ok(chosen) => chosen,
                    // All or none: an allocation that waits gives back what it holds, so two half-served
                    // allocations never wait on each other.
                    Err(DriveError::Capacity(m))
                        if !rec.ports.is_empty() && rec.phase == Phase::Exposing =>
                    {
                        let ns = rec.spec.as_ref().map(|s| s.namespace.clone());
                        return self.give_back(key, &rec, rev, ns.as_deref(), m).await;
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
                // Intent first: a port key is only ever created after the record lists it, so cleanup finds it.
                match self.store.update(key, encode(&next), rev).await? {
                    Outcome::Written(r) => (rec, rev) = (next, r),
                    Outcome::Conflict => return Ok(Pass::Moved),
                }
                crashpoint::reach("expose.ports_recorded");
            }
            let mut lost = Vec::new();
            let on = &self.rm.pool[self.placement(Some(&rec))].gateway;
            for b in &rec.ports {
                add_touched(touched, b);
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
                    if err.is_port_taken() {
                        self.refused.note(
                            at,
                            e.binding.gateway_port,
                            self.timing.capacity_deadline.0,
                        );
                    }
                    return self
                        .give_back(key, &rec, rev, Some(&spec.namespace), err.to_string())
                        .await;
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
                        for b in &rec.ports {
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
                        let why = format!(
                            "the Gateway's controller reports listener {listener} conflicted ({reason}): {message}; choosing another port"
                        );
                        return self
                            .give_back(key, &rec, rev, Some(&spec.namespace), why)
                            .await;
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
            && let Some(why) = self.unserved(at, &rec).await
        {
            return match self
                .give_back(key, &rec, rev, Some(&spec.namespace), why)
                .await
            {
                // The retry chooses again; past the deadline the started's failure quotes `why` as it is.
                Err(DriveError::Capacity(m)) => Err(DriveError::Unserved(m)),
                other => other,
            };
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
        let n = proxies.len();
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
        let unserved = self.unserved_ports.current(at);
        // A listener of this allocation that stands while its record holds no binding for it (the state
        // was rebuilt by a replay after the bucket was lost, a site's leaf losing its store, say) keeps
        // its port: the address the master was given stays the one `ready` carries.
        let mut kept: Vec<Option<u16>> = Vec::with_capacity(n);
        for proxy in proxies {
            let name = names::object_name(&self.rm.name, &rec.allocation_id, proxy);
            let standing = view.owned_port_of.get(&name).copied().filter(|p| {
                self.rm.range.contains(p)
                    && !self.rm.excluded.contains(p)
                    && !view.foreign_ports.contains(p)
                    && !taken.contains(p)
                    && !unserved.contains(p)
                    && !kept.contains(&Some(*p))
            });
            let free = match standing {
                Some(p) => claims::unclaimed(
                    &self.store,
                    &self.rm.port_key_prefix(g),
                    std::iter::once(p),
                    1,
                    Duration::ZERO,
                )
                .await?
                .first()
                .copied(),
                None => None,
            };
            kept.push(free);
        }
        taken.extend(kept.iter().flatten());
        let rest = kept.iter().filter(|k| k.is_none()).count();
        let mut pv = PortView {
            excluded: self.rm.excluded.clone(),
            foreign: view.foreign_ports.clone(),
            taken: taken.iter().chain(&unserved).copied().collect(),
        };
        let seed = clock::random_u32();
        let hold_off = self.timing.reconcile_hold_off.0;
        let mut chosen =
            claims::choose(&self.store, &self.rm, g, &pv, seed, rest, hold_off).await?;
        // A port the data plane refused is a hint, not a claim: trying it again beats waiting for capacity,
        // and a data plane that serves no port at all is then answered as such, not as a full range.
        if chosen.len() < rest && !unserved.is_empty() {
            pv.taken = taken;
            chosen = claims::choose(&self.store, &self.rm, g, &pv, seed, rest, hold_off).await?;
        }
        if chosen.len() < rest {
            return Err(DriveError::Capacity(format!(
                "no free port in {}-{} on Gateway {}/{} ({} usable)",
                self.rm.range.start(),
                self.rm.range.end(),
                g.namespace,
                g.name,
                allocator::capacity(self.rm.range.clone(), &pv)
            )));
        }
        let mut chosen = chosen.into_iter();
        Ok(kept
            .into_iter()
            .filter_map(|k| k.or_else(|| chosen.next()))
            .collect())
    }

    /// Gives back every binding of an allocation still exposing, and asks for redelivery once capacity
    /// frees: one holding some ports while it waits for others could wait on another doing the same.
    pub(super) async fn give_back(
        &self,
        key: &str,
        rec: &Record,
        rev: u64,
        ns: Option<&str>,
        why: String,
    ) -> Result<Pass, DriveError> {
        self.withdraw_all(
            self.placement(Some(rec)),
            &rec.allocation_id,
            &rec.ports,
            ns,
            false,
        )
        .await?;
        let mut next = rec.clone();
        // Remembered, not forgotten: another pass of this allocation may still land an apply on them, and
        // the allocation's cleanup must then find it.
        for b in next.ports.drain(..) {
            add_touched(&mut next.given_back, &b);
        }
        next.updated_at = now();
        if self.store.update(key, encode(&next), rev).await? == Outcome::Conflict {
            return Ok(Pass::Moved);
        }
        Err(DriveError::Capacity(why))
    }

    /// The Gateway of the pool with the most room: free listener slots and free ports, as its watch shows
    /// them (the first on a tie). A hint: the port claims decide, and a full Gateway gives the allocation
    /// back to be placed again.
    pub(super) fn roomiest(&self) -> usize {
        let room = |c: &C| {
            let view = c.view();
            if !view.present {
                return 0;
            }
            let slots = self.rm.listener_limit.saturating_sub(view.listeners.len());
            let pv = PortView {
                excluded: self.rm.excluded.clone(),
                foreign: view.foreign_ports.clone(),
                taken: view.owned_ports.clone(),
            };
            slots.min(allocator::candidates(self.rm.range.clone(), &pv, 0).count())
        };
        let mut best = (0, 0);
        for (at, c) in self.clusters.iter().enumerate() {
            let r = room(c);
            if r > best.1 {
                best = (at, r);
            }
        }
        best.0
    }
}
