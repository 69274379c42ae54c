//! The worker's configuration: YAML (or JSON) as `../schemas/config.schema.json` describes it.
//!
//! Loading happens once at start; a config that breaks a rule is refused with the key, the value and the
//! rule, so the operator can fix it without reading code.

use backon::BackoffBuilder;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::validate;

/// A refused config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not YAML of the expected shape (unknown key, wrong type, missing key).
    #[error("config {path} is malformed: {message}")]
    Parse { path: String, message: String },
    /// A value breaks a rule.
    #[error("config key `{key}` = {value}: {rule}")]
    Rule {
        key: String,
        value: String,
        rule: String,
    },
}

fn rule(
    key: impl Into<String>,
    value: impl std::fmt::Debug,
    rule: impl Into<String>,
) -> ConfigError {
    ConfigError::Rule {
        key: key.into(),
        value: format!("{value:?}"),
        rule: rule.into(),
    }
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    #[serde(default)]
    pub jetstream: JetStreamConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log_format: LogFormat,
    pub resource_managers: Vec<ResourceManagerConfig>,
}

/// How to reach NATS. Its `Debug` never shows a password, a token or credentials written into the URL.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One URL or a comma-separated list.
    pub url: String,
    #[serde(default = "default_connection_name")]
    pub connection_name: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
    pub tls: Option<TlsConfig>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("url", &redacted_url(&self.url))
            .field("connection_name", &self.connection_name)
            .field("user", &self.user)
            .field("password", &hide(&self.password))
            .field("token", &hide(&self.token))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .field("tls", &self.tls)
            .finish()
    }
}

/// The URL list with any credentials (`user:password@`, `token@`) replaced, for logs and errors.
pub fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|u| redacted_one(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn redacted_one(u: &str) -> String {
    match url::Url::parse(u) {
        // `u:p@host:4222` parses as scheme `u` with no host: that is the bare form below.
        Ok(mut parsed)
            if parsed.has_host()
                && (!parsed.username().is_empty() || parsed.password().is_some()) =>
        {
            // Cleared through the parser, so no part of them survives; the marker is put back by hand
            // because the parser would percent-encode it.
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            let bare = parsed.to_string();
            match bare.split_once("://") {
                Some((scheme, rest)) => format!("{scheme}://<redacted>@{rest}"),
                None => bare,
            }
        }
        Ok(parsed) if parsed.has_host() => u.to_owned(),
        // Not a URL the parser takes (a bare `host:port`): still never show what precedes an `@`.
        _ => match u.rsplit_once('@') {
            Some((_, host)) => format!("<redacted>@{host}"),
            None => u.to_owned(),
        },
    }
}

/// `message` with every member of the URL list `urls`, and the whole list, redacted wherever it is
/// quoted: a client's error may name only the one server it failed on.
pub fn redact_in(message: &str, urls: &str) -> String {
    let mut out = message.replace(urls, &redacted_url(urls));
    for u in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        out = out.replace(u, &redacted_one(u));
    }
    out
}

/// The shortest time `max_deliver` deliveries can span: the waits between them, from the same series the
/// consumer waits by ([`WorkerConfig::redelivery_backoff`]; its jitter only lengthens them).
fn redelivery_span(w: &WorkerConfig, max_deliver: i64) -> Duration {
    let max = w.retry_max.0;
    let mut waits = max_deliver.saturating_sub(1).max(0);
    let mut span = Duration::ZERO;
    for wait in w.redelivery_backoff().build() {
        if waits == 0 || wait >= max {
            break;
        }
        span = span.saturating_add(wait);
        waits -= 1;
    }
    span.saturating_add(max.saturating_mul(u32::try_from(waits).unwrap_or(u32::MAX)))
}

fn default_connection_name() -> String {
    "itg-worker".into()
}

