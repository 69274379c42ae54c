//! Prometheus metrics. One registry for the process, reached through [`get`], so the handler, the consumer
//! loop and the Gateway adapter record without threading a handle through every call.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a handled event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub resource_manager: String,
    /// `started` or `ended`.
    pub kind: String,
    /// `ready`, `failed`, `removed`, `retry`, `reply_error`, `dead_letter` or `requeued` (an ended queued
    /// again at its last delivery).
    pub outcome: String,
}

/// Labels of a failed reply.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub resource_manager: String,
    /// The `failed` reply's `reason`, from the contract's closed set.
    pub reason: String,
}

/// Labels of a reconcile pass.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    pub resource_manager: String,
    /// `ok`, or `error` when a server could not be read and the pass stopped.
    pub result: String,
}

/// Labels of a resource manager.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RmLabels {
    pub resource_manager: String,
}

/// Labels of one Gateway of a resource manager's pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    pub resource_manager: String,
    /// `<namespace>/<name>`.
    pub gateway: String,
}

/// Labels of a site's worker (`jetstream.hub_domain`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabels {
    /// The site's JetStream domain.
    pub site: String,
    /// The hub's JetStream domain, reached over the site's leaf-node link.
    pub hub: String,
}

/// Labels of an apiserver call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub resource_manager: String,
    /// `apply_service`, `apply_listener`, `apply_route`, `delete_route`, `remove_listener`, `delete_service`.
    pub call: String,
}

/// Every apiserver call [`Metrics::kube_call`] is given, for series created at zero before the first call.
pub const KUBE_CALLS: [&str; 6] = [
    "apply_service",
    "apply_listener",
    "apply_route",
    "delete_route",
    "remove_listener",
    "delete_service",
];

/// The outcomes each event kind can have in [`Metrics::event`], created at zero at start.
const OUTCOMES: [(&str, &[&str]); 2] = [
    (
        "started",
        &["ready", "failed", "retry", "reply_error", "dead_letter"],
    ),
    (
        "ended",
        &["removed", "failed", "retry", "reply_error", "requeued"],
    ),
];

/// Every metric the worker exports.
pub struct Metrics {
    pub registry: Registry,
    pub events: Family<EventLabels, Counter>,
    pub started_to_ready: Family<RmLabels, Histogram>,
    pub redeliveries: Family<RmLabels, Counter>,
    /// `failed` replies by reason: why exposures fail.
    pub failures: Family<ReasonLabels, Counter>,
    /// The durable consumer's `num_pending`, read every few seconds off the event path.
    pub consumer_pending: Family<RmLabels, Gauge>,
    /// The durable consumer's `num_ack_pending`.
    pub consumer_ack_pending: Family<RmLabels, Gauge>,
    /// Messages kept in the dead-letter stream per resource manager.
    pub dead_letters: Family<RmLabels, Gauge>,
    /// Seconds since the oldest `exposing` allocation's record was created, as of the last reconcile pass.
    pub oldest_exposing: Family<RmLabels, Gauge>,
    /// Unix time of the last reconcile pass over every Gateway of the pool that completed.
    pub reconciler_last_success: Family<RmLabels, Gauge<f64, AtomicU64>>,
    /// Reconcile passes by result.
    pub reconciler_passes: Family<PassLabels, Counter>,
    /// 1 while this worker serves the resource manager: its consumer exists, NATS is connected, its
    /// apiserver answers and its Gateways exist.
    pub rm_ready: Family<RmLabels, Gauge>,
    pub ports_in_use: Family<GatewayLabels, Gauge>,
    pub ports_free: Family<GatewayLabels, Gauge>,
    pub listener_slots_free: Family<GatewayLabels, Gauge>,
    pub kube_calls: Family<CallLabels, Histogram>,
    pub kube_errors: Family<CallLabels, Counter>,
    pub reconciler_actions: Family<ActionLabels, Counter>,
    pub data_plane_refused: Family<GatewayLabels, Counter>,
    /// 1 while a site's worker serves its own streams and waits for its leaf-node link to lay out the
    /// hub's side.
    pub site_waiting_for_hub: Family<SiteLabels, Gauge>,
    /// Records met that a newer worker wrote (a higher record version): left untouched, never answered.
    pub records_newer_version: Family<RmLabels, Counter>,
}

