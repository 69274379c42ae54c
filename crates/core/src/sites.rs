//! The multi-site layout: a worker beside its cluster, on a NATS leaf node with a JetStream domain of its
//! own, and the master on a hub with domain `jetstream.hub_domain`. What lives where, decided here and
//! applied by the NATS adapter:
//!
//! - the site's `ITG_EVENTS` sources `itg.events.<rm>.>` of each of its resource managers from the hub's
//!   `ITG_EVENTS`, so the master's events cross the WAN once and are then read, acknowledged and
//!   redelivered at the site. Of the event subjects it captures none; it captures `itg.requeue.<rm>.>`,
//!   stored as `itg.events.<rm>.>`, so that an `ended` queued again after its maximum deliveries stays at
//!   the site, whether or not the WAN link is up;
//! - the site's `ITG_REPLIES` captures `itg.replies.<rm>.>` of its resource managers, and the hub's
//!   `ITG_REPLIES` sources each of them from the site (one source per resource manager), so the master reads
//!   replies where it always did;
//! - the KV bucket and the dead letters stay at the site.
//!
//! The hub's sources are also the record of which site serves which resource manager: a worker refuses to
//! serve one that the hub already sources from another site.

use crate::contract;

/// One stream as a site wants it: its subjects, how it renames what it captures, and what it sources
/// from another domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLayout {
    pub name: &'static str,
    pub subjects: Vec<String>,
    /// The subject transform of what the stream captures: (source pattern, destination pattern).
    pub transform: Option<(String, String)>,
    pub sources: Vec<SourceLayout>,
}

/// `itg.requeue.<rm>.>`: where a site's worker queues an `ended` again, captured by the site's own
/// `ITG_EVENTS` only (the hub captures `itg.events.>`, which this is not).
pub fn requeue_filter(rm: &str) -> String {
    format!("itg.requeue.{rm}.>")
}

/// The subject a site's worker queues an event again on: `itg.events.<rm>.<kind>` becomes
/// `itg.requeue.<rm>.<kind>`, which the site's `ITG_EVENTS` stores back under the event's own subject.
pub fn requeue_subject(event_subject: &str) -> String {
    match event_subject.strip_prefix("itg.events.") {
        Some(rest) => format!("itg.requeue.{rest}"),
        None => event_subject.to_owned(),
    }
}

/// The transform of the site's `ITG_EVENTS`: a requeued event is stored under its event subject, so the
/// consumer, the replay and the dead letters see it as any other event.
fn requeue_transform() -> (String, String) {
    ("itg.requeue.>".into(), contract::EVENTS_SUBJECTS.into())
}

/// A source of a stream: the stream `name` in the domain reached at `api` (`$JS.<domain>.API`), filtered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceLayout {
    pub name: String,
    pub api: String,
    pub filter: String,
}

/// The API prefix of a JetStream domain, as a stream source names it.
pub fn domain_api(domain: &str) -> String {
    format!("$JS.{domain}.API")
}

/// The domain a `$JS.<domain>.API` prefix names, if it is one.
pub fn api_domain(api: &str) -> Option<&str> {
    api.strip_prefix("$JS.")?.strip_suffix(".API")
}

/// `itg.replies.<rm>.>`
pub fn replies_filter(rm: &str) -> String {
    format!("itg.replies.{rm}.>")
}

/// `itg.deadletter.<rm>.>`
pub fn dead_letter_filter(rm: &str) -> String {
    format!("itg.deadletter.{rm}.>")
}

/// The site's own streams: events sourced from the hub, replies and dead letters captured per resource
/// manager (never `itg.replies.>`, which would also capture another site's replies if a leaf link lets
/// them through).
pub fn site_streams(hub_domain: &str, rms: &[String]) -> Vec<StreamLayout> {
    let api = domain_api(hub_domain);
    vec![
        StreamLayout {
            name: contract::EVENTS_STREAM,
            subjects: rms.iter().map(|rm| requeue_filter(rm)).collect(),
            transform: Some(requeue_transform()),
            sources: rms
                .iter()
                .map(|rm| SourceLayout {
                    name: contract::EVENTS_STREAM.into(),
                    api: api.clone(),
                    filter: contract::events_filter(rm),
                })
                .collect(),
        },
        StreamLayout {
            name: contract::REPLIES_STREAM,
            subjects: rms.iter().map(|rm| replies_filter(rm)).collect(),
            transform: None,
            sources: Vec::new(),
        },
        StreamLayout {
            name: contract::DEAD_LETTER_STREAM,
            subjects: rms.iter().map(|rm| dead_letter_filter(rm)).collect(),
            transform: None,
            sources: Vec::new(),
        },
    ]
}

