//! Whether the Gateway's controller has made an exposure reachable: a pure verdict over the status the
//! controller wrote on the Gateway (our listener) and on the TCPRoute (its parent entry for our Gateway).
//!
//! The Kubernetes adapter copies those conditions out of the objects its watches hold; this module
//! decides, so every rule is unit-tested without a server. A verdict is one of: reachable (answer `ready`),
//! pending (wait and look again) or refused (a condition that will not pass by waiting: answer `failed`).

/// One status condition, as the Gateway API writes it (`metav1.Condition`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// What the controller says of our listener: its entry in the Gateway's `status.listeners`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStatus {
    pub conditions: Vec<Condition>,
    pub attached_routes: i64,
}

/// What the watches hold about one proxy port's listener and route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The listener's name, for messages.
    pub listener: String,
    /// The Gateway generation in which the watch first saw our listener with its port: older conditions
    /// describe a Gateway without it.
    pub listener_generation: Option<i64>,
    /// Our entry in the Gateway's `status.listeners`, when the controller wrote one.
    pub listener_status: Option<ListenerStatus>,
    /// The route's `metadata.generation`, when the watch holds the route.
    pub route_generation: Option<i64>,
    /// The conditions of the route's parent entry for our Gateway and listener, when there is one.
    pub route_parent: Option<Vec<Condition>>,
    /// In `listenerset` mode, the ListenerSet's own conditions (whether its Gateway accepted it), from the
    /// generation where the listener was first seen; `None` for a listener on the Gateway.
    pub set_conditions: Option<Vec<Condition>>,
}

/// The controller's answer for an exposure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Listener programmed, route accepted with its references resolved: connections reach the Service.
    Reachable,
    /// Not yet: what is still missing, as a sentence fragment.
    Pending(String),
    /// A condition that waiting will not change: the controller's own reason and message.
    Refused { reason: String, message: String },
    /// The controller reports `listener` `Conflicted`: another listener (on the Gateway, or in another
    /// ListenerSet) shares its port. Another port resolves it.
    Conflicted {
        listener: String,
        reason: String,
        message: String,
    },
}

/// The reason a controller gives for a route whose Service has no ready endpoints yet (Envoy Gateway writes
/// it as `ResolvedRefs=False`). It means the task's pods are not ready: the path through the Gateway is
/// programmed and carries bytes as soon as they are, so it counts as reachable.
pub const ENDPOINTS_NOT_FOUND: &str = "EndpointsNotFound";

/// Route reasons under which waiting may help: the condition is being worked on, or the object it names is
/// being created (the worker applies the Service before the route, but a controller may see them in either
/// order).
const ROUTE_REASONS_THAT_PASS: [&str; 2] = ["Pending", "BackendNotFound"];

fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn is(c: Option<&Condition>, status: &str) -> bool {
    c.is_some_and(|c| c.status == status)
}

/// The controller's reason (its type when it gives none) and a message naming `what`.
fn why(what: &str, c: &Condition) -> (String, String) {
    let reason = if c.reason.is_empty() {
        c.type_.clone()
    } else {
        c.reason.clone()
    };
    (
        reason,
        format!("{what}: {}={} ({})", c.type_, c.status, c.message),
    )
}

fn refused(what: &str, c: &Condition) -> Verdict {
    let (reason, message) = why(what, c);
    Verdict::Refused { reason, message }
}