/// TLS towards NATS; a client certificate makes it mutual.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A duration written like `30s`, `2m` or `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, not `String::deserialize` then a check: an error raised while the scalar is read
        // carries the scalar's own path (`worker.retry_min`), not only its parent's (`worker`).
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Dur;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration like \"30s\" or \"1h30m\"")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Dur, E> {
                humantime::parse_duration(s).map(Dur).map_err(|e| {
                    E::custom(format!(
                        "{s:?} is not a duration like \"30s\" or \"1h30m\": {e}"
                    ))
                })
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Streams, KV bucket and consumer settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetStreamConfig {
    pub replicas: usize,
    pub events_max_age: Dur,
    pub replies_max_age: Dur,
    pub duplicate_window: Dur,
    pub state_bucket: String,
    pub consumer_prefix: String,
    pub ack_wait: Dur,
    pub max_deliver: i64,
    /// The JetStream domain the streams, the consumers and the bucket live in, when it is not the domain
    /// of the server the worker connects to (a leaf node reaching the hub's JetStream, say).
    pub domain: Option<String>,
    /// Where the master's streams live, for a worker at a site of its own (see `sites`): the site keeps
    /// its own streams and bucket, sources its events from this domain and has its replies sourced there.
    pub hub_domain: Option<String>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            replicas: 1,
            events_max_age: Dur(Duration::from_secs(7 * 24 * 3600)),
            replies_max_age: Dur(Duration::from_secs(7 * 24 * 3600)),
            duplicate_window: Dur(Duration::from_secs(120)),
            state_bucket: "ITG_STATE".into(),
            consumer_prefix: "itg-worker".into(),
            ack_wait: Dur(Duration::from_secs(30)),
            max_deliver: 50,
            domain: None,
            hub_domain: None,
        }
    }
}

/// The shortest `worker.reconcile_hold_off` a worker accepts.
pub const MIN_RECONCILE_HOLD_OFF: Duration = Duration::from_secs(5);

/// How each worker paces itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    pub concurrency: usize,
    pub capacity_deadline: Dur,
    pub kubernetes_deadline: Dur,
    /// The longest one apiserver request may take before it is abandoned as a transient error.
    pub kubernetes_call_timeout: Dur,
    /// How long an exposure waits for the Gateway's controller to program its listener and accept its
    /// route, counted from when its ports were bound, before it is answered `failed` with `timeout`.
    pub controller_deadline: Dur,
    pub retry_min: Dur,
    pub retry_max: Dur,
    pub shutdown_timeout: Dur,
    pub reconcile_interval: Dur,
    pub reconcile_hold_off: Dur,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 32,
            capacity_deadline: Dur(Duration::from_secs(600)),
            kubernetes_deadline: Dur(Duration::from_secs(300)),
            kubernetes_call_timeout: Dur(Duration::from_secs(15)),
            // Four times the Gateway API's 30 s bound to consistency: a controller busy with a burst of
            // listener changes still makes it.
            controller_deadline: Dur(Duration::from_secs(120)),
            retry_min: Dur(Duration::from_millis(250)),
            retry_max: Dur(Duration::from_secs(30)),
            shutdown_timeout: Dur(Duration::from_secs(25)),
            reconcile_interval: Dur(Duration::from_secs(60)),
            reconcile_hold_off: Dur(Duration::from_secs(120)),
        }
    }
}

impl WorkerConfig {
    /// The waits between an event's deliveries: doubling from `retry_min` up to `retry_max`, without end.
    /// The consumer adds jitter to it; the config's check of `jetstream.max_deliver` sums it without.
    pub fn redelivery_backoff(&self) -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.retry_min.0)
            .with_max_delay(self.retry_max.0)
            .with_factor(2.0)
            .without_max_times()
    }
}

/// The metrics and health endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub address: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: "127.0.0.1:9464".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One Kubernetes cluster and the Gateway in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceManagerConfig {
    pub name: String,
    pub kubeconfig: Option<PathBuf>,
    pub kube_context: Option<String>,
    pub allowed_namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub excluded_ports: Vec<PortOrRange>,
    #[serde(default = "default_listener_limit")]
    pub listener_limit: usize,
    /// Whether `ready` waits for the Gateway's controller to report the listener programmed and the route
    /// accepted. Off only for a Gateway whose controller writes no status.
    #[serde(default = "default_true")]
    pub wait_for_controller: bool,
    /// Where an allocation's listeners go: on the Gateway itself, or in a ListenerSet of its own.
    #[serde(default)]
    pub listener_mode: ListenerMode,
    /// Where the ListenerSets are made, in `listenerset` mode; the Gateway's namespace when unset.
    pub listenerset_namespace: Option<String>,
    /// Whether, and where, `ready` waits for the data plane to accept a connection.
    #[serde(default)]
    pub data_plane_probe: DataPlaneProbe,
    pub internal_task_gateway: InternalTaskGatewayConfig,
    /// More Gateways for this resource manager, each with its own address: an allocation's ports all go
    /// on one Gateway of the pool (this list and `internal_task_gateway`'s), which `ready` names.
    #[serde(default)]
    pub gateway_pool: Vec<PoolGateway>,
}

