//! The apiserver's own account of its requests: mean request duration per resource and verb, from its
//! `/metrics`, between two snapshots; writes only, or every verb with the scope of each list.

use std::collections::BTreeMap;

async fn read(client: &kube::Client, all: bool) -> BTreeMap<(String, String, bool), f64> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("metrics request");
    let text = client.request_text(req).await.unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_duration_seconds_"))
    {
        let is_sum = line.starts_with("apiserver_request_duration_seconds_sum");
        if !is_sum && !line.starts_with("apiserver_request_duration_seconds_count") {
            continue;
        }
        let label = |k: &str| {
            line.split_once(&format!("{k}=\""))
                .and_then(|(_, r)| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let mut verb = label("verb");
        if all {
            // A list of every namespace is told from one of a namespace, a watch the same way.
            if matches!(verb.as_str(), "LIST" | "WATCH") {
                verb = format!("{verb}({})", label("scope"));
            }
        } else if !matches!(
            verb.as_str(),
            "APPLY" | "DELETE" | "PATCH" | "CREATE" | "UPDATE"
        ) {
            continue;
        }
        let Some(v) = line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok())
        else {
            continue;
        };
        *out.entry((label("resource"), verb, is_sum)).or_default() += v;
    }
    out
}

pub struct Snapshot(BTreeMap<(String, String, bool), f64>, bool);

/// The writes from now on.
pub async fn snapshot(client: &kube::Client) -> Snapshot {
    Snapshot(read(client, false).await, false)
}

/// Every request from now on, reads too (`services LIST(cluster) 1 x 30.0 ms, ...`).
pub async fn requests(client: &kube::Client) -> Snapshot {
    Snapshot(read(client, true).await, true)
}

impl Snapshot {
    /// `gateways APPLY 1200 x 85.0 ms, services APPLY ...` since the snapshot, busiest first.
    pub async fn since(&self, client: &kube::Client) -> String {
        let now = read(client, self.1).await;
        let delta = |k: &(String, String, bool)| {
            now.get(k).copied().unwrap_or(0.0) - self.0.get(k).copied().unwrap_or(0.0)
        };
        let mut rows: Vec<(f64, String)> = now
            .keys()
            .filter(|k| !k.2)
            .filter_map(|(r, v, _)| {
                let n = delta(&(r.clone(), v.clone(), false));
                let s = delta(&(r.clone(), v.clone(), true));
                (n >= 1.0).then(|| (s, format!("{r} {v} {n:.0} x {:.1} ms", s / n * 1e3)))
            })
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));
        rows.into_iter()
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
