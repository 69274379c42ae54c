//! What the worker knows of each Gateway controller, keyed by the GatewayClass's `controllerName`: where its
//! data plane listens for a listener port, the data-plane ports it keeps for itself, and whether it writes
//! GatewayClass status. At start the worker looks up each Gateway's controller here and excludes the ports
//! that controller cannot serve, so knowledge is applied, never guessed from a class name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::ops::RangeInclusive;

/// How a controller's data plane turns a listener port into the port it binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMapping {
    /// The listener port itself.
    Same,
    /// Contour's `toContainerPort`: the listener port + 8000; above 65535 minus 65535; then 1023 or less
    /// plus 1023 (the envoy container cannot bind privileged ports).
    ContourPlus8000,
    /// Envoy Gateway on Kubernetes: the listener port itself, but a privileged one (below 1024) + 10000
    /// in the envoy container, so an operator's 443 binds 10443. Its host mode binds 443 itself (seen:
    /// listeners on 443 and 10443 both programmed and both bound); there the port this keeps free beside
    /// a privileged foreign listener costs one port and nothing else.
    EnvoyGatewayShift,
}

impl PortMapping {
    /// The data-plane port a listener on `port` is served on.
    pub fn data_plane_port(self, port: u16) -> u16 {
        match self {
            PortMapping::Same => port,
            PortMapping::ContourPlus8000 => {
                let mut p = u32::from(port) + 8000;
                if p > 65535 {
                    p -= 65535;
                }
                if p <= 1023 {
                    p += 1023;
                }
                // Always <= 65535: the wrap above brings every sum back into range.
                u16::try_from(p).unwrap_or(u16::MAX)
            }
            PortMapping::EnvoyGatewayShift if port < 1024 => port + 10000,
            PortMapping::EnvoyGatewayShift => port,
        }
    }
}

/// One controller the worker knows.
#[derive(Debug, PartialEq, Eq)]
pub struct Controller {
    /// Its name in reports.
    pub name: &'static str,
    /// The GatewayClass `spec.controllerName` it serves.
    pub controller_name: &'static str,
    pub mapping: PortMapping,
    /// Data-plane ports the controller's own processes hold: a listener mapped onto one cannot be served.
    pub own_ports: &'static [RangeInclusive<u16>],
    /// Whether it writes GatewayClass status in every deployment; where it does not, an unaccepted class
    /// says nothing about whether `ready` will come.
    pub writes_class_status: bool,
    /// What the report says of it, beyond the ports.
    pub note: &'static str,
}

/// Contour: envoy listens on the listener port + 8000; its metrics (8000), xDS (8001), envoy stats (8002)
/// and debug (6060) ports are its defaults. Run with a static `gatewayRef` (no provisioner), it writes no
/// GatewayClass status, only the Gateway's, its listeners' and its routes'.
pub const CONTOUR: Controller = Controller {
    name: "Contour",
    controller_name: "projectcontour.io/gateway-controller",
    mapping: PortMapping::ContourPlus8000,
    own_ports: &[8000..=8002, 6060..=6060],
    writes_class_status: false,
    note: "envoy listens on the listener port + 8000; without its provisioner it writes no GatewayClass status, so the class's status is not waited for, only the listeners' and routes'",
};

/// Envoy Gateway: 1:1 ports above 1023, privileged ones + 10000; its envoy keeps 19000-19003 (admin,
/// stats, shutdown manager, readiness).
pub const ENVOY_GATEWAY: Controller = Controller {
    name: "Envoy Gateway",
    controller_name: "gateway.envoyproxy.io/gatewayclass-controller",
    mapping: PortMapping::EnvoyGatewayShift,
    own_ports: &[19000..=19003],
    writes_class_status: true,
    note: "envoy listens on the listener port itself, a privileged one + 10000 in its container on Kubernetes",
};

/// Every controller the worker knows.
pub const KNOWN: &[&Controller] = &[&CONTOUR, &ENVOY_GATEWAY];

/// The controller serving `controller_name`, if the worker knows it.
pub fn known(controller_name: &str) -> Option<&'static Controller> {
    KNOWN
        .iter()
        .copied()
        .find(|c| c.controller_name == controller_name)
}

/// Why the controller cannot serve a port of the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unservable {
    /// The port maps onto a data-plane port the controller's own processes hold.
    OwnPort { mapped: u16 },
    /// The port maps onto the same data-plane port as `with`, a lower port of the range, which is kept.
    SharesMappedPort { with: u16, mapped: u16 },
}

impl Controller {
    /// The data-plane port a listener on `port` is served on.
    pub fn data_plane_port(&self, port: u16) -> u16 {
        self.mapping.data_plane_port(port)
    }

