//! The worker's configuration: YAML (or JSON) as `../schemas/config.schema.json` describes it.
//!
//! Loading happens once at start; a config that breaks a rule is refused with the key, the value and the
//! rule, so the operator can fix it without reading code.
//!
//! One module per section of the schema: [`nats`](NatsConfig), [`jetstream`](JetStreamConfig),
//! [`worker`](WorkerConfig), [`admin`](AdminConfig) and [`resource_managers`](ResourceManagerConfig), with
//! a resource manager's data plane probe and Gateway pool beside them; `rules` holds the duration type and
//! the helpers they share. This module reads the file and checks the rules that span sections.

mod admin;
mod jetstream;
mod nats;
mod pool;
mod probe;
mod resource_managers;
mod rules;
mod worker;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use admin::AdminConfig;
pub use jetstream::JetStreamConfig;
pub use nats::{NatsConfig, TlsConfig, redact_in, redacted_url};
pub use pool::PoolGateway;
pub use probe::DataPlaneProbe;
pub use resource_managers::{
    DEFAULT_DENIED_NAMESPACES, InternalTaskGatewayConfig, ListenerMode, PortOrRange,
    ResourceManagerConfig,
};
pub use rules::Dur;
pub use worker::{MIN_RECONCILE_HOLD_OFF, WorkerConfig};

use rules::rule;

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

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

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
        self.nats.validate()?;

        let js = &self.jetstream;
        js.validate()?;
        // The durations of both sections in one pass, so that the first zero the schema lists is named.
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
        let longest_probe = self
            .resource_managers
            .iter()
            .filter(|rm| rm.probes_data_plane())
            .map(|rm| rm.data_plane_probe.deadline.0)
            .max()
            .unwrap_or_default();
        self.worker.validate(js.max_deliver, longest_probe)?;
        self.admin.validate()?;
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
        pool::validate_shared_gateways(&self.resource_managers)
    }
}
