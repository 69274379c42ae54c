//! The scheduler: one seeded generator decides every delay, so a seed replays the same schedule on the
//! single-threaded runtime with its clock paused. Every seam call waits here first; the trace records
//! each point and folds it into a hash.

use std::collections::VecDeque;
use std::hash::Hasher;
use std::sync::Mutex;
use std::time::Duration;

use itg::clock;

/// The simulation's one generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x05ee_d0ff_1ee7)
    }

    pub fn next(&mut self) -> u64 {
        clock::splitmix(&mut self.0)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        #[allow(clippy::cast_precision_loss)]
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
}

/// How many trace lines a failure prints.
const TAIL: usize = 60;

/// What happened, in order: a running hash of every line, the last lines, and all of them on request.
pub struct Trace {
    hash: std::collections::hash_map::DefaultHasher,
    pub lines: u64,
    tail: VecDeque<String>,
    pub full: Option<Vec<String>>,
}

impl Trace {
    pub fn new(full: bool) -> Trace {
        Trace {
            hash: std::collections::hash_map::DefaultHasher::new(),
            lines: 0,
            tail: VecDeque::new(),
            full: full.then(Vec::new),
        }
    }

    pub fn push(&mut self, line: String) {
        self.hash.write(line.as_bytes());
        self.lines += 1;
        if let Some(full) = &mut self.full {
            full.push(line.clone());
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }
}

/// The generator and the trace, shared by every task of one simulation.
pub struct Sched {
    pub rng: Mutex<Rng>,
    pub trace: Mutex<Trace>,
    /// Probability that a point waits (rather than only yielding), and the longest wait.
    pub wait_p: f64,
    pub max_wait: Duration,
}

impl Sched {
    pub fn new(seed: u64, full_trace: bool, wait_p: f64, max_wait: Duration) -> Sched {
        Sched {
            rng: Mutex::new(Rng::new(seed)),
            trace: Mutex::new(Trace::new(full_trace)),
            wait_p,
            max_wait,
        }
    }

    pub fn with_rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.rng.lock().unwrap())
    }

    /// Notes a line of the trace, stamped with the virtual time.
    pub fn note(&self, line: impl FnOnce() -> String) {
        let line = format!("{:>9} {}", crate::now_ms(), line());
        self.trace.lock().unwrap().push(line);
    }

    /// A scheduling point: the generator decides whether the caller yields or waits, and how long.
    pub async fn point(&self, what: impl FnOnce() -> String) {
        let wait = self.with_rng(|r| {
            if r.chance(self.wait_p) {
                #[allow(clippy::cast_possible_truncation)]
                let max = self.max_wait.as_micros() as u64;
                // Mostly short waits, a few long ones: a slow apiserver call, a stalled KV write.
                let us = if r.chance(0.9) {
                    r.below(max / 10 + 1)
                } else {
                    r.below(max + 1)
                };
                // Whole milliseconds: tokio's timer rounds a deadline up to its millisecond counted from
                // when the runtime started, a moment of real time apart from the paused clock's start, so a
                // deadline between two milliseconds could fall on either side from one run to the next.
                Some(Duration::from_millis(us / 1_000))
            } else {
                None
            }
        });
        self.note(what);
        match wait {
            Some(d) => tokio::time::sleep(d).await,
            None => tokio::task::yield_now().await,
        }
    }
}
