//! The growth section: how the cost of an exposure grows with live allocations, beside the floor's.

use std::time::{Duration, Instant};

use crate::common::Master;
use crate::drive::{self, pcts};
use crate::floor::{Floor, Mode};
use crate::report::{Row, Target, compared, info, ms};
use crate::{Bench, IN_FLIGHT, PER_GATEWAY, calls, cpu, floor, ls_range};

/// What a growth section measured: p50s (worker, floor) at few and at many live, the floor's steps and the
/// worker's apiserver calls at each.
pub(crate) struct Growth {
    pub(crate) few: usize,
    pub(crate) many: usize,
    pub(crate) p: ((Duration, Duration), (Duration, Duration)),
    pub(crate) steps: (String, String),
    pub(crate) calls: (String, String),
}

impl Bench {
    /// How cost grows with live allocations, in each mode.
    pub(crate) async fn growth(&mut self) {
        if self.wants(Mode::Gateway) {
            self.growth_gateway().await;
        }
        if self.wants(Mode::ListenerSet) {
            self.growth_listenerset().await;
        }
    }

    /// The worker's exposure and the floor's in turn on `target` (the first Gateway of the section):
    /// `n` timed pairs after 5 warm-ups; their p50s.
    pub(crate) async fn probe(
        &self,
        target: &(Master, String),
        fl: &Floor,
    ) -> (Duration, Duration) {
        let (m, ns) = target;
        let (mut s, mut f) = (Vec::new(), Vec::new());
        for i in 0..self.size.probes + 5 {
            let a = drive::alloc_id("probe");
            let d = drive::expose(m, &self.waiter, &a, ns)
                .await
                .expect("probe ready");
            drive::end(m, &self.waiter, &a).await;
            let fa = drive::alloc_id("floor");
            let fd = fl.expose(&fa, 41000).await;
            fl.withdraw(&fa, 41000).await;
            if i >= 5 {
                s.push(d);
                f.push(fd);
            }
        }
        (pcts(&s).p50, pcts(&f).p50)
    }

    /// [`Bench::probe`], and the CPU each of its exposures cost by process, from `cpu` (started just
    /// before).
    pub(crate) async fn probe_cpu(
        &self,
        target: &(Master, String),
        fl: &Floor,
        cpu: cpu::Sample,
    ) -> ((Duration, Duration), String) {
        let p = self.probe(target, fl).await;
        (p, cpu.per_op(self.size.probes + 5))
    }

    /// Exposure p50 with few live allocations, then with many, on ONE Gateway in ListenerSet mode (no
    /// listener cap there), each beside the floor on that Gateway.
    async fn growth_listenerset(&mut self) {
        let mode = Mode::ListenerSet;
        let (few, many) = (self.size.live_few, self.size.live_many);
        let idx = self
            .rms_in(mode, "growls", 1, ls_range(self.size.live_many))
            .await;
        let targets = self.targets(&idx).await;
        let writes = self.count_writes(&idx).await;
        let ws = self.workers(&idx, 1).await;
        let fl = self.floor(mode, idx[0]).await;
        let t = Instant::now();
        let mut live = drive::fill(&targets, &self.waiter, few, IN_FLIGHT).await;
        let calls_few = calls::snapshot();
        // CPU per probe (a worker lifecycle and a floor one), by process: the profile of the growth.
        let (p_few, cpu_few) = self.probe_cpu(&targets[0], &fl, cpu::start()).await;
        let steps_few = fl.breakdown();
        let calls_few = calls_few.since();
        let more = drive::fill(&targets, &self.waiter, many - few, IN_FLIGHT).await;
        live[0].extend(more.into_iter().flatten());
        let filled = t.elapsed();
        let calls_many = calls::snapshot();
        let (p_many, cpu_many) = self.probe_cpu(&targets[0], &fl, cpu::start()).await;
        let steps_many = fl.breakdown();
        let calls_many = calls_many.since();
        drive::drain(&targets, &self.waiter, &live, IN_FLIGHT).await;
        for w in ws {
            w.stop().await;
        }
        let exposures = many + 2 * (self.size.probes + 5);
        let grow = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        let mut r = info(
            format!("worker p50 / floor p50 at {few} live and at {many} live, ListenerSet mode"),
            format!(
                "{:.2} / {:.2}",
                grow(p_few.0, p_few.1),
                grow(p_many.0, p_many.1)
            ),
        );
        r.reference = format!(
            "filling {many} took {:.1} s ({IN_FLIGHT} in flight)",
            filled.as_secs_f64()
        );
        self.growth_rows(
            Growth {
                few,
                many,
                p: (p_few, p_many),
                steps: (steps_few, steps_many),
                calls: (calls_few, calls_many),
            },
            "on 1 Gateway",
            ", ListenerSet mode",
            vec![r],
        );
        for (live, cpu) in [(few, cpu_few), (many, cpu_many)] {
            self.rows.push(info(
                format!(
                    "  CPU per probe (a worker lifecycle and a floor one) at {live} live, ListenerSet mode"
                ),
                cpu,
            ));
        }
        self.note_writes("growth", writes, exposures).await;
    }

