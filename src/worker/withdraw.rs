//! Withdrawing: remove the objects route, listener, Service, then free the ports this allocation still
//! holds; a failed allocation is recorded before its cleanup.

use super::{DriveError, Handler, Pass, Placed, now, refused_ns};
use crate::claims;
use crate::cluster::{Cluster, ClusterError};
use crate::crashpoint;
use crate::state::{Failure, Phase, Record};
use crate::store::{Outcome, Store, encode};

impl<S: Store, C: Cluster> Handler<S, C> {
    /// Withdraws the objects of `bindings`, each on its Gateway, and frees their ports where this
    /// allocation still holds them. With `refused_ns`, the task namespace refused the allocation's applies,
    /// so nothing of it is there and a forbidden delete there is not a leak; anywhere else a 403 is an
    /// error, retried.
    pub(super) async fn withdraw_all(
        &self,
        allocation_id: &str,
        bindings: &[Placed],
        ns: Option<&str>,
        refused_ns: bool,
    ) -> Result<(), DriveError> {
        for (at, b) in bindings {
            match self.clusters[*at]
                .withdraw(&self.rm.name, allocation_id, ns, b)
                .await
            {
                Ok(()) => {}
                Err(e) if refused_ns && e.is_forbidden() => {
                    tracing::debug!(error = %e, "the task namespace refused the allocation; nothing of it is there");
                }
                Err(
                    ClusterError::Transient(m)
                    | ClusterError::Capacity(m)
                    | ClusterError::Permanent(m)
                    | ClusterError::Forbidden(m),
                ) => {
                    return Err(DriveError::Kube(m));
                }
            }
        }
        let key = self.rm.allocation_key(allocation_id);
        for (at, b) in bindings {
            let on = &self.rm.pool[*at].gateway;
            claims::release(&self.store, &self.rm, on, &key, &b.name, b.gateway_port).await?;
        }
        Ok(())
    }

    /// What a pass withdraws: the ports the record holds, and those its cleanup released while a late apply
    /// from a pass that gave up can still land (within the reconciler's hold-off). Past that, stray objects
    /// are the reconciler's, and a duplicate or replayed event about a long-finished allocation costs no
    /// apiserver call.
    pub(super) fn to_withdraw(&self, rec: &Record) -> Vec<Placed> {
        let hold_off =
            i64::try_from(self.timing.reconcile_hold_off.0.as_secs()).unwrap_or(i64::MAX);
        if now().saturating_sub(rec.updated_at) < hold_off {
            self.known_bindings(rec)
        } else {
            let at = self.placement(Some(rec));
            rec.ports.iter().map(|b| (at, b.clone())).collect()
        }
    }

    /// Removes everything of the allocation, in the order route, listener, Service, then frees its ports.
    pub(super) async fn cleanup(
        &self,
        key: &str,
        rec: &Record,
        rev: u64,
        touched: &mut Vec<Placed>,
    ) -> Result<Pass, DriveError> {
        let ns = rec.spec.as_ref().map(|s| s.namespace.clone());
        let mut all = self.to_withdraw(rec);
        for (at, b) in touched.iter() {
            super::add_touched(&mut all, *at, b);
        }
        self.withdraw_all(&rec.allocation_id, &all, ns.as_deref(), refused_ns(rec))
            .await?;
        touched.clear();
        if rec.is_clean() && rec.phase != Phase::Ending {
            return Ok(Pass::Settled(Box::new(rec.clone())));
        }
        let next = rec.cleaned(now());
        match self.store.update(key, encode(&next), rev).await? {
            Outcome::Written(_) => {
                crashpoint::reach("cleanup.record_cleaned");
                Ok(Pass::Settled(Box::new(next)))
            }
            Outcome::Conflict => Ok(Pass::Moved),
        }
    }

    pub(super) async fn fail(
        &self,
        key: &str,
        rec: &Record,
        rev: u64,
        failure: Failure,
        touched: &mut Vec<Placed>,
    ) -> Result<Pass, DriveError> {
        let next = rec.failed(failure, now());
        let rev = match self.store.update(key, encode(&next), rev).await? {
            Outcome::Written(r) => r,
            Outcome::Conflict => return Ok(Pass::Moved),
        };
        self.cleanup(key, &next, rev, touched).await
    }
}
