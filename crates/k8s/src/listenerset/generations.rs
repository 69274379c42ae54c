//! The generation in which the sets' watch first saw each listener of ours, for telling stale conditions.

use std::collections::BTreeMap;

use gateway_api::experimental::listenersets::ListenerSet;
use kube::runtime::watcher;

use super::ours;

/// For each set of ours, listener name -> (port, the set's generation in which the watch first saw it
/// with that port): never older than the real one, so conditions written before it are known stale. A
/// set's entry follows the set: replaced on each change, dropped on delete, and a relist keeps only the
/// sets it listed, so the map holds no more than the sets that exist.
#[derive(Debug, Default)]
pub(crate) struct Generations {
    sets: BTreeMap<String, BTreeMap<String, (u16, i64)>>,
    /// The sets listed so far by a relist in progress.
    relisted: Option<std::collections::BTreeSet<String>>,
}

impl Generations {
    pub(crate) fn on_event(&mut self, ev: &watcher::Event<ListenerSet>, rm: &str) {
        match ev {
            watcher::Event::Init => self.relisted = Some(Default::default()),
            watcher::Event::InitApply(set) | watcher::Event::Apply(set) => {
                let name = set.metadata.name.clone().unwrap_or_default();
                if let (watcher::Event::InitApply(_), Some(seen)) = (ev, self.relisted.as_mut()) {
                    seen.insert(name.clone());
                }
                if ours(set, rm) {
                    self.note(&name, set);
                } else {
                    self.sets.remove(&name);
                }
            }
            watcher::Event::Delete(set) => {
                self.sets
                    .remove(set.metadata.name.as_deref().unwrap_or_default());
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relisted.take() {
                    self.sets.retain(|name, _| seen.contains(name));
                }
            }
        }
    }

    fn note(&mut self, set_name: &str, set: &ListenerSet) {
        let generation = set.metadata.generation.unwrap_or(0);
        let before = self.sets.remove(set_name).unwrap_or_default();
        let mut now = BTreeMap::new();
        for l in &set.spec.listeners {
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            let first_seen = match before.get(&l.name) {
                Some((p, g)) if *p == port => *g,
                _ => generation,
            };
            now.insert(l.name.clone(), (port, first_seen));
        }
        self.sets.insert(set_name.to_owned(), now);
    }

    pub(super) fn get(&self, set_name: &str, listener: &str) -> Option<(u16, i64)> {
        self.sets.get(set_name)?.get(listener).copied()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sets.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared fixture, at `generation`, on Gateway `itg`.
    fn mk_set(name: &str, generation: i64, ports: &[(&str, u16)], rm: &str) -> ListenerSet {
        let mut set = crate::setsview::tests::mk_set(name, "itg", ports, rm);
        set.metadata.generation = Some(generation);
        set
    }

    #[test]
    fn generations_follow_the_sets_and_are_empty_once_they_are_deleted() {
        let mut g = Generations::default();
        let a = mk_set("a", 1, &[("a-web", 40000), ("a-ssh", 40001)], "rm");
        g.on_event(&watcher::Event::Apply(a.clone()), "rm");
        assert_eq!(g.get("a", "a-web"), Some((40000, 1)));
        // A listener dropped from the set goes with it; one kept keeps the generation it was first seen in.
        let a2 = mk_set("a", 2, &[("a-web", 40000)], "rm");
        g.on_event(&watcher::Event::Apply(a2.clone()), "rm");
        assert_eq!((g.len(), g.get("a", "a-web")), (1, Some((40000, 1))));
        g.on_event(&watcher::Event::Delete(a2), "rm");
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn a_relist_forgets_the_sets_deleted_while_the_watch_was_away() {
        let mut g = Generations::default();
        for n in ["a", "b"] {
            g.on_event(
                &watcher::Event::Apply(mk_set(n, 1, &[(n, 40000)], "rm")),
                "rm",
            );
        }
        g.on_event(&watcher::Event::Init, "rm");
        g.on_event(
            &watcher::Event::InitApply(mk_set("b", 1, &[("b", 40000)], "rm")),
            "rm",
        );
        g.on_event(&watcher::Event::InitDone, "rm");
        assert_eq!((g.len(), g.get("a", "a")), (1, None));
        // Another resource manager's sets are never held.
        g.on_event(
            &watcher::Event::Apply(mk_set("c", 1, &[("c", 40001)], "other")),
            "rm",
        );
        assert_eq!(g.len(), 1);
    }
}