/// What the hub's `ITG_REPLIES` must source from this site: each resource manager's replies.
pub fn hub_reply_sources(site_domain: &str, rms: &[String]) -> Vec<SourceLayout> {
    rms.iter()
        .map(|rm| SourceLayout {
            name: contract::REPLIES_STREAM.into(),
            api: domain_api(site_domain),
            filter: replies_filter(rm),
        })
        .collect()
}

/// A resource manager the hub already sources from another site: (resource manager, that site's domain).
pub fn served_elsewhere(
    have: &[SourceLayout],
    site_domain: &str,
    rms: &[String],
) -> Vec<(String, String)> {
    let mine = domain_api(site_domain);
    rms.iter()
        .filter_map(|rm| {
            let filter = replies_filter(rm);
            have.iter()
                .find(|s| s.filter == filter && s.api != mine)
                .map(|s| (rm.clone(), api_domain(&s.api).unwrap_or(&s.api).to_owned()))
        })
        .collect()
}

/// The hub's reply sources with this site's added, or `None` when every one is there already. Sources of
/// other sites are kept as they are.
pub fn with_sources(have: &[SourceLayout], want: &[SourceLayout]) -> Option<Vec<SourceLayout>> {
    let missing: Vec<&SourceLayout> = want.iter().filter(|w| !have.contains(w)).collect();
    if missing.is_empty() {
        return None;
    }
    let mut next = have.to_vec();
    next.extend(missing.into_iter().cloned());
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_site_sources_only_its_own_resource_managers_events_and_captures_only_their_requeues() {
        let l = site_streams("hub", &rms(&["k8s-west", "k8s-west2"]));
        let events = &l[0];
        assert_eq!(events.name, "ITG_EVENTS");
        assert_eq!(
            events.subjects,
            ["itg.requeue.k8s-west.>", "itg.requeue.k8s-west2.>"]
        );
        assert!(
            events
                .subjects
                .iter()
                .all(|s| !s.starts_with("itg.events.")),
            "an event subject captured at the site would also be captured by the hub"
        );
        let (src, dest) = events.transform.clone().unwrap();
        assert_eq!(
            (src.as_str(), dest.as_str()),
            ("itg.requeue.>", "itg.events.>")
        );
        assert_eq!(
            requeue_subject("itg.events.k8s-west.ended"),
            "itg.requeue.k8s-west.ended"
        );
        let filters: Vec<&str> = events.sources.iter().map(|s| s.filter.as_str()).collect();
        assert_eq!(filters, ["itg.events.k8s-west.>", "itg.events.k8s-west2.>"]);
        assert!(events.sources.iter().all(|s| s.api == "$JS.hub.API"));
        assert_eq!(
            l[1].subjects,
            ["itg.replies.k8s-west.>", "itg.replies.k8s-west2.>"]
        );
        assert_eq!(
            l[2].subjects,
            ["itg.deadletter.k8s-west.>", "itg.deadletter.k8s-west2.>"]
        );
    }

    #[test]
    fn a_resource_manager_the_hub_sources_from_another_site_is_named_with_that_site() {
        let have = hub_reply_sources("east", &rms(&["k8s-east"]));
        let clash = served_elsewhere(&have, "west", &rms(&["k8s-west", "k8s-east"]));
        assert_eq!(clash, [("k8s-east".to_owned(), "east".to_owned())]);
        assert!(served_elsewhere(&have, "east", &rms(&["k8s-east"])).is_empty());
    }

    #[test]
    fn adding_a_sites_sources_keeps_the_others_and_is_a_no_op_the_second_time() {
        let east = hub_reply_sources("east", &rms(&["k8s-east"]));
        let west = hub_reply_sources("west", &rms(&["k8s-west"]));
        let next = with_sources(&east, &west).unwrap();
        assert_eq!(next.len(), 2);
        assert_eq!(next[0], east[0]);
        assert_eq!(with_sources(&next, &west), None);
    }

    #[test]
    fn an_api_prefix_names_its_domain() {
        assert_eq!(api_domain(&domain_api("west")), Some("west"));
        assert_eq!(api_domain("$JS.API"), None);
    }
}
