//! The ListenerSet mode's view of the Gateway, kept up to date one watch event at a time. With thousands of
//! sets on a Gateway, building the view from every set on each change cost the worker more CPU per
//! exposure than anything else it did; here a set's change costs its own listeners, and a whole rebuild
//! happens only when the Gateway itself, the others' attached sets or a relist change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use gateway_api::experimental::listenersets::ListenerSet;
use itg_core::cluster::GatewayView;
use itg_core::names;
use kube::runtime::watcher;

/// What one set adds to the view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Adds {
    /// Listeners of ours: name and port.
    owned: Vec<(String, u16)>,
    /// Ports of every other listener.
    foreign: Vec<u16>,
}

/// Which sets count, and which of them are ours.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    /// The namespace the sets are watched in (a parentRef without a namespace means it).
    pub namespace: String,
    pub gateway_namespace: String,
    pub gateway_name: String,
    /// Our labels: managed-by and the resource manager's value.
    pub rm_label: (String, String),
}

impl Scope {
    pub(crate) fn new(
        namespace: &str,
        gateway_namespace: &str,
        gateway_name: &str,
        rm: &str,
    ) -> Self {
        Scope {
            namespace: namespace.to_owned(),
            gateway_namespace: gateway_namespace.to_owned(),
            gateway_name: gateway_name.to_owned(),
            rm_label: (names::rm_label_key(), names::rm_label_value(rm)),
        }
    }

    fn attached(&self, set: &ListenerSet) -> bool {
        let p = &set.spec.parent_ref;
        p.name == self.gateway_name
            && p.namespace.as_deref().unwrap_or(&self.namespace) == self.gateway_namespace
            && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
    }

    /// Whether `set` was made by this resource manager (by its labels).
    pub(crate) fn ours(&self, set: &ListenerSet) -> bool {
        set.metadata.labels.as_ref().is_some_and(|l| {
            l.get("app.kubernetes.io/managed-by").map(String::as_str) == Some(names::MANAGER)
                && l.get(&self.rm_label.0) == Some(&self.rm_label.1)
        })
    }

    fn adds(&self, set: &ListenerSet) -> Adds {
        let mut a = Adds::default();
        if !self.attached(set) {
            return a;
        }
        let mine = self.ours(set);
        for l in &set.spec.listeners {
            let Ok(p) = u16::try_from(l.port) else {
                continue;
            };
            if mine && names::is_owned_listener_name(&l.name) {
                a.owned.push((l.name.clone(), p));
            } else {
                a.foreign.push(p);
            }
        }
        a
    }
}

fn bump<K: Ord>(m: &mut BTreeMap<K, usize>, k: K) -> bool {
    let n = m.entry(k).or_insert(0);
    *n += 1;
    *n == 1
}

fn drop_one<K: Ord>(m: &mut BTreeMap<K, usize>, k: &K) -> bool {
    match m.get_mut(k) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            m.remove(k);
            true
        }
        None => false,
    }
}

/// The sets' part of the view with how many sets add each name and port, the part from the Gateway and
/// the others' attached sets (`base`), and the view made of both.
#[derive(Debug)]
pub(crate) struct SetsView {
    scope: Scope,
    sets: HashMap<String, Adds>,
    relisted: Option<HashMap<String, Adds>>,
    owned: BTreeMap<String, usize>,
    owned_ports: BTreeMap<u16, usize>,
    foreign_ports: BTreeMap<u16, usize>,
    /// What the Gateway and the attached sets add, and what it was built from.
    base: GatewayView,
    base_key: Option<(String, BTreeSet<u16>)>,
    view: Arc<GatewayView>,
}

impl SetsView {
    pub(crate) fn new(scope: Scope) -> Self {
        SetsView {
            scope,
            sets: HashMap::new(),
            relisted: None,
            owned: BTreeMap::new(),
            owned_ports: BTreeMap::new(),
            foreign_ports: BTreeMap::new(),
            base: GatewayView::default(),
            base_key: None,
            view: Arc::default(),
        }
    }

    /// Follows one event of the sets' watch.
    pub(crate) fn on_event(&mut self, ev: &watcher::Event<ListenerSet>) {
        match ev {
            watcher::Event::Init => self.relisted = Some(HashMap::new()),
            watcher::Event::InitApply(set) => {
                let adds = self.scope.adds(set);
                let name = set.metadata.name.clone().unwrap_or_default();
                match self.relisted.as_mut() {
                    Some(r) => {
                        r.insert(name, adds);
                    }
                    None => self.replace(name, adds),
                }
            }
            watcher::Event::Apply(set) => {
                let adds = self.scope.adds(set);
                self.replace(set.metadata.name.clone().unwrap_or_default(), adds);
            }
            watcher::Event::Delete(set) => {
                self.replace(
                    set.metadata.name.clone().unwrap_or_default(),
                    Adds::default(),
                );
            }
            watcher::Event::InitDone => {
                if let Some(sets) = self.relisted.take() {
                    self.sets = sets;
                    self.recount();
                }
            }
        }
    }

