//! What every section shares: the duration type its keys are written in, and the helpers that build a
//! refusal and check an address.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::validate;

pub(super) fn rule(
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

/// Whether `host` is an IP address or a DNS name.
pub(super) fn is_host(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok() || validate::is_dns1123_subdomain(&host.to_ascii_lowercase())
}
