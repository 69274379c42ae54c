//! The memory section: a real `itg-worker` process's RSS with many live allocations and after churn.

use crate::common::TestRm;
use crate::floor::Mode;
use crate::report::{bound, info};
use crate::{Bench, ls_range, rss};

impl Bench {
    pub(crate) async fn memory(&mut self) {
        if self.wants(Mode::Gateway) {
            self.memory_gateway().await;
        }
        if self.wants(Mode::ListenerSet) {
            // One Gateway: in ListenerSet mode the listener cap does not bound it, the range does.
            let live = self.size.live_many;
            let idx = self
                .rms_in(Mode::ListenerSet, "rssls", 1, ls_range(self.size.live_many))
                .await;
            let rms: Vec<&TestRm> = idx.iter().map(|&i| &self.rms[i]).collect();
            let (rss, hwm) = rss::worker_rss(&self.env, &self.waiter, &rms, live).await;
            self.rows.push(bound(
                format!(
                    "itg-worker RSS, {live} live allocations on 1 Gateway, ListenerSet mode (peak {hwm:.1} MiB)"
                ),
                rss,
                "MiB",
                "<= 64 MiB".into(),
                rss <= 64.0,
            ));
            // What ended allocations leave behind: nothing of theirs should stay in the process.
            let (first, total) = self.size.churn;
            let idx = self
                .rms_in(
                    Mode::ListenerSet,
                    "churnls",
                    1,
                    ls_range(self.size.live_many),
                )
                .await;
            let rms: Vec<&TestRm> = idx.iter().map(|&i| &self.rms[i]).collect();
            let (at_first, at_total) =
                rss::worker_rss_after_churn(&self.env, &self.waiter, &rms, first, total).await;
            self.rows.push(info(
                format!("itg-worker RSS after {first} lifecycles, ListenerSet mode, none live"),
                format!("{at_first:.1} MiB"),
            ));
            self.rows.push(bound(
                format!(
                    "itg-worker RSS after {total} lifecycles, same process (+{:.1} MiB)",
                    at_total - at_first
                ),
                at_total,
                "MiB",
                format!("<= {:.1} MiB (first figure + 10%)", at_first * 1.1),
                at_total <= at_first * 1.1,
            ));
        }
    }

    async fn memory_gateway(&mut self) {
        let idx = self.rms("rss", self.size.rss_gateways).await;
        let rms: Vec<&TestRm> = idx.iter().map(|&i| &self.rms[i]).collect();
        let (rss, hwm) = rss::worker_rss(&self.env, &self.waiter, &rms, self.size.rss_live).await;
        self.rows.push(bound(
            format!(
                "itg-worker RSS, {} live allocations over {} Gateways (peak {hwm:.1} MiB)",
                self.size.rss_live, self.size.rss_gateways
            ),
            rss,
            "MiB",
            "<= 64 MiB".into(),
            rss <= 64.0,
        ));
    }
}
