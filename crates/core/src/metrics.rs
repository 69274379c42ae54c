//! Prometheus metrics. One registry for the process, reached through [`get`], so the handler, the consumer
//! loop and the Gateway adapter record without threading a handle through every call.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
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

/// Labels of an apiserver call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub resource_manager: String,
    /// `apply_service`, `apply_listener`, `apply_route`, `delete_route`, `remove_listener`, `delete_service`.
    pub call: String,
}

/// Every metric the worker exports.
pub struct Metrics {
    pub registry: Registry,
    pub events: Family<EventLabels, Counter>,
    pub started_to_ready: Family<RmLabels, Histogram>,
    pub redeliveries: Family<RmLabels, Counter>,
    pub ports_in_use: Family<GatewayLabels, Gauge>,
    pub ports_free: Family<GatewayLabels, Gauge>,
    pub listener_slots_free: Family<GatewayLabels, Gauge>,
    pub kube_calls: Family<CallLabels, Histogram>,
    pub kube_errors: Family<CallLabels, Counter>,
    pub reconciler_actions: Family<ActionLabels, Counter>,
    pub data_plane_refused: Family<GatewayLabels, Counter>,
}

/// Labels of a reconciler action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub resource_manager: String,
    /// `release_claim`, `remove_listener`, `delete_object` or `repair`.
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
            ports_in_use: Family::default(),
            ports_free: Family::default(),
            listener_slots_free: Family::default(),
            kube_calls: Family::new_with_constructor(seconds_histogram),
            kube_errors: Family::default(),
            reconciler_actions: Family::default(),
            data_plane_refused: Family::default(),
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
        Metrics { registry, ..m }
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
        if !ok {
            self.kube_errors.get_or_create(&labels).inc();
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
