//! Test harness: the real servers started by `scripts/testenv up`, a fresh Gateway and namespace per test,
//! in-process workers, and a reply collector. Nothing here stands in for NATS or Kubernetes.
#![allow(dead_code)]

pub mod backend;
pub mod contour;
pub mod deploy;
pub mod history;
pub mod link;
pub mod pods;
pub mod process;
pub mod prometheus;
pub mod sites;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::listenersets::ListenerSet;
use gateway_api::experimental::tcproutes::TcpRoute;
use itg::config::Config;
use itg::contract::{self, EventKind};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

/// Where the servers are: `.itg/env` written by `scripts/testenv up`, or the same variables in the environment.
pub struct Env {
    pub nats_url: String,
    pub kubeconfig: PathBuf,
}

impl Env {
    pub fn load() -> Env {
        // RUST_LOG=itg=debug shows what the in-process workers do.
        if std::env::var_os("RUST_LOG").is_some() {
            itg::cli::init_logging(itg::config::LogFormat::Text);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let file = std::fs::read_to_string(root.join(".itg/env")).unwrap_or_default();
        let mut vars: BTreeMap<String, String> = file
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), unquote(v)))
            .collect();
        for k in ["NATS_URL", "KUBECONFIG"] {
            if let Ok(v) = std::env::var(format!("ITG_TEST_{k}")) {
                vars.insert(k.into(), v);
            }
        }
        let get = |k: &str| {
            vars.get(k).cloned().unwrap_or_else(|| {
                panic!("{k} unknown: run `scripts/testenv up` first (it writes .itg/env)")
            })
        };
        Env {
            nats_url: get("NATS_URL"),
            kubeconfig: PathBuf::from(get("KUBECONFIG")),
        }
    }

    pub async fn kube(&self) -> Client {
        let kc =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig readable");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kubeconfig valid");
        Client::try_from(cfg).expect("kube client")
    }

    pub async fn nats(&self) -> async_nats::Client {
        async_nats::connect(itg::nats::server_addrs(&self.nats_url).expect("NATS_URL"))
            .await
            .expect("NATS reachable")
    }
}

/// A variable of `.itg/env` (or of the environment, which wins), for what only some tests need.
pub fn env_var(k: &str) -> Option<String> {
    if let Ok(v) = std::env::var(k) {
        return Some(v);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::read_to_string(root.join(".itg/env")).ok()?;
    file.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(key, _)| *key == k)
        .map(|(_, v)| unquote(v))
}

/// A value of `.itg/env` as written: testenv single-quotes one with spaces, so that a shell can source it.
fn unquote(v: &str) -> String {
    match v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        Some(inner) => inner.replace("'\\''", "'"),
        None => v.to_owned(),
    }
}

/// The GatewayClass Envoy Gateway serves; fails with testenv's reason when it is not running.
pub fn envoy_class() -> String {
    if let Some(why) = env_var("ITG_ENVOY_UNAVAILABLE") {
        panic!("Envoy Gateway is not running: {why}");
    }
    env_var("ITG_ENVOY_CLASS")
        .expect("ITG_ENVOY_CLASS unknown: run `scripts/testenv up` first (it writes .itg/env)")
}

/// A short random lowercase suffix for names.
pub fn suffix() -> String {
    Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// A Gateway of the `itg` class with an operator's placeholder listener, made for one test.
pub async fn make_gateway(client: &Client, ns: &str, name: &str, placeholder_port: u16) {
    make_gateway_of_class(client, ns, name, "itg", placeholder_port).await;
}

/// A Gateway of `class` with an operator's placeholder listener. On a class a controller serves, the
/// placeholder's port really binds, so it must be unique on the host.
pub async fn make_gateway_of_class(
    client: &Client,
    ns: &str,
    name: &str,
    class: &str,
    placeholder_port: u16,
) {
    let api: Api<Gateway> = Api::namespaced(client.clone(), ns);
    let body = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "gatewayClassName": class,
            // ListenerSets from the Gateway's own namespace, where `listener_mode: listenerset` makes them.
            "allowedListeners": { "namespaces": { "from": "Same" } },
            "listeners": [{ "name": "placeholder", "port": placeholder_port, "protocol": "TCP" }]
        }
    });
    api.patch(name, &PatchParams::apply("operator"), &Patch::Apply(&body))
        .await
        .expect("create test Gateway");
}

