//! What one resource manager's handler knows, fixed at start: its name, its Gateway, its port range.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use crate::config::ResourceManagerConfig;
use crate::contract::GatewayRef;
use crate::names;

/// One resource manager, from its validated config.
#[derive(Debug, Clone)]
pub struct RmContext {
    pub name: String,
    pub gateway: GatewayRef,
    pub gateway_ip: String,
    pub range: RangeInclusive<u16>,
    pub excluded: BTreeSet<u16>,
    pub listener_limit: usize,
    pub config: ResourceManagerConfig,
}

impl RmContext {
    /// Builds the context from a validated resource manager config.
    pub fn new(config: &ResourceManagerConfig) -> RmContext {
        let g = &config.internal_task_gateway;
        RmContext {
            name: config.name.clone(),
            gateway: GatewayRef {
                namespace: g.gateway_namespace.clone(),
                name: g.gateway_name.clone(),
            },
            gateway_ip: g.gateway_ip.clone(),
            range: config.port_range(),
            excluded: config.excluded_port_set(),
            listener_limit: config.listener_capacity(),
            config: config.clone(),
        }
    }

    /// KV key of one port of this resource manager's Gateway.
    pub fn port_key(&self, port: u16) -> String {
        names::port_key(
            &self.name,
            &self.gateway.namespace,
            &self.gateway.name,
            port,
        )
    }

    /// KV key prefix of every port of this resource manager's Gateway.
    pub fn port_key_prefix(&self) -> String {
        names::port_key_prefix(&self.name, &self.gateway.namespace, &self.gateway.name)
    }

    /// KV key of one allocation's record.
    pub fn allocation_key(&self, allocation_id: &str) -> String {
        names::allocation_key(&self.name, allocation_id)
    }
}