/// One more Gateway of a resource manager's pool: it shares the port range of `internal_task_gateway`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolGateway {
    pub gateway_name: String,
    pub gateway_namespace: String,
    pub gateway_ip: String,
    /// Where the data plane probe connects for this Gateway's ports, when not `gateway_ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_address: Option<String>,
}

/// The data plane probe: after the controller's verdict, `ready` waits until a connection to each port is
/// accepted, and a port still refused past `grace` is given back and another chosen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataPlaneProbe {
    /// On or off; absent: on where `wait_for_controller` is.
    pub enabled: Option<bool>,
    /// Where to connect for the resource manager's own Gateway, when the worker cannot reach `gateway_ip`
    /// (an in-cluster Service of the envoy, say); the port is the Gateway port either way.
    pub address: Option<String>,
    #[serde(default = "default_probe_grace")]
    pub grace: Dur,
    #[serde(default = "default_probe_deadline")]
    pub deadline: Dur,
    #[serde(default = "default_probe_connect_timeout")]
    pub connect_timeout: Dur,
}

impl Default for DataPlaneProbe {
    fn default() -> Self {
        DataPlaneProbe {
            enabled: None,
            address: None,
            grace: default_probe_grace(),
            deadline: default_probe_deadline(),
            connect_timeout: default_probe_connect_timeout(),
        }
    }
}

fn default_probe_grace() -> Dur {
    Dur(Duration::from_secs(3))
}

fn default_probe_deadline() -> Dur {
    Dur(Duration::from_secs(120))
}

fn default_probe_connect_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}

/// Where an allocation's listeners go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// One listener per proxy port on the shared Gateway (at most 64 per Gateway).
    #[default]
    Gateway,
    /// One ListenerSet per allocation, attached to the Gateway: the Gateway itself is never written, and
    /// the capacity is the port range.
    Listenerset,
}

fn default_listener_limit() -> usize {
    64
}

fn default_true() -> bool {
    true
}

/// The master's `InternalTaskGatewayConfig`, key for key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalTaskGatewayConfig {
    pub gateway_name: String,
    pub gateway_namespace: String,
    pub gateway_ip: String,
    pub gateway_port_range_start: i64,
    pub gateway_port_range_end: i64,
}

/// An excluded port, or an inclusive range written `"a-b"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortOrRange {
    Port(i64),
    Range(String),
}