/// Labels of a reconciler action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub resource_manager: String,
    /// One of [`crate::plan::Action::LABELS`].
    pub action: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("itg");
        let m = Metrics {
            events: Family::default(),
            started_to_ready: Family::new_with_constructor(seconds_histogram),
            redeliveries: Family::default(),
            failures: Family::default(),
            consumer_pending: Family::default(),
            consumer_ack_pending: Family::default(),
            dead_letters: Family::default(),
            oldest_exposing: Family::default(),
            reconciler_last_success: Family::default(),
            reconciler_passes: Family::default(),
            rm_ready: Family::default(),
            ports_in_use: Family::default(),
            ports_free: Family::default(),
            listener_slots_free: Family::default(),
            kube_calls: Family::new_with_constructor(seconds_histogram),
            kube_errors: Family::default(),
            reconciler_actions: Family::default(),
            data_plane_refused: Family::default(),
            site_waiting_for_hub: Family::default(),
            records_newer_version: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events",
            "Events handled, by kind and outcome",
            m.events.clone(),
        );
        registry.register(
            "started_to_ready_seconds",
            "Time from a started event's publication to its ready reply",
            m.started_to_ready.clone(),
        );
        registry.register(
            "redeliveries",
            "Events delivered more than once",
            m.redeliveries.clone(),
        );
        registry.register(
            "failed_replies",
            "Failed replies published, by the contract's reason",
            m.failures.clone(),
        );
        registry.register(
            "consumer_pending_messages",
            "Events of the stream the resource manager's durable consumer has not delivered yet",
            m.consumer_pending.clone(),
        );
        registry.register(
            "consumer_ack_pending_messages",
            "Events delivered by the durable consumer and not acknowledged yet",
            m.consumer_ack_pending.clone(),
        );
        registry.register(
            "dead_letter_messages",
            "Dead letters kept in ITG_DEADLETTER for the resource manager",
            m.dead_letters.clone(),
        );
        registry.register(
            "oldest_exposing_allocation_age_seconds",
            "Age of the oldest allocation still exposing, as of the last reconcile pass (0 when none)",
            m.oldest_exposing.clone(),
        );
        registry.register(
            "reconciler_last_success_timestamp_seconds",
            "Unix time the last complete reconcile pass ended (0 before the first)",
            m.reconciler_last_success.clone(),
        );
        registry.register(
            "reconciler_passes",
            "Reconcile passes, by result",
            m.reconciler_passes.clone(),
        );
        registry.register(
            "resource_manager_ready",
            "1 while this worker serves the resource manager (consumer, NATS, apiserver and Gateways up)",
            m.rm_ready.clone(),
        );
        registry.register(
            "ports_in_use",
            "Gateway ports held by the worker's listeners",
            m.ports_in_use.clone(),
        );
        registry.register(
            "ports_free",
            "Ports of the range not excluded, foreign or in use",
            m.ports_free.clone(),
        );
        registry.register(
            "listener_slots_free",
            "Listener slots left under the Gateway's limit",
            m.listener_slots_free.clone(),
        );
        registry.register(
            "kube_call_seconds",
            "Apiserver call latency",
            m.kube_calls.clone(),
        );
        registry.register(
            "kube_call_errors",
            "Apiserver calls that failed",
            m.kube_errors.clone(),
        );
        registry.register(
            "reconciler_actions",
            "Repairs and orphan removals by the reconciler",
            m.reconciler_actions.clone(),
        );
        registry.register(
            "data_plane_refused_ports",
            "Ports given back because the Gateway's data plane refused connections although its controller reported them programmed",
            m.data_plane_refused.clone(),
        );
        registry.register(
            "site_waiting_for_hub",
            "1 while this site's worker serves its own streams and waits for its leaf-node link to the hub to lay out the hub's side (its replies reach the hub only then)",
            m.site_waiting_for_hub.clone(),
        );
        registry.register(
            "records_newer_version",
            "Times an allocation record of a newer record version was met and left untouched (a newer worker wrote it)",
            m.records_newer_version.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The gauge of a site's wait for the hub.
    pub fn site_waiting_for_hub(&self, site: &str, hub: &str) -> Gauge {
        self.site_waiting_for_hub
            .get_or_create(&SiteLabels {
                site: site.to_owned(),
                hub: hub.to_owned(),
            })
            .clone()
    }

    /// Records one apiserver call.
    pub fn kube_call(&self, rm: &str, call: &str, took: Duration, ok: bool) {
        let labels = CallLabels {
            resource_manager: rm.to_owned(),
            call: call.to_owned(),
        };
        self.kube_calls
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        // Created with the call's first observation, so an error rate reads 0 rather than nothing.
        let errors = self.kube_errors.get_or_create(&labels);
        if !ok {
            errors.inc();
        }
    }

    /// Records one reconciler action.
    pub fn reconciler_action(&self, rm: &str, action: &str) {
        self.reconciler_actions
            .get_or_create(&ActionLabels {
                resource_manager: rm.to_owned(),
                action: action.to_owned(),
            })
            .inc();
    }

    /// Records one `failed` reply.
    pub fn failed_reply(&self, rm: &str, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabels {
                resource_manager: rm.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records the end of one reconcile pass over a resource manager's pool, at `now` (Unix seconds).
    pub fn reconcile_pass(&self, rm: &str, ok: bool, now: f64) {
        let result = if ok { "ok" } else { "error" };
        self.reconciler_passes
            .get_or_create(&PassLabels {
                resource_manager: rm.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        if ok {
            self.reconciler_last_success
                .get_or_create(&self::rm(rm))
                .set(now);
        }
    }

    /// Creates a resource manager's series at start, at 0, so a worker that never completes a pass or never
    /// reads its backlog shows zeros rather than nothing, and the first event of each kind counts in rates.
    pub fn register_rm(&self, rm: &str) {
        let labels = self::rm(rm);
        self.reconciler_last_success.get_or_create(&labels).set(0.0);
        self.oldest_exposing.get_or_create(&labels).set(0);
        self.rm_ready.get_or_create(&labels).set(0);
        self.dead_letters.get_or_create(&labels).set(0);
        drop(self.records_newer_version.get_or_create(&labels));
        // A counter born at its first failure hides that failure from increase() and rate().
        for reason in crate::contract::FailureReason::ALL {
            self.failures
                .get_or_create(&ReasonLabels {
                    resource_manager: rm.to_owned(),
                    reason: reason.to_string(),
                })
                .inc_by(0);
        }
        // A histogram or counter born with its first observation shows that observation in no rate().
        drop(self.started_to_ready.get_or_create(&labels));
        for call in KUBE_CALLS {
            let labels = CallLabels {
                resource_manager: rm.to_owned(),
                call: call.to_owned(),
            };
            drop(self.kube_calls.get_or_create(&labels));
            self.kube_errors.get_or_create(&labels).inc_by(0);
        }
        for (kind, outcomes) in OUTCOMES {
            for outcome in outcomes {
                self.events
                    .get_or_create(&EventLabels {
                        resource_manager: rm.to_owned(),
                        kind: kind.to_owned(),
                        outcome: (*outcome).to_owned(),
                    })
                    .inc_by(0);
            }
        }
        for action in crate::plan::Action::LABELS {
            self.reconciler_actions
                .get_or_create(&ActionLabels {
                    resource_manager: rm.to_owned(),
                    action: action.to_owned(),
                })
                .inc_by(0);
        }
    }

    /// Records one handled event.
    pub fn event(&self, rm: &str, kind: &str, outcome: &str) {
        self.events
            .get_or_create(&EventLabels {
                resource_manager: rm.to_owned(),
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Labels for one Gateway of a resource manager's pool.
pub fn gateway(rm: &str, namespace: &str, name: &str) -> GatewayLabels {
    GatewayLabels {
        resource_manager: rm.to_owned(),
        gateway: format!("{namespace}/{name}"),
    }
}

/// Labels for a resource manager.
pub fn rm(name: &str) -> RmLabels {
    RmLabels {
        resource_manager: name.to_owned(),
    }
}

/// Counts and logs an allocation record of a newer version, the same way wherever it is met (the worker's
/// read, the reconciler's pass): an operator sees one metric and one message for one cause. `leaves` says
/// what the finder does about it.
pub fn newer_record(resource_manager: &str, key: &str, found: u32, leaves: &str) {
    get()
        .records_newer_version
        .get_or_create(&rm(resource_manager))
        .inc();
    tracing::error!(
        resource_manager,
        key,
        record_version = found,
        known = crate::state::RECORD_VERSION,
        "an allocation record of a newer version: {leaves}; workers of two record versions serve one bucket"
    );
}
