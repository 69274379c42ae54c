//! Where the CPU goes during a run: user+system seconds of each server process (their pid files are in
//! `.itg/run/`) and of this process, which hosts the in-process workers.

use std::path::Path;
use std::time::Instant;

const SERVERS: [&str; 4] = ["apiserver", "etcd", "nats-n1", "controller-manager"];

fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn pids() -> Vec<(String, String)> {
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join(".itg/run");
    let mut out: Vec<(String, String)> = SERVERS
        .iter()
        .filter_map(|s| {
            let pid = std::fs::read_to_string(run.join(format!("{s}.pid"))).ok()?;
            Some(((*s).to_owned(), pid.trim().to_owned()))
        })
        .collect();
    out.push(("bench+workers".into(), std::process::id().to_string()));
    out
}

/// CPU seconds per process from a starting point.
pub struct Sample {
    at: Instant,
    start: Vec<(String, String, f64)>,
}

pub fn start() -> Sample {
    start_with(&[])
}

/// [`start`], with more processes (name, pid) beside the servers and this one.
pub fn start_with(more: &[(String, String)]) -> Sample {
    Sample {
        at: Instant::now(),
        start: pids()
            .into_iter()
            .chain(more.iter().cloned())
            .map(|(n, p)| {
                let s = cpu_seconds(&p);
                (n, p, s)
            })
            .collect(),
    }
}

impl Sample {
    /// Each process's share of one core since the start, busiest first: `apiserver 140%, ...`.
    pub fn shares(&self) -> String {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        self.listed(|secs| format!("{:.0}%", secs / wall * 100.0))
    }

    /// Each process's CPU milliseconds per operation since the start, over `ops` operations, busiest
    /// first: `apiserver 21.3 ms, ...`.
    pub fn per_op(&self, ops: usize) -> String {
        let ops = ops.max(1) as f64;
        self.listed(|secs| format!("{:.1} ms", secs * 1000.0 / ops))
    }

    /// Each process's CPU seconds since the start, shown by `unit`, busiest first.
    fn listed(&self, unit: impl Fn(f64) -> String) -> String {
        let mut v: Vec<(String, f64)> = self
            .start
            .iter()
            .map(|(n, p, s)| (n.clone(), cpu_seconds(p) - s))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.iter()
            .map(|(n, secs)| format!("{n} {}", unit(*secs)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
