//! `worker`: how each worker paces itself, and the redelivery series its consumer waits by.

use std::time::Duration;

use backon::BackoffBuilder;
use serde::Deserialize;

use super::ConfigError;
use super::rules::{Dur, rule};

/// The shortest `worker.reconcile_hold_off` a worker accepts.
pub const MIN_RECONCILE_HOLD_OFF: Duration = Duration::from_secs(5);

/// How each worker paces itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    pub concurrency: usize,
    pub capacity_deadline: Dur,
    pub kubernetes_deadline: Dur,
    /// The longest one apiserver request may take before it is abandoned as a transient error.
    pub kubernetes_call_timeout: Dur,
    /// How long an exposure waits for the Gateway's controller to program its listener and accept its
    /// route, counted from when its ports were bound, before it is answered `failed` with `timeout`.
    pub controller_deadline: Dur,
    pub retry_min: Dur,
    pub retry_max: Dur,
    pub shutdown_timeout: Dur,
    pub reconcile_interval: Dur,
    pub reconcile_hold_off: Dur,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 32,
            capacity_deadline: Dur(Duration::from_secs(600)),
            kubernetes_deadline: Dur(Duration::from_secs(300)),
            kubernetes_call_timeout: Dur(Duration::from_secs(15)),
            // Four times the Gateway API's 30 s bound to consistency: a controller busy with a burst of
            // listener changes still makes it.
            controller_deadline: Dur(Duration::from_secs(120)),
            retry_min: Dur(Duration::from_millis(250)),
            retry_max: Dur(Duration::from_secs(30)),
            shutdown_timeout: Dur(Duration::from_secs(25)),
            reconcile_interval: Dur(Duration::from_secs(60)),
            reconcile_hold_off: Dur(Duration::from_secs(120)),
        }
    }
}

impl WorkerConfig {
    /// The waits between an event's deliveries: doubling from `retry_min` up to `retry_max`, without end.
    /// The consumer adds jitter to it; the config's check of `jetstream.max_deliver` sums it without.
    pub fn redelivery_backoff(&self) -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.retry_min.0)
            .with_max_delay(self.retry_max.0)
            .with_factor(2.0)
            .without_max_times()
    }
}

/// The shortest time `max_deliver` deliveries can span: the waits between them, from the same series the
/// consumer waits by ([`WorkerConfig::redelivery_backoff`]; its jitter only lengthens them).
fn redelivery_span(w: &WorkerConfig, max_deliver: i64) -> Duration {
    let max = w.retry_max.0;
    let mut waits = max_deliver.saturating_sub(1).max(0);
    let mut span = Duration::ZERO;
    for wait in w.redelivery_backoff().build() {
        if waits == 0 || wait >= max {
            break;
        }
        span = span.saturating_add(wait);
        waits -= 1;
    }
    span.saturating_add(max.saturating_mul(u32::try_from(waits).unwrap_or(u32::MAX)))
}

impl WorkerConfig {
    /// The rules of `worker`; `max_deliver` and the longest data plane probe deadline bound how long the
    /// redeliveries must last.
    pub(super) fn validate(
        &self,
        max_deliver: i64,
        longest_probe: Duration,
    ) -> Result<(), ConfigError> {
        let w = self;
        if w.reconcile_hold_off.0 < MIN_RECONCILE_HOLD_OFF {
            return Err(rule(
                "worker.reconcile_hold_off",
                w.reconcile_hold_off.0,
                format!(
                    "must be at least {MIN_RECONCILE_HOLD_OFF:?}: the reconciler sees the Gateway through a watch and the objects through lists, both a moment behind, and an apply sent by a pass that gave up can still land; anything younger than the hold-off may be in flight, not orphaned (`itgctl reconcile --hold-off` runs a one-off pass with a shorter one, with the workers stopped)"
                ),
            ));
        }
        if !(1..=1024).contains(&w.concurrency) {
            return Err(rule(
                "worker.concurrency",
                w.concurrency,
                "must be 1 to 1024",
            ));
        }
        let longest = w
            .capacity_deadline
            .0
            .max(w.kubernetes_deadline.0)
            .max(w.controller_deadline.0)
            .max(longest_probe);
        let budget = redelivery_span(w, max_deliver);
        if max_deliver != -1 && budget < longest {
            return Err(rule(
                "jetstream.max_deliver",
                max_deliver,
                format!(
                    "with worker.retry_min {:?} doubling up to worker.retry_max {:?} it allows {:?} of redeliveries, less than the longest deadline ({:?}): a waiting event would stop being delivered before it is answered; raise it or set -1",
                    w.retry_min.0, w.retry_max.0, budget, longest
                ),
            ));
        }
        if w.kubernetes_call_timeout.0 > w.kubernetes_deadline.0 {
            return Err(rule(
                "worker.kubernetes_call_timeout",
                w.kubernetes_call_timeout.0,
                "must not exceed worker.kubernetes_deadline",
            ));
        }
        if w.retry_min.0 > w.retry_max.0 {
            return Err(rule(
                "worker.retry_min",
                w.retry_min.0,
                "must not exceed worker.retry_max",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redelivery_span_sums_the_consumer_s_own_series() {
        let w = WorkerConfig {
            retry_min: Dur(Duration::from_secs(1)),
            retry_max: Dur(Duration::from_secs(8)),
            ..Default::default()
        };
        // Waits 1, 2, 4, then 8 each: five deliveries span 1+2+4+8.
        assert_eq!(redelivery_span(&w, 5), Duration::from_secs(15));
        assert_eq!(redelivery_span(&w, 7), Duration::from_secs(31));
        assert_eq!(redelivery_span(&w, 1), Duration::ZERO);
        let series: Vec<Duration> = w.redelivery_backoff().build().take(5).collect();
        assert_eq!(
            series,
            [1, 2, 4, 8, 8].map(Duration::from_secs).to_vec(),
            "the consumer's waits, before jitter"
        );
    }
}
