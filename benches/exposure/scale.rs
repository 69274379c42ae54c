//! Many live allocations on ONE ListenerSet-mode Gateway, held by one real `itg-worker` process (`--only
//! scale`, its size `--live N`): exposure p50 at few and at many live beside the floor's on that Gateway,
//! the process's memory and CPU per probe, then what a reconciler pass, a restart and a replay of every
//! lifecycle cost at that size. One fill serves every figure: at 10,000 live a fill takes most of the run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::floor::Mode;
use crate::growth::Growth;
use crate::report::{Row, Target, bound, compared, info, ms};
use crate::{Bench, IN_FLIGHT, apiserver, common, cpu, drive, rss};

/// A sampling profile of the worker process while it serves the probes at many live, when `BENCH_PERF`
/// names the file to write (`perf report -i <file>` reads it).
struct Perf(Option<Child>);

impl Perf {
    fn start(pid: u32) -> Perf {
        let Some(out) = std::env::var_os("BENCH_PERF") else {
            return Perf(None);
        };
        let child = Command::new("perf")
            .args(["record", "-F", "499", "-o"])
            .arg(out)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = &child {
            eprintln!("[bench] BENCH_PERF set but perf did not start: {e}");
        }
        Perf(child.ok())
    }

    fn stop(self) {
        if let Some(mut child) = self.0 {
            // SIGINT makes perf write its file out.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// NATS messages sent and received by `client` since `from`.
fn nats_since(client: &async_nats::Client, from: (u64, u64)) -> String {
    let s = client.statistics();
    let (out, inn) = (
        s.out_messages.load(std::sync::atomic::Ordering::Relaxed),
        s.in_messages.load(std::sync::atomic::Ordering::Relaxed),
    );
    format!(
        "{} requests sent, {} messages received",
        out - from.0,
        inn - from.1
    )
}

fn nats_now(client: &async_nats::Client) -> (u64, u64) {
    let s = client.statistics();
    (
        s.out_messages.load(std::sync::atomic::Ordering::Relaxed),
        s.in_messages.load(std::sync::atomic::Ordering::Relaxed),
    )
}

impl Bench {
    pub(crate) async fn scale(&mut self) {
        let mode = Mode::ListenerSet;
        let (few, many) = (self.size.live_few, self.size.live_many);
        let idx = self.rms_in(mode, "scale", 1, crate::ls_range(many)).await;
        let targets = self.targets(&idx).await;
        let writes = self.count_writes(&idx).await;
        let kube = self.env.kube().await;
        let rm = &self.rms[idx[0]];
        let (proc, _config) = rss::spawn_worker(&self.env, &[rm]);
        let t = Instant::now();
        let mut live = drive::fill(&targets, &self.waiter, few, IN_FLIGHT).await;
        // After the worker has served: it creates the state bucket.
        let fl = self.floor(mode, idx[0]).await;
        let worker_pid = [("itg-worker".to_owned(), proc.id().to_string())];
        let (p_few, cpu_few) = self
            .probe_cpu(&targets[0], &fl, cpu::start_with(&worker_pid))
            .await;
        let steps_few = fl.breakdown();
        let more = drive::fill(&targets, &self.waiter, many - few, IN_FLIGHT).await;
        live[0].extend(more.into_iter().flatten());
        let filled = t.elapsed();
        eprintln!(
            "[bench] scale: {many} live after {:.0} s",
            filled.as_secs_f64()
        );
        let (rss, hwm) = rss::settled_mib(&proc).await;
        let perf = Perf::start(proc.id());
        let (p_many, cpu_many) = self
            .probe_cpu(&targets[0], &fl, cpu::start_with(&worker_pid))
            .await;
        perf.stop();
        let steps_many = fl.breakdown();
        drop(proc);

        // One reconciler pass while no worker runs, as `itgctl reconcile` makes it.
        let rm = &self.rms[idx[0]];
        let config = common::config(&self.env, &[rm], "");
        let servers = itg::app::connect(&config).await.expect("connect");
        let (api, nats) = (apiserver::requests(&kube).await, nats_now(&servers.nats));
        let t0 = Instant::now();
        let actions = itg::app::reconcile_once(&config, &servers, false)
            .await
            .expect("reconcile pass");
        let pass = t0.elapsed();
        let (pass_api, pass_nats) = (api.since(&kube).await, nats_since(&servers.nats, nats));
        drop(servers);

        // A restart: from the process's start to the first event it serves, published at once.
        let api = apiserver::requests(&kube).await;
        let t0 = Instant::now();
        let (proc, _config) = rss::spawn_worker(&self.env, &[rm]);
        let (m, ns) = &targets[0];
        let a = drive::alloc_id("restart");
        let restart = drive::expose_from(m, &self.waiter, &a, ns, t0)
            .await
            .expect("restarted worker serves");
        let restart_api = api.since(&kube).await;
        live[0].push(a);
        let (rss_after, hwm_after) = rss::settled_mib(&proc).await;
        let t1 = Instant::now();
        drive::drain(&targets, &self.waiter, &live, IN_FLIGHT).await;
        let drained = t1.elapsed();
        drop(proc);
        let exposures = many + 1 + 2 * (self.size.probes + 5);
        self.note_writes("scale", writes, exposures).await;

        let sfx = ", ListenerSet mode, itg-worker process";
        let grow = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        let (wg, fg) = (grow(p_many.0, p_few.0), grow(p_many.1, p_few.1));
        let mut r = compared(
            format!("worker's growth / floor's growth, {many} live against {few}{sfx}"),
            format!("{wg:.2}"),
            format!("floor {fg:.2}"),
            wg / fg,
            Target::AtMost(1.1),
        );
        r.target = "<= 1.1 (the floor's growth x 1.1)".into();
        let ratio_many = compared(
            format!("worker p50 / floor p50 at {many} live{sfx}"),
            ms(p_many.0),
            format!(
                "floor p50 {}; at {few} live {:.2}",
                ms(p_many.1),
                grow(p_few.0, p_few.1)
            ),
            grow(p_many.0, p_many.1),
            Target::AtMost(1.2),
        );
        let mut fill = info(
            format!("  filling {many} / draining them ({IN_FLIGHT} in flight)"),
            format!(
                "{:.0} s / {:.0} s",
                filled.as_secs_f64(),
                drained.as_secs_f64()
            ),
        );
        fill.reference = "no controller serves the class: wait_for_controller false".into();
        self.growth_rows(
            Growth {
                few,
                many,
                p: (p_few, p_many),
                steps: (steps_few, steps_many),
                calls: (String::new(), String::new()),
            },
            "on 1 Gateway",
            sfx,
            vec![r, ratio_many, fill],
        );
        for (n, cpu) in [(few, cpu_few), (many, cpu_many)] {
            self.rows.push(info(
                format!("  CPU per probe (a worker lifecycle and a floor one) at {n} live{sfx}"),
                cpu,
            ));
        }
        let mib = |r: f64, h: f64, what: &str| -> Row {
            bound(
                format!("itg-worker RSS, {what} (peak {h:.1} MiB)"),
                r,
                "MiB",
                "<= 128 MiB, peak too".into(),
                r <= 128.0 && h <= 128.0,
            )
        };
        self.rows
            .push(mib(rss, hwm, &format!("{many} live on 1 Gateway")));
        self.rows.push(mib(
            rss_after,
            hwm_after,
            &format!("restarted at {many} live"),
        ));
        self.rows.push(bound(
            format!(
                "one reconciler pass at {many} live ({} actions)",
                actions.iter().map(|(_, a)| a.len()).sum::<usize>()
            ),
            pass.as_secs_f64(),
            "s",
            "<= 5 s".into(),
            pass <= Duration::from_secs(5),
        ));
        self.rows
            .push(info("  apiserver requests during the pass", pass_api));
        self.rows
            .push(info("  NATS messages of the pass's connection", pass_nats));
        self.rows.push(bound(
            format!("worker restarted at {many} live: process start -> first event served"),
            restart.as_secs_f64(),
            "s",
            "<= 10 s".into(),
            restart <= Duration::from_secs(10),
        ));
        self.rows.push(info(
            "  apiserver requests from the restart to that event",
            restart_api,
        ));
        // Every lifecycle of the section has ended: replayed once the hold-off has passed.
        tokio::time::sleep(Duration::from_secs(6)).await;
        self.replay_pass(
            idx[0],
            &format!("{many} live lifecycles, ended over the hold-off ago"),
            "5s",
        )
        .await;
    }
}
