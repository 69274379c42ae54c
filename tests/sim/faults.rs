//! What one simulation injects: the fleet's shape and every fault, each drawn from the seed with a
//! probability of its own, and overridable by name (`ITG_SIM_PARAMS=crash=0,allocs=2`) to shrink a
//! failing seed or to aim at one case.

use std::fmt::Write as _;
use std::time::Duration;

use crate::sched::Rng;

/// How the reply stream fails.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyFail {
    None,
    /// The first publish of each reply fails with this probability.
    Once(f64),
    /// Every reply of allocation `alloc` fails until `until`.
    Always {
        alloc: String,
        until: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Params {
    pub allocs: usize,
    /// Proxy ports per allocation, at most.
    pub proxies: usize,
    pub range_start: u16,
    pub range_len: u16,
    pub pool: usize,
    pub listenerset: bool,
    pub listener_limit: usize,
    pub probe: bool,
    pub workers: usize,
    pub lanes: usize,
    pub max_deliver: i64,
    pub ack_wait: Duration,
    /// When the events are published: within this span.
    pub span: Duration,
    pub dup_same: f64,
    pub dup_new: f64,
    pub ended: f64,
    pub ended_early: f64,
    /// Crashes per worker per minute.
    pub crash: f64,
    pub ack_lost: f64,
    pub reply_fail: ReplyFail,
    pub stale_status: bool,
    pub lag_max_ms: u64,
    pub foreign_ports: Vec<u16>,
    pub foreign_hidden: bool,
    pub refuse_ports: Vec<(usize, u16)>,
    pub refuse_gateway: Option<usize>,
    pub refuse_until: Duration,
    pub transient: f64,
    pub store_err: f64,
    pub replay_at: Option<Duration>,
    pub bucket_lost_at: Option<Duration>,
    pub reconcile: bool,
}

fn pick<T: Copy>(r: &mut Rng, xs: &[T]) -> T {
    xs[usize::try_from(r.below(xs.len() as u64)).unwrap()]
}

impl Params {
    /// The shape and faults of seed `seed`.
    pub fn draw(seed: u64) -> Params {
        let mut r = Rng::new(seed ^ 0xfa17_5eed);
        let range_len = u16::try_from(r.range(3, 10)).unwrap();
        let range_start = 40_000;
        let pool = if r.chance(0.25) {
            usize::try_from(r.range(2, 3)).unwrap()
        } else {
            1
        };
        let allocs = usize::try_from(r.range(2, 7)).unwrap();
        let listenerset = r.chance(0.4);
        let mut foreign_ports = Vec::new();
        if r.chance(0.3) {
            for _ in 0..r.range(1, 2) {
                foreign_ports
                    .push(range_start + u16::try_from(r.below(u64::from(range_len))).unwrap());
            }
            foreign_ports.sort_unstable();
            foreign_ports.dedup();
        }
        let mut refuse_ports = Vec::new();
        if r.chance(0.25) {
            for _ in 0..r.range(1, 2) {
                let at = usize::try_from(r.below(pool as u64)).unwrap();
                refuse_ports.push((
                    at,
                    range_start + u16::try_from(r.below(u64::from(range_len))).unwrap(),
                ));
            }
        }
        let refuse_gateway =
            (r.chance(0.1)).then(|| usize::try_from(r.below(pool as u64)).unwrap());
        let reply_fail = match r.below(6) {
            0 | 1 => ReplyFail::Once(pick(&mut r, &[0.1, 0.3, 0.6])),
            2 => ReplyFail::Always {
                alloc: format!("a{}", r.below(allocs as u64)),
                until: Duration::from_secs(r.range(5, 90)),
            },
            _ => ReplyFail::None,
        };
        Params {
            allocs,
            proxies: usize::try_from(r.range(1, 2)).unwrap(),
            range_start,
            range_len,
            pool,
            listenerset,
            listener_limit: usize::try_from(r.range(2, 12)).unwrap(),
            probe: r.chance(0.6),
            workers: usize::try_from(r.range(1, 3)).unwrap(),
            lanes: usize::try_from(r.range(1, 3)).unwrap(),
            max_deliver: pick(&mut r, &[2, 3, 4, 6, 10, -1]),
            ack_wait: Duration::from_secs(r.range(2, 10)),
            span: Duration::from_secs(r.range(1, 40)),
            dup_same: pick(&mut r, &[0.0, 0.2, 0.5]),
            dup_new: pick(&mut r, &[0.0, 0.2, 0.5]),
            ended: pick(&mut r, &[0.3, 0.7, 1.0]),
            ended_early: pick(&mut r, &[0.0, 0.1, 0.3]),
            crash: pick(&mut r, &[0.0, 0.0, 0.5, 2.0, 6.0]),
            ack_lost: pick(&mut r, &[0.0, 0.0, 0.1]),
            reply_fail,
            stale_status: r.chance(0.5),
            lag_max_ms: pick(&mut r, &[0, 200, 2_000, 8_000]),
            foreign_ports,
            foreign_hidden: r.chance(0.5),
            refuse_ports,
            refuse_gateway,
            refuse_until: Duration::from_secs(r.range(2, 60)),
            transient: pick(&mut r, &[0.0, 0.0, 0.02, 0.1]),
            store_err: pick(&mut r, &[0.0, 0.0, 0.0, 0.01, 0.05]),
            replay_at: r.chance(0.2).then(|| Duration::from_secs(r.range(0, 60))),
            bucket_lost_at: r.chance(0.1).then(|| Duration::from_secs(r.range(5, 60))),
            // Every worker runs its reconciler: what crashes leave is its to remove.
            reconcile: true,
        }
    }

    /// Applies `key=value,...` overrides; a key not known is an error naming it.
    pub fn apply(&mut self, overrides: &str) -> Result<(), String> {
        for kv in overrides
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (k, v) = kv.split_once('=').ok_or(format!("{kv}: not key=value"))?;
            let f = || v.parse::<f64>().map_err(|e| format!("{k}={v}: {e}"));
            let u = || v.parse::<u64>().map_err(|e| format!("{k}={v}: {e}"));
            let secs = |v: &str| -> Result<Option<Duration>, String> {
                if v == "none" {
                    Ok(None)
                } else {
                    v.parse::<u64>()
                        .map(|s| Some(Duration::from_secs(s)))
                        .map_err(|e| format!("{k}={v}: {e}"))
                }
            };
            match k {
                "allocs" => self.allocs = usize::try_from(u()?).unwrap(),
                "proxies" => self.proxies = usize::try_from(u()?).unwrap(),
                "range" => self.range_len = u16::try_from(u()?).unwrap(),
                "pool" => self.pool = usize::try_from(u()?).unwrap(),
                "listenerset" => self.listenerset = u()? != 0,
                "limit" => self.listener_limit = usize::try_from(u()?).unwrap(),
                "probe" => self.probe = u()? != 0,
                "workers" => self.workers = usize::try_from(u()?).unwrap(),
                "lanes" => self.lanes = usize::try_from(u()?).unwrap(),
                "max_deliver" => self.max_deliver = v.parse().map_err(|e| format!("{k}: {e}"))?,
                "span" => self.span = Duration::from_secs(u()?),
                "dup_same" => self.dup_same = f()?,
                "dup_new" => self.dup_new = f()?,
                "ended" => self.ended = f()?,
                "ended_early" => self.ended_early = f()?,
                "crash" => self.crash = f()?,
                "ack_lost" => self.ack_lost = f()?,
                "reply_fail" => {
                    self.reply_fail = match v {
                        "none" => ReplyFail::None,
                        _ => ReplyFail::Once(f()?),
                    }
                }
                "stale" => self.stale_status = u()? != 0,
                "lag" => self.lag_max_ms = u()?,
                "foreign" => {
                    if v == "none" {
                        self.foreign_ports.clear();
                    }
                }
                "refuse_ports" => {
                    if v == "none" {
                        self.refuse_ports.clear();
                    }
                }
                "refuse_gateway" => {
                    self.refuse_gateway = if v == "none" {
                        None
                    } else {
                        Some(usize::try_from(u()?).unwrap())
                    }
                }
                "transient" => self.transient = f()?,
                "store_err" => self.store_err = f()?,
                "replay" => self.replay_at = secs(v)?,
                "bucket_lost" => self.bucket_lost_at = secs(v)?,
                "reconcile" => self.reconcile = u()? != 0,
                _ => return Err(format!("{k}: no such parameter")),
            }
        }
        Ok(())
    }

    /// The simplifications a shrink tries, each as overrides: fewer of everything, one fault off at a time.
    pub fn simpler(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |on: bool, s: String| {
            if on {
                out.push(s);
            }
        };
        add(self.allocs > 1, format!("allocs={}", self.allocs - 1));
        add(self.crash > 0.0, "crash=0".into());
        add(self.replay_at.is_some(), "replay=none".into());
        add(self.bucket_lost_at.is_some(), "bucket_lost=none".into());
        add(self.dup_same > 0.0, "dup_same=0".into());
        add(self.dup_new > 0.0, "dup_new=0".into());
        add(self.ended_early > 0.0, "ended_early=0".into());
        add(self.ack_lost > 0.0, "ack_lost=0".into());
        add(self.reply_fail != ReplyFail::None, "reply_fail=none".into());
        add(self.transient > 0.0, "transient=0".into());
        add(self.store_err > 0.0, "store_err=0".into());
        add(self.lag_max_ms > 0, "lag=0".into());
        add(self.stale_status, "stale=0".into());
        add(!self.foreign_ports.is_empty(), "foreign=none".into());
        add(!self.refuse_ports.is_empty(), "refuse_ports=none".into());
        add(self.refuse_gateway.is_some(), "refuse_gateway=none".into());
        add(self.workers > 1, format!("workers={}", self.workers - 1));
        add(self.lanes > 1, format!("lanes={}", self.lanes - 1));
        add(self.proxies > 1, "proxies=1".into());
        add(self.pool > 1, format!("pool={}", self.pool - 1));
        out
    }

    /// What a trace's first line says of the run.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "allocs={} proxies={} range={} pool={} mode={} limit={} probe={} workers={}x{} max_deliver={} ack_wait={:?} span={:?} dup_same={} dup_new={} ended={} ended_early={} crash={}/min ack_lost={} reply_fail={:?} stale={} lag={}ms foreign={:?}{} refuse_ports={:?} refuse_gateway={:?} until {:?} transient={} store_err={} replay={:?} bucket_lost={:?} reconcile={}",
            self.allocs,
            self.proxies,
            self.range_len,
            self.pool,
            if self.listenerset {
                "listenerset"
            } else {
                "gateway"
            },
            self.listener_limit,
            self.probe,
            self.workers,
            self.lanes,
            self.max_deliver,
            self.ack_wait,
            self.span,
            self.dup_same,
            self.dup_new,
            self.ended,
            self.ended_early,
            self.crash,
            self.ack_lost,
            self.reply_fail,
            self.stale_status,
            self.lag_max_ms,
            self.foreign_ports,
            if self.foreign_hidden && self.listenerset {
                " (hidden)"
            } else {
                ""
            },
            self.refuse_ports,
            self.refuse_gateway,
            self.refuse_until,
            self.transient,
            self.store_err,
            self.replay_at,
            self.bucket_lost_at,
            self.reconcile,
        );
        s
    }
}
