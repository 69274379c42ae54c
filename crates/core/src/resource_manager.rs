//! What one resource manager's handler knows, fixed at start: its name, its Gateways, its port range.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use crate::config::ResourceManagerConfig;
use crate::contract::GatewayRef;
use crate::names;

/// One Gateway of a resource manager's pool, and the address `ready` gives for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayTarget {
    pub gateway: GatewayRef,
    pub ip: String,
    /// Where the data plane probe connects for this Gateway's ports: `ip` unless the config names another.
    pub probe_host: String,
}

/// One resource manager, from its validated config.
#[derive(Debug, Clone)]
pub struct RmContext {
    pub name: String,
    /// Every Gateway an allocation may be placed on, the resource manager's own first: never empty.
    pub pool: Vec<GatewayTarget>,
    pub range: RangeInclusive<u16>,
    pub excluded: BTreeSet<u16>,
    pub listener_limit: usize,
    pub config: ResourceManagerConfig,
}

impl RmContext {
    /// Builds the context from a validated resource manager config.
    pub fn new(config: &ResourceManagerConfig) -> RmContext {
        RmContext {
            name: config.name.clone(),
            // `gateways()` lists `internal_task_gateway` first, so the pool is never empty.
            pool: config
                .gateways()
                .into_iter()
                .map(|p| GatewayTarget {
                    gateway: GatewayRef {
                        namespace: p.gateway_namespace,
                        name: p.gateway_name,
                    },
                    probe_host: p.probe_address.unwrap_or_else(|| p.gateway_ip.clone()),
                    ip: p.gateway_ip,
                })
                .collect(),
            range: config.port_range(),
            excluded: config.excluded_port_set(),
            listener_limit: config.listener_capacity(),
            config: config.clone(),
        }
    }

    /// The resource manager's own Gateway (`internal_task_gateway`), the first of the pool.
    pub fn home(&self) -> &GatewayTarget {
        &self.pool[0]
    }

    /// KV key of one port of Gateway `on` of this resource manager's pool.
    pub fn port_key(&self, on: &GatewayRef, port: u16) -> String {
        names::port_key(&self.name, &on.namespace, &on.name, port)
    }

    /// KV key prefix of every port of Gateway `on` of this resource manager's pool.
    pub fn port_key_prefix(&self, on: &GatewayRef) -> String {
        names::port_key_prefix(&self.name, &on.namespace, &on.name)
    }

    /// Which Gateway of the pool holds an allocation recorded on `gateway` (absent: the resource manager's
    /// own), by its index in [`RmContext::pool`]; `None` for a Gateway no longer in the pool.
    pub fn placed(&self, gateway: Option<&GatewayRef>) -> Option<usize> {
        match gateway {
            None => Some(0),
            Some(g) => self.pool.iter().position(|t| &t.gateway == g),
        }
    }

    /// KV key of one allocation's record.
    pub fn allocation_key(&self, allocation_id: &str) -> String {
        names::allocation_key(&self.name, allocation_id)
    }
}
