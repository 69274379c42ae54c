//! The layers hold by construction, not by habit: the core crate's dependency closure (read from
//! Cargo.lock) reaches neither NATS nor Kubernetes, each adapter reaches only its own server, and the
//! worker, the reconciler and the consumer loop name no adapter type.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Package name -> the names of its dependencies, from Cargo.lock.
fn lock_graph(root: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    let mut graph = BTreeMap::new();
    for block in text.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in block.lines() {
            let line = line.trim();
            if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_owned());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line == "]" {
                in_deps = false;
            } else if in_deps {
                // `"name"` or `"name version"` or `"name version (source)"`.
                let dep = line.trim_end_matches(',').trim_matches('"');
                deps.push(dep.split(' ').next().unwrap_or(dep).to_owned());
            }
        }
        if let Some(n) = name {
            graph.entry(n).or_insert_with(Vec::new).extend(deps);
        }
    }
    graph
}

fn closure(graph: &BTreeMap<String, Vec<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(graph.get(&p).cloned().unwrap_or_default());
        }
    }
    seen
}

const NATS: &[&str] = &["async-nats"];
const KUBE: &[&str] = &[
    "kube",
    "kube-client",
    "kube-runtime",
    "k8s-openapi",
    "gateway-api",
];

fn reached<'a>(closure: &BTreeSet<String>, crates: &[&'a str]) -> Vec<&'a str> {
    crates
        .iter()
        .copied()
        .filter(|c| closure.contains(*c))
        .collect()
}

#[test]
fn the_core_reaches_neither_nats_nor_kubernetes_and_each_adapter_only_its_own_server() {
    let graph = lock_graph(Path::new(env!("CARGO_MANIFEST_DIR")));
    let core = closure(&graph, "itg-core");
    assert!(
        core.contains("serde_json"),
        "the lock graph was not read: {core:?}"
    );
    assert_eq!(
        reached(&core, NATS),
        Vec::<&str>::new(),
        "itg-core reaches NATS"
    );
    assert_eq!(
        reached(&core, KUBE),
        Vec::<&str>::new(),
        "itg-core reaches Kubernetes"
    );
    let nats = closure(&graph, "itg-nats");
    assert!(nats.contains("async-nats") && nats.contains("itg-core"));
    assert_eq!(
        reached(&nats, KUBE),
        Vec::<&str>::new(),
        "itg-nats reaches Kubernetes"
    );
    let k8s = closure(&graph, "itg-k8s");
    assert!(k8s.contains("kube") && k8s.contains("itg-core"));
    assert_eq!(
        reached(&k8s, NATS),
        Vec::<&str>::new(),
        "itg-k8s reaches NATS"
    );
}

/// The `use` lines and paths of a source file that name one of `needles`.
fn naming(path: &Path, needles: &[&str]) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("source file");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(|l| format!("{}: {}", path.display(), l.trim()))
        .collect()
}

#[test]
fn the_worker_reconciler_and_consumer_depend_on_the_seams_not_on_an_adapter() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<_> = std::fs::read_dir(src.join("worker"))
        .expect("src/worker")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.extend(["reconciler.rs", "consumer.rs", "replay.rs", "admin.rs"].map(|f| src.join(f)));
    // The pull loop and the replay read NATS messages, and /readyz asks NATS for its state: they may name
    // async_nats, but never an adapter's types.
    let adapters = [
        "crate::k8s",
        "crate::nats",
        "itg_k8s",
        "itg_nats",
        "KubeGateway",
        "KvStore",
        "JetStreamReplier",
        "kube::",
    ];
    let found: Vec<String> = files.iter().flat_map(|f| naming(f, &adapters)).collect();
    assert_eq!(
        found,
        Vec::<String>::new(),
        "these name an adapter instead of a seam"
    );
    assert!(
        files.len() >= 9,
        "the worker's files were not all read: {files:?}"
    );
}