pub async fn make_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name } })).expect("namespace");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// One resource manager made for a test: its own Gateway (in `gateway-system`) and task namespace.
pub struct TestRm {
    pub name: String,
    pub gateway: String,
    pub gateway_ns: String,
    pub task_ns: String,
    pub range: (u16, u16),
    pub extra: String,
    /// The address `ready` gives: where a served class's envoy listens on this machine (Host mode binds
    /// every address), a documentation address for the `itg` class, which nothing serves.
    pub gateway_ip: String,
}

impl TestRm {
    pub async fn new(env: &Env, prefix: &str, range: (u16, u16)) -> TestRm {
        TestRm::on_class(env, prefix, range, "itg", 39999).await
    }

    /// One whose Gateway is of `class`, with its placeholder listener on `placeholder_port`.
    pub async fn on_class(
        env: &Env,
        prefix: &str,
        range: (u16, u16),
        class: &str,
        placeholder_port: u16,
    ) -> TestRm {
        let s = suffix();
        let client = env.kube().await;
        let rm = TestRm {
            name: format!("{prefix}-{s}"),
            gateway: format!("gw-{s}"),
            gateway_ns: "gateway-system".into(),
            task_ns: format!("tasks-{s}"),
            range,
            // A class a controller serves gets its status: ready waits for it (see `yaml`).
            extra: if class == "itg" {
                String::new()
            } else {
                "    wait_for_controller: true\n".into()
            },
            gateway_ip: if class == "itg" {
                "203.0.113.10".into()
            } else {
                "127.0.0.1".into()
            },
        };
        make_gateway_of_class(
            &client,
            &rm.gateway_ns,
            &rm.gateway,
            class,
            placeholder_port,
        )
        .await;
        make_namespace(&client, &rm.task_ns).await;
        rm
    }

    pub fn yaml(&self, env: &Env) -> String {
        // The `itg` class has no controller to write status: ready cannot wait for one, unless `extra` says
        // otherwise (as `on_class` does for a class a controller serves).
        let wait = if self.extra.contains("wait_for_controller:") {
            ""
        } else {
            "    wait_for_controller: false\n"
        };
        format!(
            "  - name: {}\n    kubeconfig: {}\n{wait}{}    internal_task_gateway:\n      gateway_name: {}\n      gateway_namespace: {}\n      gateway_ip: {}\n      gateway_port_range_start: {}\n      gateway_port_range_end: {}\n",
            self.name,
            env.kubeconfig.display(),
            self.extra,
            self.gateway,
            self.gateway_ns,
            self.gateway_ip,
            self.range.0,
            self.range.1
        )
    }

    pub async fn teardown(&self, env: &Env) {
        let client = env.kube().await;
        let gws: Api<Gateway> = Api::namespaced(client.clone(), &self.gateway_ns);
        let _ = gws.delete(&self.gateway, &DeleteParams::default()).await;
        delete_namespace(&client, &self.task_ns).await;
    }
}

/// A config for the given resource managers; `worker` is extra YAML under `worker:`.
pub fn config(env: &Env, rms: &[&TestRm], worker: &str) -> Config {
    Config::parse(&config_yaml(env, rms, worker, "127.0.0.1:0"), "test config")
        .expect("test config valid")
}

/// The YAML of [`config`], with the admin endpoint at `admin`.
pub fn config_yaml(env: &Env, rms: &[&TestRm], worker: &str, admin: &str) -> String {
    // A short ack wait so an event held by a killed worker comes back within seconds.
    let mut y = format!(
        "nats:\n  url: {}\nadmin:\n  address: {admin}\njetstream:\n  ack_wait: 3s\n  max_deliver: -1\nworker:\n  retry_min: 50ms\n  retry_max: 500ms\n{worker}resource_managers:\n",
        env.nats_url
    );
    for rm in rms {
        y.push_str(&rm.yaml(env));
    }
    y
}