    /// Exposure p50 with few live allocations, then with many, on the same worker.
    async fn growth_gateway(&mut self) {
        let (few, many) = (self.size.live_few, self.size.live_many);
        let gateways = many.div_ceil(PER_GATEWAY);
        let idx = self.rms("grow", gateways).await;
        let targets = self.targets(&idx).await;
        let ws = self.workers(&idx, 1).await;
        let rm = &self.rms[idx[0]];
        let (nats, kube) = (self.env.nats().await, self.env.kube().await);
        let fl = floor::Floor::new(nats, kube, &rm.gateway_ns, &rm.gateway, &rm.task_ns).await;
        // The worker and the floor in turn on the first Gateway: the floor shows what the apiserver's own
        // cost does as the Gateway fills.
        let mut live = drive::fill(&targets[..1], &self.waiter, few, IN_FLIGHT).await;
        let calls_few = calls::snapshot();
        let p_few = self.probe(&targets[0], &fl).await;
        let steps_few = fl.breakdown();
        let calls_few = calls_few.since();
        // Bring every Gateway to its share of `many` (the first one already holds `few`).
        let mut rest = Vec::new();
        for (t, target) in targets.iter().enumerate() {
            let share = many / gateways + usize::from(t < many % gateways);
            let have = if t == 0 { few } else { 0 };
            let more = drive::fill(
                std::slice::from_ref(target),
                &self.waiter,
                share.saturating_sub(have),
                IN_FLIGHT,
            );
            rest.push(more.await.remove(0));
        }
        live[0].extend(rest.remove(0));
        live.extend(rest);
        let calls_many = calls::snapshot();
        let p_many = self.probe(&targets[0], &fl).await;
        let steps_many = fl.breakdown();
        let calls_many = calls_many.since();
        drive::drain(&targets, &self.waiter, &live, IN_FLIGHT).await;
        for w in ws {
            w.stop().await;
        }
        self.growth_rows(
            Growth {
                few,
                many,
                p: (p_few, p_many),
                steps: (steps_few, steps_many),
                calls: (calls_few, calls_many),
            },
            &format!("over {gateways} Gateways"),
            "",
            Vec::new(),
        );
    }

    /// The rows of a growth section: exposure p50 at many live against few (the target), the floor's the
    /// same way, `extra`, then the floor's steps and the worker's calls at each. `place` says where the
    /// live allocations are, `mode` ends every row's name.
    pub(crate) fn growth_rows(&mut self, g: Growth, place: &str, mode: &str, extra: Vec<Row>) {
        let (few, many) = (g.few, g.many);
        let grow = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        self.rows.push(compared(
            format!("exposure p50 at {many} live {place} / at {few} live{mode}"),
            ms(g.p.1.0),
            format!("{} at {few} live", ms(g.p.0.0)),
            grow(g.p.1.0, g.p.0.0),
            Target::AtMost(1.2),
        ));
        let mut r = info(
            format!("floor p50 on that Gateway, at {many} live / at {few} live{mode}"),
            ms(g.p.1.1),
        );
        r.reference = format!("{} at {few} live", ms(g.p.0.1));
        r.ratio = Some(grow(g.p.1.1, g.p.0.1));
        self.rows.push(r);
        self.rows.extend(extra);
        for (live, steps) in [(few, g.steps.0), (many, g.steps.1)] {
            self.rows
                .push(info(format!("floor steps p50 at {live} live{mode}"), steps));
        }
        // A worker in another process has no call counts here.
        for (live, calls) in [(few, g.calls.0), (many, g.calls.1)] {
            if calls.is_empty() {
                continue;
            }
            self.rows.push(info(
                format!("  worker's apiserver calls at {live} live{mode}"),
                calls,
            ));
        }
    }
}