/// Decides one proxy port.
pub fn evaluate(o: &Observed) -> Verdict {
    let what = format!("listener {}", o.listener);
    let Some(since) = o.listener_generation else {
        return Verdict::Pending(format!("{what} is not on the Gateway yet"));
    };
    // A Gateway that does not allow the ListenerSet writes no listener status at all: say why at once.
    if let Some(set) = &o.set_conditions
        && let Some(c) = find(set, "Accepted").filter(|c| {
            c.status == "False"
                && c.reason != "Pending"
                && c.observed_generation.unwrap_or(0) >= since
        })
    {
        return refused(&format!("the ListenerSet of {what}"), c);
    }
    let Some(ls) = &o.listener_status else {
        return Verdict::Pending(format!("{what} has no status from the controller yet"));
    };
    // Conditions written before the controller saw our listener describe another Gateway.
    let current: Vec<Condition> = ls
        .conditions
        .iter()
        .filter(|c| c.observed_generation.unwrap_or(0) >= since)
        .cloned()
        .collect();
    if current.is_empty() {
        return Verdict::Pending(format!(
            "the controller has not yet reported on {what} (Gateway generation {since})"
        ));
    }
    if let Some(c) = find(&current, "Conflicted").filter(|c| c.status == "True") {
        let (reason, message) = why(&what, c);
        return Verdict::Conflicted {
            listener: o.listener.clone(),
            reason,
            message,
        };
    }
    for t in ["Accepted", "ResolvedRefs"] {
        if let Some(c) = find(&current, t).filter(|c| c.status == "False") {
            return refused(&what, c);
        }
    }
    let programmed = find(&current, "Programmed");
    match programmed {
        Some(c) if c.status == "False" && c.reason == "Invalid" => return refused(&what, c),
        Some(c) if c.status == "True" => {}
        Some(c) => {
            return Verdict::Pending(format!(
                "{what} is not programmed yet ({}: {})",
                c.reason, c.message
            ));
        }
        None => return Verdict::Pending(format!("{what} is not programmed yet")),
    }
    if !is(find(&current, "Accepted"), "True") {
        return Verdict::Pending(format!("{what} is not accepted yet"));
    }
    let route_what = format!("the route of {what}");
    let Some(generation) = o.route_generation else {
        return Verdict::Pending(format!("{route_what} is not seen yet"));
    };
    let Some(parent) = &o.route_parent else {
        return Verdict::Pending(format!("{route_what} has no status for this Gateway yet"));
    };
    let current: Vec<Condition> = parent
        .iter()
        .filter(|c| c.observed_generation.unwrap_or(0) >= generation)
        .cloned()
        .collect();
    let accepted = find(&current, "Accepted");
    match accepted {
        Some(c) if c.status == "False" && !ROUTE_REASONS_THAT_PASS.contains(&c.reason.as_str()) => {
            return refused(&route_what, c);
        }
        Some(c) if c.status == "True" => {}
        Some(c) => {
            return Verdict::Pending(format!(
                "{route_what} is not accepted yet ({}: {})",
                c.reason, c.message
            ));
        }
        None => return Verdict::Pending(format!("{route_what} is not accepted yet")),
    }
    match find(&current, "ResolvedRefs") {
        Some(c) if c.status == "True" || c.reason == ENDPOINTS_NOT_FOUND => {}
        Some(c) if c.status == "False" && !ROUTE_REASONS_THAT_PASS.contains(&c.reason.as_str()) => {
            return refused(&route_what, c);
        }
        Some(c) => {
            return Verdict::Pending(format!(
                "{route_what}'s references are not resolved yet ({}: {})",
                c.reason, c.message
            ));
        }
        None => {
            return Verdict::Pending(format!("{route_what}'s references are not resolved yet"));
        }
    }
    // The controller counts the route on the listener in the same pass that programs it.
    if ls.attached_routes < 1 {
        return Verdict::Pending(format!("{what} has no attached route yet"));
    }
    Verdict::Reachable
}

