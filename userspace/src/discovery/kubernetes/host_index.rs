//! The hosts of every Ingress or IngressRoute of the cluster, kept per object as the
//! watcher delivers them (issue 16, item 8). No object is cached: each is read once, as it
//! arrives, and only its host names stay. An update costs the hosts of one object, not a
//! pass over every object of the cluster, and a relist (after `410 Gone`) replaces the
//! whole set at once when it completes, as a reflector store does.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::DynamicObject;
use kube::runtime::watcher;
use kube::ResourceExt;

pub use super::objects::RouteHosts;
use super::objects::{ingress_class, ingress_hosts, ingress_route_hosts, CLASS_ANNOTATION};

/// An object's hosts, and whether it names our ingress class (rather than none).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Entry {
    namespace: String,
    named_ours: bool,
    hosts: RouteHosts,
}

/// An object that names hosts.
pub trait Hosted: ResourceExt {
    /// Its hosts when served by ingress class `class`, and its rules that did not parse.
    fn hosts(&self, class: &str) -> RouteHosts;
    /// The ingress class it names, if any.
    fn class(&self) -> Option<&str>;
}

impl Hosted for Ingress {
    fn hosts(&self, class: &str) -> RouteHosts {
        RouteHosts {
            hosts: ingress_hosts(self, class),
            unparsable: 0,
        }
    }

    fn class(&self) -> Option<&str> {
        ingress_class(self)
    }
}

impl Hosted for DynamicObject {
    fn hosts(&self, class: &str) -> RouteHosts {
        ingress_route_hosts(self, class)
    }

    fn class(&self) -> Option<&str> {
        self.annotations().get(CLASS_ANNOTATION).map(String::as_str)
    }
}

fn entry<K: Hosted>(o: &K, class: &str) -> Entry {
    Entry {
        namespace: o.namespace().unwrap_or_default(),
        named_ours: o.class() == Some(class),
        hosts: o.hosts(class),
    }
}

/// Namespace and name.
type Key = (String, String);

/// Per-object hosts, and how many objects name each host: those of objects that name our
/// ingress class apart, the others by namespace (tenants' objects often name no class).
#[derive(Debug, Default)]
pub struct HostIndex {
    objects: HashMap<Key, Entry>,
    named_ours: BTreeMap<String, usize>,
    by_namespace: BTreeMap<String, BTreeMap<String, usize>>,
    unparsable: usize,
    /// Objects of a relist in progress.
    relist: Option<HashMap<Key, Entry>>,
}

impl HostIndex {
    /// Applies one watcher event.
    pub fn event<K: Hosted>(&mut self, event: &watcher::Event<K>, class: &str) {
        match event {
            watcher::Event::Apply(o) => {
                let e = entry(o, class);
                self.remove(&key(o));
                self.insert(key(o), e);
            }
            watcher::Event::Delete(o) => self.remove(&key(o)),
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(key(o), entry(o, class));
                }
            }
            watcher::Event::InitDone => {
                if let Some(objects) = self.relist.take() {
                    *self = HostIndex::default();
                    for (k, v) in objects {
                        self.insert(k, v);
                    }
                }
            }
        }
    }

    fn counts_for(&mut self, e: &Entry) -> &mut BTreeMap<String, usize> {
        if e.named_ours {
            &mut self.named_ours
        } else {
            self.by_namespace.entry(e.namespace.clone()).or_default()
        }
    }

    fn insert(&mut self, k: Key, e: Entry) {
        let counts = self.counts_for(&e);
        for h in &e.hosts.hosts {
            *counts.entry(h.clone()).or_default() += 1;
        }
        self.unparsable += e.hosts.unparsable;
        self.objects.insert(k, e);
    }

    fn remove(&mut self, k: &Key) {
        let Some(old) = self.objects.remove(k) else {
            return;
        };
        self.unparsable -= old.hosts.unparsable;
        let counts = self.counts_for(&old);
        for h in &old.hosts.hosts {
            if let Some(n) = counts.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(h);
                }
            }
        }
        if !old.named_ours
            && self
                .by_namespace
                .get(&old.namespace)
                .is_some_and(BTreeMap::is_empty)
        {
            self.by_namespace.remove(&old.namespace);
        }
    }

    /// Hosts of objects that name our ingress class, in order.
    pub fn named_ours(&self) -> impl Iterator<Item = &String> {
        self.named_ours.keys()
    }

    /// Hosts of objects that name no class, by namespace, each in order.
    pub fn by_namespace(&self) -> impl Iterator<Item = (&String, impl Iterator<Item = &String>)> {
        self.by_namespace.iter().map(|(ns, h)| (ns, h.keys()))
    }

    /// Every host some object names (a host named in two tiers or namespaces comes
    /// once per tier or namespace).
    pub fn hosts(&self) -> impl Iterator<Item = &String> {
        self.named_ours
            .keys()
            .chain(self.by_namespace.values().flat_map(BTreeMap::keys))
    }

    /// Rules that did not parse, over every object.
    pub fn unparsable(&self) -> usize {
        self.unparsable
    }

    /// Objects indexed.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

