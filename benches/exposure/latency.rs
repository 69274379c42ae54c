//! The latency section: exposure latency with 1 and 4 workers, each interleaved with the floor on the same
//! Gateway, in each listener mode.

use std::time::Duration;

use crate::drive::{self, pcts};
use crate::floor::Mode;
use crate::report::{Target, compared, info, ms};
use crate::{Bench, RANGE, calls, plural};

impl Bench {
    /// Exposure latency in each mode; returns a resource manager of the section for the replay.
    pub(crate) async fn latency(&mut self) -> Option<usize> {
        let mut first = None;
        for mode in [Mode::Gateway, Mode::ListenerSet] {
            if self.wants(mode) {
                let rm = self.latency_in(mode).await;
                first = first.or(Some(rm));
            }
        }
        first
    }

    /// Exposure latency with 1 and 4 workers, each interleaved with the floor on the same Gateway.
    async fn latency_in(&mut self, mode: Mode) -> usize {
        let idx = self.rms_in(mode, "lat", 1, RANGE).await;
        let targets = self.targets(&idx).await;
        let (m, ns) = &targets[0];
        // The Gateway-mode rows keep their names; the others say their mode.
        let sfx = match mode {
            Mode::Gateway => String::new(),
            m => format!(", {}", m.label()),
        };
        let writes = self.count_writes(&idx).await;
        let mut exposures = 0;
        let mut fl = None;
        for workers in [1, 4] {
            let ws = self.workers(&idx, workers).await;
            if fl.is_none() {
                fl = Some(self.floor(mode, idx[0]).await);
            }
            let Some(fl) = fl.as_ref() else { continue };
            exposures += self.size.latency + 5;
            let calls = calls::snapshot();
            let (mut wk, mut fr) = (Vec::new(), Vec::new());
            for i in 0..self.size.latency + 5 {
                let port = 41000 + u16::try_from(i % 500).expect("port");
                let a = drive::alloc_id("lat");
                let fa = drive::alloc_id("floor");
                // Alternate which goes first, so neither always follows the other's cleanup.
                let (w, f) = if i % 2 == 0 {
                    let w = drive::expose(m, &self.waiter, &a, ns).await.expect("ready");
                    drive::end(m, &self.waiter, &a).await;
                    let f = fl.expose(&fa, port).await;
                    fl.withdraw(&fa, port).await;
                    (w, f)
                } else {
                    let f = fl.expose(&fa, port).await;
                    fl.withdraw(&fa, port).await;
                    let w = drive::expose(m, &self.waiter, &a, ns).await.expect("ready");
                    drive::end(m, &self.waiter, &a).await;
                    (w, f)
                };
                if i >= 5 {
                    wk.push(w);
                    fr.push(f);
                }
            }
            for w in ws {
                w.stop().await;
            }
            let (w, f) = (pcts(&wk), pcts(&fr));
            let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
            let tag = format!("{}{sfx}", plural(workers, "worker"));
            self.rows.push(info(
                format!("floor steps p50, run with {tag}"),
                fl.breakdown(),
            ));
            self.rows.push(info(
                format!("worker's apiserver calls (count x mean), run with {tag}"),
                calls.since(),
            ));
            if workers == 1 {
                self.rows.push(compared(
                    format!("exposure p50, {tag}"),
                    ms(w.p50),
                    format!("floor p50 {}", ms(f.p50)),
                    ratio(w.p50, f.p50),
                    Target::AtMost(1.3),
                ));
                self.rows
                    .push(info(format!("exposure p95, {tag}"), ms(w.p95)));
                self.rows.push(compared(
                    format!("exposure p99, {tag}"),
                    ms(w.p99),
                    format!("floor p99 {}", ms(f.p99)),
                    ratio(w.p99, f.p99),
                    Target::AtMost(2.0),
                ));
            } else {
                let mut r = info(
                    format!("exposure p50 / p95 / p99, {tag}"),
                    format!("{} / {} / {}", ms(w.p50), ms(w.p95), ms(w.p99)),
                );
                r.reference = format!("floor p50 {} / p99 {}", ms(f.p50), ms(f.p99));
                r.ratio = Some(ratio(w.p50, f.p50));
                self.rows.push(r);
            }
        }
        if mode == Mode::ListenerSet {
            self.note_writes("latency", writes, exposures).await;
        } else {
            drop(writes.stop().await);
        }
        idx[0]
    }
}