    fn owns(&self, mapped: u16) -> bool {
        self.own_ports.iter().any(|r| r.contains(&mapped))
    }

    /// Every port of `range` not already `excluded` that this controller cannot serve, ascending. Of ports
    /// sharing a mapped port the lowest is kept, so the range keeps as many usable ports as it can.
    pub fn unservable(
        &self,
        range: RangeInclusive<u16>,
        excluded: &BTreeSet<u16>,
    ) -> BTreeMap<u16, Unservable> {
        let mut out = BTreeMap::new();
        let mut first_on: BTreeMap<u16, u16> = BTreeMap::new();
        for port in range.filter(|p| !excluded.contains(p)) {
            let mapped = self.data_plane_port(port);
            if self.owns(mapped) {
                out.insert(port, Unservable::OwnPort { mapped });
            } else if let Some(&with) = first_on.get(&mapped) {
                out.insert(port, Unservable::SharesMappedPort { with, mapped });
            } else {
                first_on.insert(mapped, port);
            }
        }
        out
    }
}

impl Controller {
    /// The ports of `range` whose data-plane port a listener that is not ours (on `foreign` ports) binds
    /// already: on one container port only one listener can be served. The foreign ports themselves are
    /// not repeated.
    pub fn shadowed(&self, range: RangeInclusive<u16>, foreign: &BTreeSet<u16>) -> BTreeSet<u16> {
        let bound: BTreeSet<u16> = foreign.iter().map(|p| self.data_plane_port(*p)).collect();
        if bound.is_empty() {
            return BTreeSet::new();
        }
        range
            .filter(|p| !foreign.contains(p) && bound.contains(&self.data_plane_port(*p)))
            .collect()
    }
}

/// A sentence naming the ports `unservable` found and why, for the start-up log and report.
pub fn describe(c: &Controller, found: &BTreeMap<u16, Unservable>) -> String {
    let own: BTreeSet<u16> = found
        .iter()
        .filter(|(_, w)| matches!(w, Unservable::OwnPort { .. }))
        .map(|(p, _)| *p)
        .collect();
    let shared: BTreeSet<u16> = found
        .iter()
        .filter(|(_, w)| matches!(w, Unservable::SharesMappedPort { .. }))
        .map(|(p, _)| *p)
        .collect();
    let mut out = String::new();
    if !own.is_empty() {
        let mapped: BTreeSet<u16> = own.iter().map(|p| c.data_plane_port(*p)).collect();
        let _ = write!(
            out,
            "{} land on {}'s own port(s) {}",
            spans(&own),
            c.name,
            spans(&mapped)
        );
    }
    if !shared.is_empty() {
        let kept: BTreeSet<u16> = found
            .values()
            .filter_map(|w| match w {
                Unservable::SharesMappedPort { with, .. } => Some(*with),
                Unservable::OwnPort { .. } => None,
            })
            .collect();
        let _ = write!(
            out,
            "{}{} share their data-plane ports with {} (kept)",
            if out.is_empty() { "" } else { "; " },
            spans(&shared),
            spans(&kept)
        );
    }
    out
}

