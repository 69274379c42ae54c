//! The consumer loop: pulls events of one resource manager, serves each with a bounded number in flight, and
//! maps every outcome to an explicit acknowledgement (ack after the reply is stored, nak with backoff when
//! the event must wait). A transient pull error is logged and the loop continues; only shutdown ends it.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument;

use crate::answers::Handled;
use crate::cluster::Cluster;
use crate::config::WorkerConfig;
use crate::contract;
use crate::crashpoint;
use crate::delivery::{self, Deliveries, Next, Served};
use crate::metrics;
use crate::sink::{DeadLetter, Replier};
use crate::store::Store;
use crate::worker::{GaveUp, Handler};

pub use crate::delivery::redelivery_delay;

/// How the loop paces itself: the worker's settings and the consumer's ack wait.
#[derive(Debug, Clone)]
pub struct Pacing {
    pub worker: WorkerConfig,
    pub ack_wait: Duration,
    /// The consumer's maximum deliveries; -1 for unlimited.
    pub max_deliver: i64,
}

impl Pacing {
    /// Whether JetStream will not deliver an event again after this delivery.
    pub fn last_delivery(&self, delivered: i64) -> bool {
        Deliveries {
            max_deliver: self.max_deliver,
        }
        .last(delivered)
    }
}

/// Serves events until `shutdown` turns true; then stops pulling and lets the events in flight finish.
pub async fn run<S: Store, C: Cluster, R: Replier>(
    handler: Handler<S, C>,
    consumer: PullConsumer,
    replier: R,
    pacing: Pacing,
    shutdown: watch::Receiver<bool>,
) {
    let timing = &pacing.worker;
    let rm = handler.rm().name.clone();
    // Once shutdown has begun, events still in flight after the grace period are given back.
    let (abort_tx, abort) = watch::channel(false);
    {
        let (mut shutdown, grace) = (shutdown.clone(), timing.shutdown_timeout.0);
        tokio::spawn(async move {
            if shutdown.wait_for(|s| *s).await.is_ok() {
                tokio::time::sleep(grace).await;
                let _ = abort_tx.send(true);
            }
        });
    }
    while !*shutdown.borrow() {
        let messages = consumer
            .stream()
            .max_messages_per_batch(timing.concurrency)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(resource_manager = %rm, error = %e, "cannot pull events; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut stop = shutdown.clone();
        let until = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        messages
            .take_until(until)
            .for_each_concurrent(timing.concurrency, |m| {
                let (handler, replier, pacing, abort) =
                    (&handler, &replier, &pacing, abort.clone());
                async move {
                    match m {
                        Ok(msg) => serve(handler, replier, pacing, abort, msg).await,
                        Err(e) => tracing::warn!(error = %e, "pull error; continuing"),
                    }
                }
            })
            .await;
        if shutdown.has_changed().is_err() {
            break;
        }
    }
    tracing::info!(resource_manager = %rm, "consumer stopped");
}

async fn serve<S: Store, C: Cluster, R: Replier>(
    handler: &Handler<S, C>,
    replier: &R,
    pacing: &Pacing,
    mut abort: watch::Receiver<bool>,
    msg: jetstream::Message,
) {
    let timing = &pacing.worker;
    let rm = handler.rm().name.clone();
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let ack_wait = pacing.ack_wait.max(Duration::from_millis(300));
    let span = tracing::info_span!(
        "event",
        resource_manager = %rm,
        subject = %msg.subject,
        delivered,
        allocation_id = tracing::field::Empty,
        event_id = tracing::field::Empty,
    );
    async {
        let Some((_, kind)) = contract::parse_event_subject(&msg.subject) else {
            tracing::warn!("not an event subject; terminating it");
            ack(&msg, AckKind::Term).await;
            return;
        };
        // Tell JetStream the event is still being worked on, so a slow Gateway does not get it redelivered
        // to another worker in the middle.
        let handled = handler.handle(kind, &msg.payload);
        tokio::pin!(handled);
        let mut beat = tokio::time::interval(ack_wait / 3);
        beat.tick().await;
        // Progress is claimed for at most worker.kubernetes_deadline: a handler stuck longer is given up on
        // for this delivery, and the event comes back.
        let give_back = tokio::time::sleep(timing.kubernetes_deadline.0);
        tokio::pin!(give_back);
        let handled = loop {
            tokio::select! {
                biased;
                h = &mut handled => break Some(h),
                () = &mut give_back => break None,
                _ = beat.tick() => ack(&msg, AckKind::Progress).await,
                () = async { let _ = abort.wait_for(|a| *a).await; } => {
                    tracing::warn!("shutdown grace period over; giving the event back");
                    ack(&msg, AckKind::Nak(None)).await;
                    return;
                }
            }
        };
        let m = metrics::get();
        if delivered > 1 && handled.is_some() {
            m.redeliveries.get_or_create(&metrics::rm(&rm)).inc();
        }
        let deliveries = Deliveries {
            max_deliver: pacing.max_deliver,
        };
        let (stored, next) = match &handled {
            None => (None, delivery::next(kind, Served::Overran, delivered, deliveries, timing)),
            Some(Handled::Answer { reply, msg_id }) => {
                let stored = replier.publish(reply, msg_id).await.map_err(|e| e.to_string());
                // Noted before the ack: a give-up of a later duplicate must know the master may hold it.
                let noted = match &stored {
                    Ok(()) => handler.stored(reply).await.map_err(|e| {
                        tracing::warn!(error = %e, "the ready is stored, and the allocation's record could not note it; the event comes back to note it");
                    }),
                    Err(_) => Ok(()),
                };
                let served = match (&stored, noted) {
                    (Ok(()), Err(())) => Served::StoredUnnoted,
                    (Ok(()), Ok(())) => Served::Answered { stored: Ok(()) },
                    (Err(e), _) => Served::Answered {
                        stored: Err(e.as_str()),
                    },
                };
                let next = delivery::next(kind, served, delivered, deliveries, timing);
                (Some(stored), next)
            }
            Some(Handled::Done) => (None, Next::Ack),
            Some(Handled::Retry { why }) => (
                None,
                delivery::next(kind, Served::Retry { why }, delivered, deliveries, timing),
            ),
            Some(Handled::Defer { why }) => (
                None,
                delivery::next(kind, Served::Defer { why }, delivered, deliveries, timing),
            ),
        };
        match (&handled, &stored) {
            (Some(Handled::Answer { reply, .. }), Some(Ok(()))) => {
                match reply.kind() {
                    contract::ReplyKind::Ready => crashpoint::reach("reply.ready_published"),
                    contract::ReplyKind::Removed => {
                        crashpoint::reach("reply.removed_published");
                    }
                    contract::ReplyKind::Failed => {}
                }
                tracing::info!(reply = reply.kind().as_str(), "answered");
                m.event(&rm, kind.as_str(), reply.kind().as_str());
                note_failure(&rm, reply);
                if let (contract::ReplyKind::Ready, Ok(info)) = (reply.kind(), msg.info()) {
                    let age = jiff::Timestamp::now().as_nanosecond()
                        - info.published.unix_timestamp_nanos();
                    #[allow(clippy::cast_precision_loss)]
                    let secs = age.max(0) as f64 / 1e9;
                    m.started_to_ready
                        .get_or_create(&metrics::rm(&rm))
                        .observe(secs);
                }
            }
            (Some(Handled::Answer { .. }), Some(Err(e))) => {
                m.event(&rm, kind.as_str(), "reply_error");
                if let Next::Nak(_) = next {
                    tracing::warn!(error = %e, "reply not stored; the event will be redelivered");
                }
            }
            (Some(Handled::Retry { why }), _) => {
                if let Next::Nak(delay) = next {
                    m.event(&rm, kind.as_str(), "retry");
                    tracing::info!(why = %why, retry_in = ?delay, "not served yet; will retry");
                }
            }
            (Some(Handled::Defer { why }), _) => {
                if let Next::Nak(delay) = next {
                    m.event(&rm, kind.as_str(), "retry");
                    tracing::warn!(why = %why, retry_in = ?delay, "left for a newer worker; will retry");
                }
            }
            (None, _) => {
                if let Next::Nak(_) = next {
                    tracing::warn!(timeout = ?timing.kubernetes_deadline.0, "not served within worker.kubernetes_deadline; giving the event back");
                    m.event(&rm, kind.as_str(), "retry");
                }
            }
            _ => {}
        }
        match next {
            Next::Ack => ack(&msg, AckKind::Ack).await,
            Next::Nak(delay) => ack(&msg, AckKind::Nak(Some(delay))).await,
            Next::Requeue { why } => {
                m.event(&rm, kind.as_str(), "requeued");
                requeue(replier, &msg, &why).await;
            }
            Next::GiveUp { cause, why } => {
                give_up(handler, replier, &msg, kind, &why, cause).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// The last allowed delivery of any other event failed. It is kept in the dead-letter stream, a started is
/// answered `failed` and what it holds is withdrawn, and the event is terminated. If the dead letter cannot
/// be stored the event is naked; JetStream will not deliver it again, but the `ended` or a resend repairs
/// what it left.
async fn give_up<S: Store, C: Cluster, R: Replier>(
    handler: &Handler<S, C>,
    replier: &R,
    msg: &jetstream::Message,
    kind: contract::EventKind,
    why: &str,
    cause: GaveUp,
) {
    let rm = &handler.rm().name;
    let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let m = metrics::get();
    m.event(rm, kind.as_str(), "dead_letter");
    let letter = DeadLetter {
        resource_manager: rm,
        kind,
        original_subject: &msg.subject,
        original_sequence: sequence,
        error: why,
        payload: &msg.payload,
    };
    if let Err(e) = replier.dead_letter(&letter).await {
        tracing::error!(error = %e, "could not store the dead letter");
        ack(msg, AckKind::Nak(None)).await;
        return;
    }
    tracing::error!(why = %why, sequence, "giving up after the maximum deliveries; stored as a dead letter");
    if kind == contract::EventKind::Started
        && let Some(Handled::Answer { reply, msg_id }) =
            handler.given_up(&msg.payload, why, sequence, cause).await
    {
        match replier.publish(&reply, &msg_id).await {
            Ok(()) => {
                note_failure(rm, &reply);
                if let Err(e) = handler.stored(&reply).await {
                    tracing::warn!(error = %e, "could not note the stored ready in the allocation's record");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not answer the given-up event"),
        }
    }
    ack(msg, AckKind::Term).await;
}

/// Publishes the event again as a new message, whose deliveries start afresh, and terminates this one.
async fn requeue<R: Replier>(replier: &R, msg: &jetstream::Message, why: &str) {
    let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let mut tries = 0u32;
    loop {
        match replier.requeue(&msg.subject, &msg.payload, sequence).await {
            Ok(()) => {
                tracing::warn!(why = %why, sequence, "not served after the maximum deliveries; queued again");
                ack(msg, AckKind::Term).await;
                return;
            }
            Err(e) if tries < 5 => {
                tries += 1;
                tracing::warn!(error = %e, "could not queue the event again; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::error!(error = %e, sequence, "could not queue the event again; the reconciler or a resend must finish it");
                ack(msg, AckKind::Nak(None)).await;
                return;
            }
        }
    }
}

/// Counts a published `failed` reply under its reason.
fn note_failure(rm: &str, reply: &contract::Reply) {
    if let contract::Reply::Failed(f) = reply {
        metrics::get().failed_reply(rm, &f.reason.to_string());
    }
}

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        // A lost ack means a redelivery, which the handler serves idempotently.
        tracing::warn!(error = %e, "acknowledgement not sent");
    }
}