/// Namespaces refused by default: the control plane's own.
pub const DEFAULT_DENIED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, or the key, value and rule that was broken.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] or [`ConfigError::Rule`].
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let n = &self.nats;
        if n.url.trim().is_empty() {
            return Err(rule(
                "nats.url",
                &n.url,
                "must name at least one NATS server",
            ));
        }
        for url in n.url.split(',') {
            let url = url.trim();
            let ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s) && url.len() > s.len());
            if !ok {
                return Err(rule(
                    "nats.url",
                    url,
                    "each URL must start with nats://, tls://, ws:// or wss:// and name a host",
                ));
            }
        }
        if n.user.is_some() != n.password.is_some() {
            return Err(rule(
                "nats.user",
                &n.user,
                "nats.user and nats.password go together",
            ));
        }
        let methods = [
            n.user.is_some(),
            n.token.is_some(),
            n.nkey_seed_file.is_some(),
            n.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(rule(
                "nats",
                "user/token/nkey_seed_file/creds_file",
                "set at most one way to authenticate",
            ));
        }
        if let Some(tls) = &n.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            {
                return Err(rule(
                    "nats.tls.cert_file",
                    &tls.cert_file,
                    "cert_file and key_file go together",
                ));
            }
        }

        let js = &self.jetstream;
        if !(1..=5).contains(&js.replicas) {
            return Err(rule("jetstream.replicas", js.replicas, "must be 1 to 5"));
        }
        for (key, v) in [
            ("jetstream.state_bucket", &js.state_bucket, 64),
            ("jetstream.consumer_prefix", &js.consumer_prefix, 32),
        ]
        .map(|(k, v, n)| (k, (v, n)))
        {
            let (v, max) = v;
            if v.is_empty()
                || v.len() > max
                || !v
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            {
                return Err(rule(
                    key,
                    v,
                    format!("1 to {max} characters of A-Z, a-z, 0-9, '_' and '-'"),
                ));
            }
        }
        for (key, v) in [
            ("jetstream.domain", &js.domain),
            ("jetstream.hub_domain", &js.hub_domain),
        ] {
            if let Some(v) = v
                && (v.is_empty()
                    || v.len() > 64
                    || !v
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
            {
                return Err(rule(
                    key,
                    v,
                    "a JetStream domain: 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
                ));
            }
        }
        if let (Some(_), Some(hub)) = (&js.domain, &js.hub_domain) {
            return Err(rule(
                "jetstream.hub_domain",
                hub,
                "excludes jetstream.domain: set domain to keep everything in that domain, or hub_domain to keep the streams and the bucket at the site and source them from the hub",
            ));
        }
        if js.max_deliver == 0 || js.max_deliver < -1 {
            return Err(rule(
                "jetstream.max_deliver",
                js.max_deliver,
                "must be at least 1, or -1 for unlimited",
            ));
        }
        for (key, d) in [
            ("jetstream.events_max_age", js.events_max_age),
            ("jetstream.replies_max_age", js.replies_max_age),
            ("jetstream.duplicate_window", js.duplicate_window),
            ("jetstream.ack_wait", js.ack_wait),
            ("worker.capacity_deadline", self.worker.capacity_deadline),
            (
                "worker.kubernetes_deadline",
                self.worker.kubernetes_deadline,
            ),
            (
                "worker.kubernetes_call_timeout",
                self.worker.kubernetes_call_timeout,
            ),
            (
                "worker.controller_deadline",
                self.worker.controller_deadline,
            ),
            ("worker.retry_min", self.worker.retry_min),
            ("worker.retry_max", self.worker.retry_max),
            ("worker.shutdown_timeout", self.worker.shutdown_timeout),
            ("worker.reconcile_interval", self.worker.reconcile_interval),
        ] {
            if d.0.is_zero() {
                return Err(rule(key, d.0, "must be longer than zero"));
            }
        }
        // Both streams get the duplicate window, and NATS refuses a stream whose window exceeds its max age.
        for (other, age) in [
            ("jetstream.events_max_age", js.events_max_age),
            ("jetstream.replies_max_age", js.replies_max_age),
        ] {
            if js.duplicate_window.0 > age.0 {
                return Err(rule(
                    "jetstream.duplicate_window",
                    js.duplicate_window.0,
                    format!("must not exceed {other} ({:?})", age.0),
                ));
            }
        }
        let w = &self.worker;
        if w.reconcile_hold_off.0 < MIN_RECONCILE_HOLD_OFF {
            return Err(rule(
                "worker.reconcile_hold_off",
                w.reconcile_hold_off.0,
                format!(
                    "must be at least {MIN_RECONCILE_HOLD_OFF:?}: the reconciler sees the Gateway through a watch and the objects through lists, both a moment behind, and an apply sent by a pass that gave up can still land; anything younger than the hold-off may be in flight, not orphaned (`itgctl reconcile --hold-off` runs a one-off pass with a shorter one, with the workers stopped)"
                ),
            ));
        }
        if !(1..=1024).contains(&w.concurrency) {
            return Err(rule(
                "worker.concurrency",
                w.concurrency,
                "must be 1 to 1024",
            ));
        }
        let longest = w
            .capacity_deadline
            .0
            .max(w.kubernetes_deadline.0)
            .max(w.controller_deadline.0)
            .max(
                self.resource_managers
                    .iter()
                    .filter(|rm| rm.probes_data_plane())
                    .map(|rm| rm.data_plane_probe.deadline.0)
                    .max()
                    .unwrap_or_default(),
            );
        let budget = redelivery_span(w, js.max_deliver);
        if js.max_deliver != -1 && budget < longest {
            return Err(rule(
                "jetstream.max_deliver",
                js.max_deliver,
                format!(
                    "with worker.retry_min {:?} doubling up to worker.retry_max {:?} it allows {:?} of redeliveries, less than the longest deadline ({:?}): a waiting event would stop being delivered before it is answered; raise it or set -1",
                    w.retry_min.0, w.retry_max.0, budget, longest
                ),
            ));
        }
        if w.kubernetes_call_timeout.0 > w.kubernetes_deadline.0 {
            return Err(rule(
                "worker.kubernetes_call_timeout",
                w.kubernetes_call_timeout.0,
                "must not exceed worker.kubernetes_deadline",
            ));
        }
        if w.retry_min.0 > w.retry_max.0 {
            return Err(rule(
                "worker.retry_min",
                w.retry_min.0,
                "must not exceed worker.retry_max",
            ));
        }
        if self.admin.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(rule(
                "admin.address",
                &self.admin.address,
                "must be an IP address and port, like 127.0.0.1:9464",
            ));
        }

        if self.resource_managers.is_empty() {
            return Err(rule(
                "resource_managers",
                "[]",
                "list at least one resource manager",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, rm) in self.resource_managers.iter().enumerate() {
            rm.validate(&format!("resource_managers[{i}]"))?;
            if !seen.insert(rm.name.as_str()) {
                return Err(rule(
                    format!("resource_managers[{i}].name"),
                    &rm.name,
                    "names must be unique",
                ));
            }
        }
        self.validate_shared_gateways()
    }

    /// Resource managers may share a Gateway, but not its ports: overlapping ranges would hand one port to
    /// two claims kept under different keys.
    fn validate_shared_gateways(&self) -> Result<(), ConfigError> {
        for (i, a) in self.resource_managers.iter().enumerate() {
            for (j, b) in self.resource_managers.iter().enumerate().skip(i + 1) {
                let same_cluster = a.kubeconfig == b.kubeconfig && a.kube_context == b.kube_context;
                let shared = a.gateways().into_iter().find(|ga| {
                    b.gateways().iter().any(|gb| {
                        ga.gateway_namespace == gb.gateway_namespace
                            && ga.gateway_name == gb.gateway_name
                    })
                });
                let (ra, rb) = (a.port_range(), b.port_range());
                if let Some(ga) = shared.filter(|_| same_cluster)
                    && ra.start() <= rb.end()
                    && rb.start() <= ra.end()
                {
                    return Err(rule(
                        format!(
                            "resource_managers[{j}].internal_task_gateway.gateway_port_range_start"
                        ),
                        format!("{}-{}", rb.start(), rb.end()),
                        format!(
                            "resource managers {} and {} share Gateway {}/{} and their port ranges overlap ({}-{} and {}-{}); give each its own range",
                            a.name,
                            b.name,
                            ga.gateway_namespace,
                            ga.gateway_name,
                            ra.start(),
                            ra.end(),
                            rb.start(),
                            rb.end()
                        ),
                    ));
                }
                let _ = i;
            }
        }
        Ok(())
    }
}