fn key<K: ResourceExt>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(name: &str, hosts: &[&str], class: Option<&str>) -> Ingress {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {"ingressClassName": class,
                     "rules": hosts.iter().map(|h| serde_json::json!({"host": h})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    fn hosts(i: &HostIndex) -> Vec<&str> {
        let mut v: Vec<&str> = i.hosts().map(String::as_str).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn updates_and_deletes_change_only_their_objects_hosts() {
        let mut i = HostIndex::default();
        let ev = watcher::Event::Apply;
        i.event(
            &ev(ingress("a", &["x.test", "Shared.test"], None)),
            "traefik",
        );
        i.event(
            &ev(ingress("b", &["shared.test"], Some("traefik"))),
            "traefik",
        );
        i.event(&ev(ingress("c", &["other.test"], Some("nginx"))), "traefik");
        assert_eq!(hosts(&i), ["shared.test", "x.test"]);
        i.event(&ev(ingress("a", &["y.test"], None)), "traefik");
        assert_eq!(hosts(&i), ["shared.test", "y.test"], "a's old hosts go");
        i.event(&watcher::Event::Delete(ingress("b", &[], None)), "traefik");
        assert_eq!(hosts(&i), ["y.test"]);
        assert_eq!(i.len(), 2);
    }

    #[test]
    fn objects_naming_our_class_are_apart_from_the_namespaces() {
        let mut i = HostIndex::default();
        let ev = watcher::Event::Apply;
        i.event(
            &ev(ingress("a", &["ours.test"], Some("traefik"))),
            "traefik",
        );
        i.event(&ev(ingress("b", &["tenant.test"], None)), "traefik");
        let ours: Vec<&String> = i.named_ours().collect();
        assert_eq!(ours, ["ours.test"]);
        let by_ns: Vec<(String, Vec<String>)> = i
            .by_namespace()
            .map(|(ns, h)| (ns.clone(), h.cloned().collect()))
            .collect();
        assert_eq!(
            by_ns,
            [("apps".to_string(), vec!["tenant.test".to_string()])]
        );
        // The class-less object names the class now: it moves tiers.
        i.event(
            &ev(ingress("b", &["tenant.test"], Some("traefik"))),
            "traefik",
        );
        assert_eq!(i.named_ours().count(), 2);
        assert_eq!(i.by_namespace().count(), 0, "an emptied namespace goes");
    }

    #[test]
    fn a_relist_replaces_the_set_when_it_completes() {
        let mut i = HostIndex::default();
        i.event(
            &watcher::Event::Apply(ingress("a", &["old.test"], None)),
            "traefik",
        );
        i.event(&watcher::Event::<Ingress>::Init, "traefik");
        i.event(
            &watcher::Event::InitApply(ingress("b", &["new.test"], None)),
            "traefik",
        );
        assert_eq!(
            hosts(&i),
            ["old.test"],
            "the old set serves until the relist is done"
        );
        i.event(&watcher::Event::<Ingress>::InitDone, "traefik");
        assert_eq!(hosts(&i), ["new.test"]);
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn unparsable_route_rules_are_counted_per_object() {
        let route = |name: &str, rule: &str| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute",
                "metadata": {"name": name, "namespace": "apps"},
                "spec": {"routes": [{"match": rule}]}
            }))
            .unwrap()
        };
        let mut i = HostIndex::default();
        i.event(
            &watcher::Event::Apply(route("a", "Host(`a.test`")),
            "traefik",
        );
        i.event(
            &watcher::Event::Apply(route("b", "Host(`b.test`)")),
            "traefik",
        );
        assert_eq!((hosts(&i), i.unparsable()), (vec!["b.test"], 1));
        i.event(
            &watcher::Event::Apply(route("a", "Host(`a.test`)")),
            "traefik",
        );
        assert_eq!((hosts(&i), i.unparsable()), (vec!["a.test", "b.test"], 0));
    }
}