    /// The view, given the Gateway's part as it stands: `key` says what that part was built from (the
    /// Gateway's resourceVersion, the attached sets' ports), `base` builds it when the key changed.
    pub(crate) fn view(
        &mut self,
        key: (String, BTreeSet<u16>),
        base: impl FnOnce() -> GatewayView,
    ) -> Arc<GatewayView> {
        if self.base_key.as_ref() != Some(&key) {
            self.base = base();
            self.base_key = Some(key);
            self.rebuild();
        }
        self.view.clone()
    }

    fn replace(&mut self, name: String, adds: Adds) {
        let old = if adds == Adds::default() {
            self.sets.remove(&name)
        } else {
            self.sets.insert(name, adds.clone())
        }
        .unwrap_or_default();
        if old == adds {
            return;
        }
        for (l, p) in &old.owned {
            if drop_one(&mut self.owned, l) && !self.base.owned.contains(l) {
                let v = Arc::make_mut(&mut self.view);
                v.owned.remove(l);
                v.listeners.remove(l);
                v.owned_port_of.remove(l);
            }
            if drop_one(&mut self.owned_ports, p) && !self.base.owned_ports.contains(p) {
                Arc::make_mut(&mut self.view).owned_ports.remove(p);
            }
        }
        for p in &old.foreign {
            if drop_one(&mut self.foreign_ports, p) && !self.base.foreign_ports.contains(p) {
                Arc::make_mut(&mut self.view).foreign_ports.remove(p);
            }
        }
        for (l, p) in adds.owned {
            if bump(&mut self.owned_ports, p) {
                Arc::make_mut(&mut self.view).owned_ports.insert(p);
            }
            if bump(&mut self.owned, l.clone()) {
                let v = Arc::make_mut(&mut self.view);
                v.listeners.insert(l.clone());
                v.owned_port_of.insert(l.clone(), p);
                v.owned.insert(l);
            }
        }
        for p in adds.foreign {
            if bump(&mut self.foreign_ports, p) {
                Arc::make_mut(&mut self.view).foreign_ports.insert(p);
            }
        }
    }