/// Whether `host` is an IP address or a DNS name.
fn is_host(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok() || validate::is_dns1123_subdomain(&host.to_ascii_lowercase())
}

/// The name, namespace and address rules of one Gateway, at `at`.
fn validate_gateway(at: &str, name: &str, namespace: &str, ip: &str) -> Result<(), ConfigError> {
    if !validate::is_dns1123_subdomain(name) {
        return Err(rule(
            format!("{at}.gateway_name"),
            name,
            validate::DNS1123_SUBDOMAIN_RULE,
        ));
    }
    if !validate::is_dns1123_label(namespace) {
        return Err(rule(
            format!("{at}.gateway_namespace"),
            namespace,
            validate::DNS1123_LABEL_RULE,
        ));
    }
    if !is_host(ip) {
        return Err(rule(
            format!("{at}.gateway_ip"),
            ip,
            "must be an IPv4 or IPv6 address or a DNS name",
        ));
    }
    Ok(())
}

impl ResourceManagerConfig {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if !validate::is_subject_token(&self.name) {
            return Err(rule(
                format!("{at}.name"),
                &self.name,
                validate::SUBJECT_TOKEN_RULE,
            ));
        }
        if !(1..=64).contains(&self.listener_limit) {
            return Err(rule(
                format!("{at}.listener_limit"),
                self.listener_limit,
                "must be 1 to 64, the Gateway's maxItems",
            ));
        }
        if let Some(ns) = &self.listenerset_namespace
            && !validate::is_dns1123_label(ns)
        {
            return Err(rule(
                format!("{at}.listenerset_namespace"),
                ns,
                validate::DNS1123_LABEL_RULE,
            ));
        }
        if let Some(list) = &self.allowed_namespaces {
            for (j, ns) in list.iter().enumerate() {
                if !validate::is_dns1123_label(ns) {
                    return Err(rule(
                        format!("{at}.allowed_namespaces[{j}]"),
                        ns,
                        validate::DNS1123_LABEL_RULE,
                    ));
                }
            }
        }
        for (j, p) in self.excluded_ports.iter().enumerate() {
            p.bounds()
                .map_err(|r| rule(format!("{at}.excluded_ports[{j}]"), p, r))?;
        }
        let mut seen = BTreeSet::new();
        for (j, g) in self.gateway_pool.iter().enumerate() {
            let at = format!("{at}.gateway_pool[{j}]");
            validate_gateway(&at, &g.gateway_name, &g.gateway_namespace, &g.gateway_ip)?;
            let main = &self.internal_task_gateway;
            let again = (g.gateway_namespace == main.gateway_namespace
                && g.gateway_name == main.gateway_name)
                || !seen.insert((g.gateway_namespace.clone(), g.gateway_name.clone()));
            if again {
                return Err(rule(
                    format!("{at}.gateway_name"),
                    format!("{}/{}", g.gateway_namespace, g.gateway_name),
                    "names a Gateway already in this resource manager's pool; list each Gateway once",
                ));
            }
        }
        let probe = &self.data_plane_probe;
        for (key, d) in [
            ("grace", probe.grace),
            ("deadline", probe.deadline),
            ("connect_timeout", probe.connect_timeout),
        ] {
            if d.0.is_zero() {
                return Err(rule(
                    format!("{at}.data_plane_probe.{key}"),
                    d.0,
                    "must be longer than zero",
                ));
            }
        }
        if probe.grace.0 > probe.deadline.0 {
            return Err(rule(
                format!("{at}.data_plane_probe.grace"),
                probe.grace.0,
                "must not exceed data_plane_probe.deadline",
            ));
        }
        let addresses = std::iter::once((format!("{at}.data_plane_probe.address"), &probe.address))
            .chain(self.gateway_pool.iter().enumerate().map(|(j, g)| {
                (
                    format!("{at}.gateway_pool[{j}].probe_address"),
                    &g.probe_address,
                )
            }));
        for (key, a) in addresses {
            if let Some(a) = a
                && !is_host(a)
            {
                return Err(rule(
                    key,
                    a,
                    "must be an IPv4 or IPv6 address or a DNS name",
                ));
            }
        }
        let g = &self.internal_task_gateway;
        let at = format!("{at}.internal_task_gateway");
        validate_gateway(&at, &g.gateway_name, &g.gateway_namespace, &g.gateway_ip)?;
        for (key, v) in [
            ("gateway_port_range_start", g.gateway_port_range_start),
            ("gateway_port_range_end", g.gateway_port_range_end),
        ] {
            if !(1025..=65535).contains(&v) {
                return Err(rule(
                    format!("{at}.{key}"),
                    v,
                    "must be 1025 to 65535, inclusive",
                ));
            }
        }
        if g.gateway_port_range_end < g.gateway_port_range_start {
            return Err(rule(
                format!("{at}.gateway_port_range_end"),
                g.gateway_port_range_end,
                format!(
                    "must be >= gateway_port_range_start ({}); a range of one port is valid",
                    g.gateway_port_range_start
                ),
            ));
        }
        Ok(())
    }

    /// Whether `ready` waits for the data plane to accept connections.
    pub fn probes_data_plane(&self) -> bool {
        self.data_plane_probe
            .enabled
            .unwrap_or(self.wait_for_controller)
    }

    /// Every Gateway of this resource manager's pool: `internal_task_gateway`'s first, then `gateway_pool`.
    pub fn gateways(&self) -> Vec<PoolGateway> {
        let g = &self.internal_task_gateway;
        let mut all = vec![PoolGateway {
            gateway_name: g.gateway_name.clone(),
            gateway_namespace: g.gateway_namespace.clone(),
            gateway_ip: g.gateway_ip.clone(),
            probe_address: self.data_plane_probe.address.clone(),
        }];
        all.extend(self.gateway_pool.iter().cloned());
        all
    }

    /// The inclusive port range; valid after [`Config::load`].
    pub fn port_range(&self) -> std::ops::RangeInclusive<u16> {
        let g = &self.internal_task_gateway;
        let lo = u16::try_from(g.gateway_port_range_start).unwrap_or(u16::MAX);
        let hi = u16::try_from(g.gateway_port_range_end).unwrap_or(u16::MAX);
        lo..=hi
    }

    /// Every excluded port, ranges expanded.
    pub fn excluded_port_set(&self) -> BTreeSet<u16> {
        self.excluded_ports
            .iter()
            .filter_map(|p| p.bounds().ok())
            .flat_map(|(a, b)| a..=b)
            .collect()
    }

    /// How many listeners this resource manager may have at once: `listener_limit` on the shared Gateway,
    /// the whole port range in `listenerset` mode (each ListenerSet holds one allocation's few ports).
    pub fn listener_capacity(&self) -> usize {
        match self.listener_mode {
            ListenerMode::Gateway => self.listener_limit,
            ListenerMode::Listenerset => self.port_range().len(),
        }
    }

    /// Whether a task may be exposed from this namespace.
    pub fn namespace_allowed(&self, ns: &str) -> bool {
        match &self.allowed_namespaces {
            Some(list) => list.iter().any(|n| n == ns),
            None => {
                !DEFAULT_DENIED_NAMESPACES.contains(&ns)
                    && ns != self.internal_task_gateway.gateway_namespace
            }
        }
    }
}

