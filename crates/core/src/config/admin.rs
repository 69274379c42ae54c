//! `admin`: the metrics and health endpoint.

use serde::Deserialize;

use super::ConfigError;
use super::rules::rule;

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

impl AdminConfig {
    /// The address must be one the endpoint can bind.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(rule(
                "admin.address",
                &self.address,
                "must be an IP address and port, like 127.0.0.1:9464",
            ));
        }

        Ok(())
    }
}
