//! The worker's own account of where its time goes: the apiserver call histograms and event outcomes of
//! the in-process workers, read from the metrics registry before and after a section.

use std::collections::BTreeMap;

/// Sum and count of each series family member, keyed by metric and its `call` or `outcome` label.
fn read() -> BTreeMap<String, f64> {
    let text = itg::metrics::get().encode();
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or("");
        let label = |k: &str| {
            series
                .split_once(&format!("{k}=\""))
                .and_then(|(_, r)| r.split('"').next())
                .map(str::to_owned)
        };
        let key = match name {
            "itg_kube_call_seconds_sum" | "itg_kube_call_seconds_count" => {
                format!("{name}/{}", label("call").unwrap_or_default())
            }
            "itg_events_total" => format!(
                "{name}/{}:{}",
                label("kind").unwrap_or_default(),
                label("outcome").unwrap_or_default()
            ),
            _ => continue,
        };
        *out.entry(key).or_default() += v;
    }
    out
}

pub struct Snapshot(BTreeMap<String, f64>);

pub fn snapshot() -> Snapshot {
    Snapshot(read())
}

impl Snapshot {
    /// Per apiserver call since the snapshot: `apply_listener 610 x 9.1 ms`, and event outcomes.
    pub fn since(&self) -> String {
        let now = read();
        let delta =
            |k: &str| now.get(k).copied().unwrap_or(0.0) - self.0.get(k).copied().unwrap_or(0.0);
        let mut parts = Vec::new();
        for k in now.keys() {
            if let Some(call) = k.strip_prefix("itg_kube_call_seconds_count/") {
                let n = delta(k);
                if n > 0.0 {
                    let sum = delta(&format!("itg_kube_call_seconds_sum/{call}"));
                    parts.push(format!("{call} {n:.0} x {:.1} ms", sum / n * 1e3));
                }
            }
        }
        for k in now.keys() {
            if let Some(outcome) = k.strip_prefix("itg_events_total/") {
                let n = delta(k);
                if n > 0.0 && (outcome.ends_with(":retry") || outcome.ends_with(":reply_error")) {
                    parts.push(format!("{outcome} {n:.0}"));
                }
            }
        }
        parts.join(", ")
    }
}