    /// Counts every set again (after a relist) and rebuilds the view.
    fn recount(&mut self) {
        let (mut owned, mut owned_ports, mut foreign) =
            (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for a in self.sets.values() {
            for (l, p) in &a.owned {
                bump(&mut owned, l.clone());
                bump(&mut owned_ports, *p);
            }
            for p in &a.foreign {
                bump(&mut foreign, *p);
            }
        }
        (self.owned, self.owned_ports, self.foreign_ports) = (owned, owned_ports, foreign);
        self.rebuild();
    }

    fn rebuild(&mut self) {
        let mut v = self.base.clone();
        for l in self.owned.keys() {
            v.listeners.insert(l.clone());
            v.owned.insert(l.clone());
        }
        v.owned_ports.extend(self.owned_ports.keys());
        v.foreign_ports.extend(self.foreign_ports.keys());
        for a in self.sets.values() {
            for (l, p) in &a.owned {
                v.owned_port_of.insert(l.clone(), *p);
            }
        }
        self.view = Arc::new(v);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const A: &str = "itg-0123456789abcdef0123";
    const B: &str = "itg-fedcba9876543210fedc";

    /// A set of resource manager `rm` in namespace `gw` attached to Gateway `parent`, with `ports`.
    pub(crate) fn mk_set(name: &str, parent: &str, ports: &[(&str, u16)], rm: &str) -> ListenerSet {
        let listeners: Vec<_> = ports
            .iter()
            .map(|(n, p)| serde_json::json!({"name": n, "port": p, "protocol": "TCP"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "ListenerSet",
            "metadata": {
                "name": name, "namespace": "gw",
                "labels": {
                    "app.kubernetes.io/managed-by": names::MANAGER,
                    (names::rm_label_key()): names::rm_label_value(rm),
                }
            },
            "spec": {"parentRef": {"name": parent}, "listeners": listeners}
        }))
        .unwrap()
    }

    fn scope() -> Scope {
        Scope::new("gw", "gw", "itg", "rm")
    }

    /// The view as built from scratch from `sets` and `base`, the way it was before it was kept.
    fn from_scratch(sets: &[ListenerSet], base: &GatewayView) -> GatewayView {
        let s = scope();
        let mut v = base.clone();
        for set in sets {
            let a = s.adds(set);
            for (l, p) in a.owned {
                v.listeners.insert(l.clone());
                v.owned_port_of.insert(l.clone(), p);
                v.owned.insert(l);
                v.owned_ports.insert(p);
            }
            v.foreign_ports.extend(a.foreign);
        }
        v
    }

    fn base() -> GatewayView {
        GatewayView {
            present: true,
            foreign_ports: [40005].into(),
            ..Default::default()
        }
    }

    fn key(n: &str) -> (String, BTreeSet<u16>) {
        (n.into(), BTreeSet::new())
    }

    #[test]
    fn a_set_added_changed_and_deleted_moves_only_its_own_listeners() {
        let mut sv = SetsView::new(scope());
        let v0 = sv.view(key("1"), base);
        assert_eq!(*v0, base());
        let a = mk_set("a", "itg", &[(A, 40000)], "rm");
        let other = mk_set("o", "itg", &[("db", 40001)], "other");
        let elsewhere = mk_set("e", "another-gateway", &[("db", 40002)], "other");
        for s in [&a, &other, &elsewhere] {
            sv.on_event(&watcher::Event::Apply(s.clone()));
        }
        let v = sv.view(key("1"), || unreachable!("the Gateway did not change"));
        assert_eq!(
            *v,
            from_scratch(&[a.clone(), other.clone(), elsewhere.clone()], &base())
        );
        assert!(v.owned.contains(A) && v.owned_ports.contains(&40000));
        assert!(v.foreign_ports.contains(&40001) && !v.foreign_ports.contains(&40002));
        // A listener added to a set, then the set deleted.
        let a2 = mk_set("a", "itg", &[(A, 40000), (B, 40003)], "rm");
        sv.on_event(&watcher::Event::Apply(a2.clone()));
        let v = sv.view(key("1"), || unreachable!());
        assert_eq!(*v, from_scratch(&[a2.clone(), other.clone()], &base()));
        sv.on_event(&watcher::Event::Delete(a2));
        let v = sv.view(key("1"), || unreachable!());
        assert_eq!(*v, from_scratch(std::slice::from_ref(&other), &base()));
        // A view handed out before a change is not changed under its reader.
        assert_eq!(*v0, base());
    }

    #[test]
    fn a_port_two_sources_hold_stays_until_both_let_it_go() {
        let mut sv = SetsView::new(scope());
        let _ = sv.view(key("1"), base);
        // 40005 is foreign on the Gateway too; 40001 is held by two sets.
        let x = mk_set("x", "itg", &[("db", 40005), ("ssh", 40001)], "other");
        let y = mk_set("y", "itg", &[("db", 40001)], "other");
        sv.on_event(&watcher::Event::Apply(x.clone()));
        sv.on_event(&watcher::Event::Apply(y.clone()));
        sv.on_event(&watcher::Event::Delete(x));
        let v = sv.view(key("1"), || unreachable!());
        assert!(
            v.foreign_ports.contains(&40005),
            "the Gateway still holds it"
        );
        assert!(v.foreign_ports.contains(&40001), "set y still holds it");
        sv.on_event(&watcher::Event::Delete(y));
        let v = sv.view(key("1"), || unreachable!());
        assert_eq!(v.foreign_ports, [40005].into());
    }

    #[test]
    fn a_relist_replaces_every_set_and_a_changed_gateway_rebuilds() {
        let mut sv = SetsView::new(scope());
        let _ = sv.view(key("1"), base);
        let a = mk_set("a", "itg", &[(A, 40000)], "rm");
        let b = mk_set("b", "itg", &[(B, 40001)], "rm");
        sv.on_event(&watcher::Event::Apply(a));
        // Set a was deleted while the watch was away: the relist lists only b.
        sv.on_event(&watcher::Event::Init);
        sv.on_event(&watcher::Event::InitApply(b.clone()));
        let v = sv.view(key("1"), || unreachable!());
        assert!(
            v.owned.contains(A),
            "the old view stands until the relist is done"
        );
        sv.on_event(&watcher::Event::InitDone);
        let v = sv.view(key("1"), || unreachable!());
        assert_eq!(*v, from_scratch(std::slice::from_ref(&b), &base()));
        let moved = GatewayView {
            present: true,
            foreign_ports: [40009].into(),
            ..Default::default()
        };
        let v = sv.view(key("2"), || moved.clone());
        assert_eq!(*v, from_scratch(&[b], &moved));
    }
}
