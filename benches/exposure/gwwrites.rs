//! Writes to Gateway objects while a section runs: a watch of each Gateway counts every new
//! resourceVersion it reports (each is one write: a spec change, a status update or a managedFields change),
//! and the resourceVersion read before and after backs it up. The `itg` class has no controller, so nothing
//! but the worker (and the floor) could write them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use gateway_api::experimental::gateways::Gateway;
use kube::runtime::watcher;
use kube::{Api, Client};

struct One {
    api: Api<Gateway>,
    name: String,
    before: String,
    writes: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

/// Counting writes to some Gateways.
pub struct Counter {
    each: Vec<One>,
}

async fn version(api: &Api<Gateway>, name: &str) -> String {
    api.get(name)
        .await
        .expect("gateway")
        .metadata
        .resource_version
        .unwrap_or_default()
}

/// Starts counting writes to `gateways` (namespace, name) from now on.
pub async fn start(client: &Client, gateways: &[(String, String)]) -> Counter {
    let mut each = Vec::new();
    for (ns, name) in gateways {
        let api: Api<Gateway> = Api::namespaced(client.clone(), ns);
        let before = version(&api, name).await;
        let writes = Arc::new(Mutex::new(0u64));
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let stream = watcher(api.clone(), cfg);
        let (count, mut last) = (writes.clone(), before.clone());
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let seen: Vec<Gateway> = match ev {
                    Ok(watcher::Event::Apply(g) | watcher::Event::InitApply(g)) => vec![g],
                    Ok(watcher::Event::Delete(g)) => vec![g],
                    _ => continue,
                };
                for g in seen {
                    let rv = g.metadata.resource_version.unwrap_or_default();
                    if rv != last {
                        last = rv;
                        *count.lock().expect("count") += 1;
                    }
                }
            }
        });
        each.push(One {
            api,
            name: name.clone(),
            before,
            writes,
            task,
        });
    }
    // Let the watches' first lists land before anything is written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Counter { each }
}

impl Counter {
    /// The writes seen, in all (at least one per Gateway whose resourceVersion moved), and per Gateway
    /// that was written at all.
    pub async fn stop(self) -> (u64, BTreeMap<String, u64>) {
        // Events in flight arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut total = 0;
        let mut per = BTreeMap::new();
        for one in self.each {
            one.task.abort();
            let mut n = *one.writes.lock().expect("count");
            if n == 0 && version(&one.api, &one.name).await != one.before {
                n = 1;
            }
            if n > 0 {
                per.insert(one.name.clone(), n);
            }
            total += n;
        }
        (total, per)
    }
}
