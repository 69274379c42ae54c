//! `resource_managers[].data_plane_probe`: whether, and where, `ready` waits for the data plane to accept a
//! connection.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use super::rules::{Dur, rule};

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

impl DataPlaneProbe {
    /// The rules of the probe's own durations, at `at` (the resource manager's key).
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let probe = self;
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
        Ok(())
    }
}