/// A worker running in this process, with its own NATS connection and apiserver clients.
pub struct Worker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    pub async fn start(config: Config) -> Worker {
        let servers = itg::app::connect(&config).await.expect("worker connects");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            itg::app::run(config, servers, rx)
                .await
                .expect("worker runs");
        });
        Worker { stop, task }
    }

    /// Stops pulling and waits for the events in flight.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(60), self.task).await;
    }

    /// Ends the worker at once, as a crash would (events in flight are left unacknowledged).
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Publishes events as the master does.
#[derive(Clone)]
pub struct Master {
    js: jetstream::Context,
    pub rm: String,
}

impl Master {
    pub async fn new(env: &Env, rm: &str) -> Master {
        Master {
            js: jetstream::new(env.nats().await),
            rm: rm.to_owned(),
        }
    }

    pub async fn publish_raw(&self, kind: EventKind, event_id: Option<Uuid>, body: Vec<u8>) {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = event_id {
            headers.insert("Nats-Msg-Id", id.to_string().as_str());
        }
        // As the master does: retry until stored (the chaos test restarts the server); the message id makes a
        // retry of a stored event a duplicate the stream drops.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let body = bytes::Bytes::from(body);
        loop {
            let sent = self
                .js
                .publish_with_headers(
                    contract::event_subject(&self.rm, kind),
                    headers.clone(),
                    body.clone(),
                )
                .await;
            let err = match sent {
                Ok(ack) => match ack.await {
                    Ok(_) => return,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "publish to {}: {err}",
                self.rm
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn started_with(&self, event_id: Uuid, alloc: &str, ns: &str, ports: &[(&str, u16)]) {
        let sel = pods::task_selector(alloc);
        self.started_selecting(event_id, alloc, ns, &sel, ports)
            .await;
    }

    /// A started whose `pod_selector` is `sel`, for tests with real Pods to select.
    pub async fn started_selecting(
        &self,
        event_id: Uuid,
        alloc: &str,
        ns: &str,
        sel: &BTreeMap<String, String>,
        ports: &[(&str, u16)],
    ) {
        let ports: Vec<(String, u16)> = ports.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect();
        let body = itg::ctl::started_payload(event_id, alloc, ns, sel, &ports);
        self.publish_raw(
            EventKind::Started,
            Some(event_id),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    }

    pub async fn started(&self, alloc: &str, ns: &str, ports: &[(&str, u16)]) -> Uuid {
        let id = Uuid::new_v4();
        self.started_with(id, alloc, ns, ports).await;
        id
    }

    pub async fn ended(&self, alloc: &str) -> Uuid {
        let id = Uuid::new_v4();
        let body = itg::ctl::ended_payload(id, alloc);
        self.publish_raw(
            EventKind::Ended,
            Some(id),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
        id
    }
}

/// One reply as stored in `ITG_REPLIES`.
#[derive(Debug, Clone)]
pub struct Seen {
    pub kind: String,
    pub body: Value,
}

impl Seen {
    pub fn alloc(&self) -> Option<&str> {
        self.body["allocation_id"].as_str()
    }

    /// `name=gateway_port` pairs of a ready reply, sorted.
    pub fn addresses(&self) -> Vec<String> {
        let mut v: Vec<String> = self.body["proxies"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        format!(
                            "{}={}",
                            p["name"].as_str().unwrap(),
                            p["address"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The `address` of proxy `name` of a ready reply, exactly as sent.
    pub fn address(&self, name: &str) -> std::net::SocketAddr {
        self.body["proxies"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .and_then(|p| p["address"].as_str())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address for proxy {name} in {:?}", self.body))
    }

    pub fn ports(&self) -> Vec<u16> {
        self.body["proxies"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| p["gateway_port"].as_u64().unwrap() as u16)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Collects every reply of one resource manager from the start of the stream.
#[derive(Clone)]
pub struct Replies {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Replies {
    pub async fn watch(env: &Env, rm: &str) -> Replies {
        let js = jetstream::new(env.nats().await);
        let stream = loop {
            // The first worker creates the stream; wait for it.
            match js.get_stream(contract::REPLIES_STREAM).await {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let filter = format!("itg.replies.{rm}.>");
        // Resubscribes after the last reply seen when the server goes away (the chaos test restarts it).
        tokio::spawn(async move {
            let mut next = 1;
            loop {
                let consumer = stream
                    .create_consumer(consumer::push::OrderedConfig {
                        deliver_subject: format!("_INBOX.test.{}", suffix()),
                        filter_subject: filter.clone(),
                        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: next,
                        },
                        ..Default::default()
                    })
                    .await;
                if let Ok(c) = consumer
                    && let Ok(mut msgs) = c.messages().await
                {
                    while let Some(Ok(m)) = msgs.next().await {
                        if let Ok(info) = m.info() {
                            next = info.stream_sequence + 1;
                        }
                        let kind = m.subject.rsplit('.').next().unwrap_or("").to_owned();
                        let body: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                        sink.lock().unwrap().push(Seen { kind, body });
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Replies { seen }
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn for_alloc(&self, alloc: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.alloc() == Some(alloc))
            .cloned()
            .collect()
    }

    /// Waits until `pred` holds of the replies so far; panics with them after `secs`.
    pub async fn wait(&self, secs: u64, what: &str, pred: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let all = self.all();
            if pred(&all) {
                return all;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out after {secs} s waiting for {what}; replies so far: {all:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first answer to `alloc`'s started (a reply other than `removed`), waited for up to `secs`.
    pub async fn answer(&self, secs: u64, alloc: &str) -> Seen {
        let answers = self
            .wait(secs, "an answer", |seen| {
                seen.iter()
                    .any(|s| s.alloc() == Some(alloc) && s.kind != "removed")
            })
            .await;
        answers
            .into_iter()
            .find(|s| s.alloc() == Some(alloc))
            .expect("an answer")
    }

    /// `ready` for `alloc` (waited for up to 120 s), and when this test first saw it.
    pub async fn ready(&self, alloc: &str) -> (Seen, std::time::Instant) {
        let r = self.first(120, alloc, "ready").await;
        (r, std::time::Instant::now())
    }

    /// Waits for a reply of `kind` for `alloc` and returns it.
    pub async fn first(&self, secs: u64, alloc: &str, kind: &str) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let mine = self.for_alloc(alloc);
            if let Some(s) = mine.iter().find(|s| s.kind == kind) {
                return s.clone();
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out after {secs} s waiting for {kind} for {alloc}; its replies: {mine:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What exists in Kubernetes and KV for one test resource manager.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// listener name -> port, of listeners the worker owns.
    pub listeners: BTreeMap<String, u16>,
    /// foreign listener name -> port.
    pub foreign: BTreeMap<String, u16>,
    pub services: Vec<String>,
    pub routes: Vec<String>,
    /// The resource manager's ListenerSets (`listener_mode: listenerset`); their listeners are in
    /// `listeners`.
    pub sets: Vec<String>,
    /// port -> claiming allocation key.
    pub claims: BTreeMap<u16, String>,
}

impl Observed {
    /// No owned listener, Service, route or port claim: nothing left behind.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.sets.is_empty()
            && self.services.is_empty()
            && self.routes.is_empty()
            && self.claims.is_empty()
    }
}

pub async fn observe(env: &Env, rm: &TestRm) -> Observed {
    let client = env.kube().await;
    let mut o = Observed::default();
    let gw = Api::<Gateway>::namespaced(client.clone(), &rm.gateway_ns)
        .get(&rm.gateway)
        .await
        .expect("gateway");
    for l in gw.spec.listeners {
        if itg::names::is_owned_listener_name(&l.name) {
            o.listeners.insert(l.name, l.port as u16);
        } else {
            o.foreign.insert(l.name, l.port as u16);
        }
    }
    let lp = ListParams::default().labels(&itg::names::owned_selector(&rm.name));
    let sets = Api::<ListenerSet>::namespaced(client.clone(), &rm.gateway_ns)
        .list(&lp)
        .await
        .expect("listenersets");
    for set in sets.items {
        for l in &set.spec.listeners {
            o.listeners.insert(l.name.clone(), l.port as u16);
        }
        o.sets.extend(set.metadata.name);
    }
    o.sets.sort();
    o.services = Api::<Service>::namespaced(client.clone(), &rm.task_ns)
        .list(&lp)
        .await
        .expect("services")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    o.routes = Api::<TcpRoute>::namespaced(client.clone(), &rm.task_ns)
        .list(&lp)
        .await
        .expect("routes")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    o.services.sort();
    o.routes.sort();
    let js = jetstream::new(env.nats().await);
    let kv = js.get_key_value("ITG_STATE").await.expect("state bucket");
    let prefix = itg::names::port_key_prefix(&rm.name, &rm.gateway_ns, &rm.gateway);
    let mut keys = kv.keys().await.expect("keys");
    while let Some(k) = keys.next().await {
        let k = k.expect("key");
        if let Some(port) = k.strip_prefix(&prefix)
            && let Some(v) = kv.get(&k).await.expect("get")
        {
            let claim: Value = serde_json::from_slice(&v).unwrap();
            o.claims.insert(
                port.parse().unwrap(),
                claim["allocation"].as_str().unwrap().to_owned(),
            );
        }
    }
    o
}

/// Ends `alloc` and waits up to 60 s for its `removed`.
pub async fn end(master: &Master, replies: &Replies, alloc: &str) {
    master.ended(alloc).await;
    replies.first(60, alloc, "removed").await;
}

/// A new allocation id, as the master makes them.
pub fn alloc() -> String {
    format!("{}.1", Uuid::new_v4())
}

/// The usual test set-up: one resource manager with its own Gateway and task namespace, one worker
/// serving it, the master's publisher and a collector of its replies.
pub struct Scenario {
    pub env: Env,
    pub rm: TestRm,
    pub worker: Worker,
    pub master: Master,
    pub replies: Replies,
}

impl Scenario {
    /// `worker` is extra YAML under `worker:` (for example a short capacity deadline).
    pub async fn start(prefix: &str, range: (u16, u16), worker: &str) -> Scenario {
        let env = Env::load();
        let rm = TestRm::new(&env, prefix, range).await;
        let worker = Worker::start(config(&env, &[&rm], worker)).await;
        let master = Master::new(&env, &rm.name).await;
        let replies = Replies::watch(&env, &rm.name).await;
        Scenario {
            env,
            rm,
            worker,
            master,
            replies,
        }
    }

    /// Publishes a started of `ports` for a new allocation and waits up to 30 s for its `ready`: the
    /// allocation and the reply.
    pub async fn ready_one(&self, ports: &[(&str, u16)]) -> (String, Seen) {
        let a = alloc();
        self.master.started(&a, &self.rm.task_ns, ports).await;
        let r = self.replies.first(30, &a, "ready").await;
        (a, r)
    }

    /// Stops the worker and removes the Gateway and namespace.
    pub async fn finish(self) {
        self.worker.stop().await;
        self.rm.teardown(&self.env).await;
    }
}

/// Runs the `itgctl` binary against the test servers: (exit code, stdout, stderr).
pub fn itgctl(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_itgctl"))
        .args(args)
        .env("NATS_URL", &env.nats_url)
        .output()
        .expect("itgctl runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The kubeconfig's text and its `server:` URL, to write a copy that points elsewhere.
pub fn kubeconfig_server(env: &Env) -> (String, String) {
    let text = std::fs::read_to_string(&env.kubeconfig).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_owned();
    (text, server)
}

/// The apiserver's `host:port`, as the kubeconfig names it.
pub fn apiserver_addr(env: &Env) -> String {
    let (_, server) = kubeconfig_server(env);
    server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned()
}

/// The servers of `env`, with the apiserver reached through `proxy` (`host:port`) instead: the kubeconfig
/// copy lives as long as the returned file.
pub fn through(env: &Env, proxy: &str) -> (tempfile::NamedTempFile, Env) {
    let (text, server) = kubeconfig_server(env);
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        kubeconfig.path(),
        text.replace(&server, &format!("https://{proxy}")),
    )
    .unwrap();
    let env = Env {
        nats_url: env.nats_url.clone(),
        kubeconfig: kubeconfig.path().to_owned(),
    };
    (kubeconfig, env)
}