impl PortOrRange {
    fn bounds(&self) -> Result<(u16, u16), String> {
        let port = |v: i64| {
            u16::try_from(v)
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| "ports are 1 to 65535".to_owned())
        };
        match self {
            PortOrRange::Port(p) => port(*p).map(|p| (p, p)),
            PortOrRange::Range(s) => {
                let (a, b) = s.split_once('-').ok_or("a range is written \"a-b\"")?;
                let a = port(
                    a.trim()
                        .parse()
                        .map_err(|_| "a range is written \"a-b\" with whole numbers")?,
                )?;
                let b = port(
                    b.trim()
                        .parse()
                        .map_err(|_| "a range is written \"a-b\" with whole numbers")?,
                )?;
                if a > b {
                    return Err("a range's start must not exceed its end".into());
                }
                Ok((a, b))
            }
        }
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    #[test]
    fn every_member_of_a_url_list_is_redacted_wherever_it_is_quoted() {
        let urls = "nats://user:secret@a:4222, nats://s3cr3t@b:4222,nats://c:4222";
        assert_eq!(
            redacted_url(urls),
            "nats://<redacted>@a:4222,nats://<redacted>@b:4222,nats://c:4222"
        );
        // A client's error names the one server it failed on, not the whole list.
        let msg = "failed to connect to nats://s3cr3t@b:4222: connection refused";
        let out = redact_in(msg, urls);
        assert!(!out.contains("s3cr3t"), "{out}");
        assert!(out.contains("nats://<redacted>@b:4222"), "{out}");
        assert_eq!(redacted_url("u:p@host:4222"), "<redacted>@host:4222");
    }

    #[test]
    fn the_redelivery_span_sums_the_consumer_s_own_series() {
        let w = WorkerConfig {
            retry_min: Dur(Duration::from_secs(1)),
            retry_max: Dur(Duration::from_secs(8)),
            ..Default::default()
        };
        // Waits 1, 2, 4, then 8 each: five deliveries span 1+2+4+8.
        assert_eq!(redelivery_span(&w, 5), Duration::from_secs(15));
        assert_eq!(redelivery_span(&w, 7), Duration::from_secs(31));
        assert_eq!(redelivery_span(&w, 1), Duration::ZERO);
        let series: Vec<Duration> = w.redelivery_backoff().build().take(5).collect();
        assert_eq!(
            series,
            [1, 2, 4, 8, 8].map(Duration::from_secs).to_vec(),
            "the consumer's waits, before jitter"
        );
    }
}
