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

use super::objects::{ingress_hosts, ingress_route_hosts};

/// The hosts one object names, and how many of its rules did not parse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteHosts {
    pub hosts: Vec<String>,
    pub unparsable: usize,
}

/// An object that names hosts.
pub trait Hosted: ResourceExt {
    /// Its hosts when served by ingress class `class`, and its rules that did not parse.
    fn hosts(&self, class: &str) -> RouteHosts;
}

impl Hosted for Ingress {
    fn hosts(&self, class: &str) -> RouteHosts {
        RouteHosts {
            hosts: ingress_hosts(self, class),
            unparsable: 0,
        }
    }
}

impl Hosted for DynamicObject {
    fn hosts(&self, class: &str) -> RouteHosts {
        ingress_route_hosts(self, class)
    }
}

/// Namespace and name.
type Key = (String, String);

/// Per-object hosts, and how many objects name each host.
#[derive(Debug, Default)]
pub struct HostIndex {
    objects: HashMap<Key, RouteHosts>,
    counts: BTreeMap<String, usize>,
    unparsable: usize,
    /// Objects of a relist in progress.
    relist: Option<HashMap<Key, RouteHosts>>,
}

impl HostIndex {
    /// Applies one watcher event.
    pub fn event<K: Hosted>(&mut self, event: &watcher::Event<K>, class: &str) {
        match event {
            watcher::Event::Apply(o) => {
                let entry = o.hosts(class);
                self.remove(&key(o));
                self.insert(key(o), entry);
            }
            watcher::Event::Delete(o) => self.remove(&key(o)),
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(key(o), o.hosts(class));
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

    fn insert(&mut self, k: Key, entry: RouteHosts) {
        for h in &entry.hosts {
            *self.counts.entry(h.clone()).or_default() += 1;
        }
        self.unparsable += entry.unparsable;
        self.objects.insert(k, entry);
    }

    fn remove(&mut self, k: &Key) {
        let Some(old) = self.objects.remove(k) else {
            return;
        };
        self.unparsable -= old.unparsable;
        for h in &old.hosts {
            if let Some(n) = self.counts.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(h);
                }
            }
        }
    }

    /// Every host some object names, once, in order.
    pub fn hosts(&self) -> impl Iterator<Item = &String> {
        self.counts.keys()
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
        i.hosts().map(String::as_str).collect()
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