/// Ports written as comma-separated inclusive spans: `58559-59581, 63595`.
pub fn spans(ports: &BTreeSet<u16>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut it = ports.iter().copied().peekable();
    while let Some(lo) = it.next() {
        let mut hi = lo;
        while it.peek() == Some(&hi.saturating_add(1)) && hi < u16::MAX {
            hi += 1;
            it.next();
        }
        parts.push(if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        });
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> BTreeSet<u16> {
        BTreeSet::new()
    }

    #[test]
    fn contour_serves_a_listener_port_plus_8000_wrapping_past_65535_and_skipping_privileged_ports()
    {
        let c = known("projectcontour.io/gateway-controller").expect("Contour is known");
        assert_eq!(c.name, "Contour");
        assert_eq!(c.data_plane_port(40000), 48000);
        assert_eq!(c.data_plane_port(57535), 65535);
        assert_eq!(c.data_plane_port(57536), 1024);
        assert_eq!(c.data_plane_port(58558), 2046);
        assert_eq!(c.data_plane_port(58559), 1024);
        assert_eq!(c.data_plane_port(65535), 8000);
    }

    #[test]
    fn contour_range_ports_sharing_a_data_plane_port_are_excluded_keeping_the_lower() {
        let found = CONTOUR.unservable(57000..=60000, &none());
        let shared: Vec<(u16, Unservable)> = found.into_iter().collect();
        assert_eq!(
            shared.len(),
            1023,
            "58559-59581, one per port of 57536-58558"
        );
        assert_eq!(
            shared[0],
            (
                58559,
                Unservable::SharesMappedPort {
                    with: 57536,
                    mapped: 1024
                }
            )
        );
        assert_eq!(shared[1022].0, 59581);
        // A range on one side only collides with nothing, and an excluded partner frees the other.
        assert!(CONTOUR.unservable(57536..=58558, &none()).is_empty());
        assert!(CONTOUR.unservable(58559..=59581, &none()).is_empty());
        let partner = BTreeSet::from([57536]);
        assert!(CONTOUR.unservable(57536..=58559, &partner).is_empty());
        // The default range maps to 48000-48063: nothing to exclude.
        assert!(CONTOUR.unservable(40000..=40063, &none()).is_empty());
    }

    #[test]
    fn contour_range_ports_landing_on_its_own_ports_are_excluded() {
        let found = CONTOUR.unservable(63000..=65535, &none());
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec![
                (63595, Unservable::OwnPort { mapped: 6060 }),
                (65535, Unservable::OwnPort { mapped: 8000 }),
            ]
        );
        let text = describe(&CONTOUR, &CONTOUR.unservable(63000..=65535, &none()));
        assert_eq!(
            text,
            "63595, 65535 land on Contour's own port(s) 6060, 8000"
        );
    }

    #[test]
    fn contour_writes_no_gateway_class_status_so_a_class_without_status_may_still_be_served() {
        use crate::cluster::ClassStatus;
        let unwritten = |controller: &str| ClassStatus::Unwritten {
            class: "c".into(),
            controller: controller.into(),
        };
        assert!(unwritten(CONTOUR.controller_name).may_be_served());
        // A class its controller refused, or one no known controller serves, is not.
        let refused = ClassStatus::NotAccepted {
            class: "c".into(),
            controller: CONTOUR.controller_name.into(),
            why: "Accepted=False".into(),
        };
        assert!(!refused.may_be_served());
        assert!(!unwritten("internal-task-gateway.io/none").may_be_served());
        assert!(!unwritten(ENVOY_GATEWAY.controller_name).may_be_served());
    }

    #[test]
    fn envoy_gateway_serves_ports_one_to_one_and_keeps_19000_to_19003() {
        let c = known("gateway.envoyproxy.io/gatewayclass-controller").expect("known");
        assert_eq!(c.name, "Envoy Gateway");
        assert_eq!(c.data_plane_port(32100), 32100);
        assert!(c.writes_class_status);
        let found = c.unservable(18990..=19010, &BTreeSet::from([19001]));
        assert_eq!(
            found.keys().copied().collect::<Vec<_>>(),
            vec![19000, 19002, 19003]
        );
        assert_eq!(
            describe(c, &found),
            "19000, 19002-19003 land on Envoy Gateway's own port(s) 19000, 19002-19003"
        );
        assert!(c.unservable(32100..=32399, &none()).is_empty());
    }

    #[test]
    fn an_unknown_controller_is_not_guessed() {
        assert!(known("internal-task-gateway.io/none").is_none());
        assert!(known("projectcontour.io/gateway-controller-x").is_none());
    }

    #[test]
    fn spans_fold_consecutive_ports() {
        assert_eq!(
            spans(&BTreeSet::from([1, 2, 3, 5, 65534, 65535])),
            "1-3, 5, 65534-65535"
        );
        assert_eq!(spans(&BTreeSet::new()), "");
    }
}

#[cfg(test)]
mod not_ours {
    use super::*;

    #[test]
    fn envoy_gateway_binds_a_privileged_listener_port_10000_higher() {
        assert_eq!(ENVOY_GATEWAY.data_plane_port(443), 10443);
        assert_eq!(ENVOY_GATEWAY.data_plane_port(1023), 11023);
        assert_eq!(ENVOY_GATEWAY.data_plane_port(1024), 1024);
        assert_eq!(ENVOY_GATEWAY.data_plane_port(40000), 40000);
    }

    #[test]
    fn a_port_whose_data_plane_port_a_listener_not_ours_binds_is_not_handed_out() {
        // An operator's 443 binds 10443 under Envoy Gateway: 10443 of the range cannot be served.
        let foreign = BTreeSet::from([443]);
        assert_eq!(
            ENVOY_GATEWAY.shadowed(10400..=10500, &foreign),
            BTreeSet::from([10443])
        );
        // Contour wraps 57536-58558 and 58559-59581 onto the same container ports (1024-2046).
        let foreign = BTreeSet::from([57536, 58000]);
        assert_eq!(
            CONTOUR.shadowed(58500..=59100, &foreign),
            BTreeSet::from([58559, 59023])
        );
        // A listener's own port is foreign already, not shadowed.
        assert!(
            CONTOUR
                .shadowed(57536..=57536, &BTreeSet::from([57536]))
                .is_empty()
        );
    }
}
