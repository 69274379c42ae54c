//! An ended: mark the record ending, withdraw everything, release the ports, answer `removed`. An ended
//! never gives up: giving up would leak.

use super::{Handler, MAX_ROUNDS, Pass, drive_msg, now};
use crate::answers::{self, Handled};
use crate::cluster::Cluster;
use crate::contract::Ended;
use crate::crashpoint;
use crate::state::{self, EndedStep};
use crate::store::{Outcome, Store, StoreError, encode};

impl<S: Store, C: Cluster> Handler<S, C> {
    pub(super) async fn ended(&self, ev: &Ended) -> Result<Handled, String> {
        let key = self.rm.allocation_key(&ev.allocation_id);
        for _ in 0..MAX_ROUNDS {
            let current = match self.read(&key).await {
                Ok(c) => c,
                Err(e) => return e.handled(),
            };
            let step = state::on_ended(
                current.as_ref().map(|c| &c.0),
                &self.rm.name,
                &ev.allocation_id,
                ev.event_id,
                now(),
            );
            let (rec, rev) = match (step, current) {
                (EndedStep::Tombstone(t), _) => match self
                    .store
                    .create(&key, encode(&t))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Outcome::Written(_) => return Ok(answers::removed(&self.rm, ev.event_id, &t)),
                    Outcome::Conflict => continue,
                },
                (EndedStep::MarkEnding(next), Some((_, rev))) => match self
                    .store
                    .update(&key, encode(&next), rev)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Outcome::Written(rev) => {
                        crashpoint::reach("ended.ending_recorded");
                        (next, rev)
                    }
                    Outcome::Conflict => continue,
                },
                (EndedStep::Cleanup, Some(cur)) => cur,
                (_, None) => continue,
            };
            match self.cleanup(&key, &rec, rev, &mut Vec::new()).await {
                Ok(Pass::Settled(rec)) => return Ok(answers::removed(&self.rm, ev.event_id, &rec)),
                Ok(Pass::Moved) => continue,
                // An ended never gives up: giving up would leak. It is redelivered until it succeeds.
                Err(e) => return Err(drive_msg(e)),
            }
        }
        Err(format!(
            "allocation {:?}: the record kept changing for {MAX_ROUNDS} rounds",
            ev.allocation_id
        ))
    }

    /// Leaves the tombstone an `ended` leaves when the allocation has no record, and nothing else; `true`
    /// when it wrote one. For a replay, before it serves any started.
    ///
    /// # Errors
    /// The KV bucket could not be read or written.
    pub async fn tombstone(&self, ev: &Ended) -> Result<bool, StoreError> {
        let key = self.rm.allocation_key(&ev.allocation_id);
        if self.store.get(&key).await?.is_some() {
            return Ok(false);
        }
        match state::on_ended(None, &self.rm.name, &ev.allocation_id, ev.event_id, now()) {
            EndedStep::Tombstone(t) => Ok(matches!(
                self.store.create(&key, encode(&t)).await?,
                Outcome::Written(_)
            )),
            _ => Ok(false),
        }
    }
}
