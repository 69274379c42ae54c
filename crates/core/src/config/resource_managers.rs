//! `resource_managers`: each Kubernetes cluster, the Gateway in it, its port range and its namespaces.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use super::rules::{is_host, rule};
use super::{DataPlaneProbe, PoolGateway};
use crate::validate;

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
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
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
        probe.validate(at)?;
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
