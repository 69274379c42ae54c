//! The replay section: the events of a resource manager whose allocations have all ended, served again.

use std::time::{Duration, Instant};

use crate::common;
use crate::report::{bound, info};
use crate::{Bench, calls};

impl Bench {
    /// Replays the events of a resource manager whose allocations have all ended: first at once, while the
    /// handler still withdraws what their cleanups released (a late apply can land within the reconciler's
    /// hold-off), then once the hold-off (5 s here, the shortest allowed) has passed, as a recovery replay of older events finds them.
    pub(crate) async fn replay(&mut self, rm: usize) {
        for (when, hold_off) in [
            ("just ended", "120s"),
            ("ended over the hold-off ago", "5s"),
        ] {
            if hold_off == "5s" {
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
            self.replay_pass(rm, when, hold_off).await;
        }
    }

    /// One replay from sequence 1 over resource manager `rm`'s events, with `hold_off` as the worker's
    /// `reconcile_hold_off`: its rate and the worker's apiserver calls meanwhile.
    pub(crate) async fn replay_pass(&mut self, rm: usize, when: &str, hold_off: &str) {
        let extra = format!("  reconcile_hold_off: {hold_off}\n");
        let config = common::config(&self.env, &[&self.rms[rm]], &extra);
        let servers = itg::app::connect(&config).await.expect("connect");
        let c = &servers.rms[0];
        let handler = itg::worker::Handler::new(
            itg::resource_manager::RmContext::new(&c.config),
            servers.store.clone(),
            c.gateway.clone(),
            config.worker.clone(),
        );
        let replier = itg::nats::JetStreamReplier::new(servers.js.clone());
        let calls = calls::snapshot();
        let t0 = Instant::now();
        let summary = itg::replay::replay(
            &servers.js,
            &handler,
            &servers.store,
            &replier,
            itg::replay::From::Sequence(1),
            |_, _| {},
        )
        .await
        .expect("replay");
        let rate = summary.seen as f64 / t0.elapsed().as_secs_f64();
        self.rows.push(bound(
            format!(
                "replay of done events, {when} ({} events, {} already right)",
                summary.seen, summary.already_right
            ),
            rate,
            "events/s",
            ">= 5000".into(),
            rate >= 5000.0,
        ));
        self.rows.push(info(
            "  worker's apiserver calls during the replay",
            calls.since(),
        ));
    }
}