/// Decides an allocation: refused if any port is, else pending if any is, else reachable.
pub fn evaluate_all(ports: &[Observed]) -> Verdict {
    let mut pending = Vec::new();
    for o in ports {
        match evaluate(o) {
            Verdict::Reachable => {}
            Verdict::Pending(m) => pending.push(m),
            refused @ (Verdict::Refused { .. } | Verdict::Conflicted { .. }) => return refused,
        }
    }
    if pending.is_empty() {
        Verdict::Reachable
    } else {
        Verdict::Pending(pending.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_cond(type_: &str, status: &str, reason: &str, generation: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{type_} says {reason}"),
            observed_generation: Some(generation),
        }
    }

    fn mk_listener_ok(generation: i64) -> ListenerStatus {
        ListenerStatus {
            conditions: vec![
                mk_cond("Accepted", "True", "Accepted", generation),
                mk_cond("Programmed", "True", "Programmed", generation),
                mk_cond("ResolvedRefs", "True", "ResolvedRefs", generation),
                mk_cond("Conflicted", "False", "NoConflicts", generation),
            ],
            attached_routes: 1,
        }
    }

    fn mk_route_ok(generation: i64) -> Vec<Condition> {
        vec![
            mk_cond("Accepted", "True", "Accepted", generation),
            mk_cond("ResolvedRefs", "True", "ResolvedRefs", generation),
        ]
    }

    fn mk_reachable() -> Observed {
        Observed {
            listener: "itg-1".into(),
            listener_generation: Some(5),
            listener_status: Some(mk_listener_ok(6)),
            route_generation: Some(1),
            route_parent: Some(mk_route_ok(1)),
            set_conditions: None,
        }
    }

    fn set(conds: &mut Vec<Condition>, c: Condition) {
        conds.retain(|x| x.type_ != c.type_);
        conds.push(c);
    }

    #[test]
    fn programmed_listener_and_accepted_route_are_reachable() {
        assert_eq!(evaluate(&mk_reachable()), Verdict::Reachable);
    }

    #[test]
    fn a_listener_not_yet_on_the_gateway_or_without_status_waits() {
        let mut o = mk_reachable();
        o.listener_generation = None;
        assert!(matches!(evaluate(&o), Verdict::Pending(_)));
        let mut o = mk_reachable();
        o.listener_status = None;
        assert!(matches!(evaluate(&o), Verdict::Pending(_)));
    }

    #[test]
    fn listener_conditions_older_than_the_listener_are_ignored() {
        let mut o = mk_reachable();
        o.listener_status = Some(mk_listener_ok(4));
        let Verdict::Pending(m) = evaluate(&o) else {
            panic!("stale conditions must not count")
        };
        assert!(m.contains("generation 5"), "{m}");
        // A stale conflict does not refuse either.
        let mut ls = mk_listener_ok(4);
        set(
            &mut ls.conditions,
            mk_cond("Conflicted", "True", "ProtocolConflict", 4),
        );
        o.listener_status = Some(ls);
        assert!(matches!(evaluate(&o), Verdict::Pending(_)));
    }

    #[test]
    fn a_conflicted_listener_is_refused_with_the_controllers_reason() {
        let mut o = mk_reachable();
        let mut ls = mk_listener_ok(6);
        set(
            &mut ls.conditions,
            mk_cond("Conflicted", "True", "ProtocolConflict", 6),
        );
        set(
            &mut ls.conditions,
            mk_cond("Programmed", "False", "Invalid", 6),
        );
        o.listener_status = Some(ls);
        let Verdict::Conflicted {
            listener,
            reason,
            message,
        } = evaluate(&o)
        else {
            panic!("expected a conflict")
        };
        assert_eq!(listener, "itg-1");
        assert_eq!(reason, "ProtocolConflict");
        assert!(
            message.contains("Conflicted says ProtocolConflict"),
            "{message}"
        );
    }

    #[test]
    fn a_listener_not_accepted_or_invalid_is_refused_but_pending_waits() {
        for (t, s, r) in [
            ("Accepted", "False", "UnsupportedProtocol"),
            ("Programmed", "False", "Invalid"),
            ("ResolvedRefs", "False", "InvalidRouteKinds"),
        ] {
            let mut o = mk_reachable();
            let mut ls = mk_listener_ok(6);
            set(&mut ls.conditions, mk_cond(t, s, r, 6));
            o.listener_status = Some(ls);
            assert!(
                matches!(evaluate(&o), Verdict::Refused { reason, .. } if reason == r),
                "{t}={s} {r}"
            );
        }
        let mut o = mk_reachable();
        let mut ls = mk_listener_ok(6);
        set(
            &mut ls.conditions,
            mk_cond("Programmed", "False", "Pending", 6),
        );
        o.listener_status = Some(ls);
        assert!(matches!(evaluate(&o), Verdict::Pending(_)));
    }

    #[test]
    fn a_route_refused_by_the_listener_or_without_a_parent_is_refused() {
        for r in [
            "NotAllowedByListeners",
            "NoMatchingParent",
            "UnsupportedValue",
        ] {
            let mut o = mk_reachable();
            let mut p = mk_route_ok(1);
            set(&mut p, mk_cond("Accepted", "False", r, 1));
            o.route_parent = Some(p);
            assert!(
                matches!(evaluate(&o), Verdict::Refused { reason, .. } if reason == r),
                "{r}"
            );
        }
    }

    #[test]
    fn unresolvable_references_are_refused_but_a_missing_backend_waits() {
        let mut o = mk_reachable();
        let mut p = mk_route_ok(1);
        set(
            &mut p,
            mk_cond("ResolvedRefs", "False", "UnsupportedAddressType", 1),
        );
        o.route_parent = Some(p.clone());
        assert!(matches!(evaluate(&o), Verdict::Refused { .. }));
        set(
            &mut p,
            mk_cond("ResolvedRefs", "False", "BackendNotFound", 1),
        );
        o.route_parent = Some(p);
        assert!(matches!(evaluate(&o), Verdict::Pending(_)));
    }

    #[test]
    fn a_route_whose_service_has_no_endpoints_yet_is_reachable() {
        let mut o = mk_reachable();
        let mut p = mk_route_ok(1);
        set(
            &mut p,
            mk_cond("ResolvedRefs", "False", ENDPOINTS_NOT_FOUND, 1),
        );
        o.route_parent = Some(p);
        assert_eq!(evaluate(&o), Verdict::Reachable);
    }

    #[test]
    fn route_status_for_an_older_generation_or_missing_waits() {
        let mut o = mk_reachable();
        o.route_generation = Some(2);
        assert!(matches!(evaluate(&o), Verdict::Pending(_)));
        let mut o = mk_reachable();
        o.route_parent = None;
        assert!(matches!(evaluate(&o), Verdict::Pending(_)));
        let mut o = mk_reachable();
        o.route_generation = None;
        assert!(matches!(evaluate(&o), Verdict::Pending(_)));
    }

    #[test]
    fn a_listener_without_its_route_attached_waits() {
        let mut o = mk_reachable();
        let mut ls = mk_listener_ok(6);
        ls.attached_routes = 0;
        o.listener_status = Some(ls);
        assert!(matches!(evaluate(&o), Verdict::Pending(m) if m.contains("attached")));
    }

    #[test]
    fn an_allocation_is_refused_if_any_port_is_and_reachable_only_if_all_are() {
        let ok = mk_reachable();
        let mut waiting = mk_reachable();
        waiting.route_parent = None;
        let mut bad = mk_reachable();
        let mut p = mk_route_ok(1);
        set(&mut p, mk_cond("Accepted", "False", "NoMatchingParent", 1));
        bad.route_parent = Some(p);
        assert_eq!(evaluate_all(&[ok.clone(), ok.clone()]), Verdict::Reachable);
        assert!(matches!(
            evaluate_all(&[ok.clone(), waiting.clone()]),
            Verdict::Pending(_)
        ));
        assert!(matches!(
            evaluate_all(&[waiting, ok, bad]),
            Verdict::Refused { .. }
        ));
    }

    #[test]
    fn a_listenerset_its_gateway_does_not_allow_is_refused_and_one_not_yet_judged_waits() {
        let mut o = mk_reachable();
        o.set_conditions = Some(vec![mk_cond("Accepted", "True", "Accepted", 5)]);
        assert_eq!(evaluate(&o), Verdict::Reachable);
        o.set_conditions = Some(vec![mk_cond("Accepted", "False", "NotAllowed", 5)]);
        assert!(
            matches!(evaluate(&o), Verdict::Refused { ref reason, ref message }
                if reason == "NotAllowed" && message.contains("ListenerSet")),
            "{:?}",
            evaluate(&o)
        );
        // A refusal written before the listener was there is about another ListenerSet.
        o.set_conditions = Some(vec![mk_cond("Accepted", "False", "NotAllowed", 4)]);
        assert_eq!(evaluate(&o), Verdict::Reachable);
        o.set_conditions = Some(vec![mk_cond("Accepted", "False", "Pending", 5)]);
        assert_eq!(evaluate(&o), Verdict::Reachable);
    }
}
