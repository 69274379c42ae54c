//! A repair, for the reconciler: drive one allocation toward its record without an event, and answer
//! nothing.

use super::{Handler, MAX_ROUNDS, Pass, Purpose, drive_msg};
use crate::cluster::Cluster;
use crate::store::Store;

impl<S: Store, C: Cluster> Handler<S, C> {
    /// Drives one allocation toward its record without an event: exposes what a live allocation lacks,
    /// finishes the cleanup of an ending one. For the reconciler; nothing is replied.
    ///
    /// # Errors
    /// Why the pass did not complete (it is tried again on the next reconcile).
    pub async fn repair(&self, allocation_id: &str) -> Result<(), String> {
        let key = self.rm.allocation_key(allocation_id);
        for _ in 0..MAX_ROUNDS {
            let Some((rec, rev)) = self.read(&key).await.map_err(|e| e.to_string())? else {
                return Ok(());
            };
            let pass = if rec.phase.wants_exposure() {
                self.expose(&key, rec, rev, &mut Vec::new(), Purpose::Repair)
                    .await
            } else {
                self.cleanup(&key, &rec, rev, &mut Vec::new()).await
            };
            match pass {
                Ok(Pass::Settled(_)) => return Ok(()),
                Ok(Pass::Moved) => continue,
                Err(e) => return Err(drive_msg(e)),
            }
        }
        Err(format!(
            "allocation {allocation_id:?}: the record kept changing"
        ))
    }
}
