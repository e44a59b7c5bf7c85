//! From Kubernetes objects to the plain types the rest of the agent works with: pods to
//! [`PodInfo`], Ingress and IngressRoute objects to host names.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::DynamicObject;
use kube::ResourceExt;

use crate::discovery::pod_cgroup::{ContainerId, ContainerInfo, PodInfo, PodPort, QosClass};
use crate::discovery::traefik_rule;

/// The legacy class annotation both Traefik providers honour.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// What the pod store keeps: this node's Traefik pods are few and read widely, so only the
/// API server's bookkeeping goes (`managedFields`, `last-applied-configuration`).
/// Ingresses and IngressRoutes are not kept at all ([`super::host_index`]).
pub(super) fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(a) = pod.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A watched pod as resolution needs it; `None` for pods with nothing to watch (finished,
/// or on another node despite the field selector).
pub(super) fn pod_info(pod: &Pod, node: &str, only_containers: &[String]) -> Option<PodInfo> {
    let spec = pod.spec.as_ref()?;
    if spec.node_name.as_deref() != Some(node) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let wanted =
        |name: &str| only_containers.is_empty() || only_containers.iter().any(|c| c == name);

    let mut ips: Vec<IpAddr> = Vec::new();
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    for ip in status.pod_ip.as_deref().into_iter().chain(listed) {
        if let Ok(ip) = ip.parse::<IpAddr>() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }

    let mut ports = Vec::new();
    for c in spec.containers.iter().filter(|c| wanted(&c.name)) {
        for p in c.ports.iter().flatten() {
            if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                continue;
            }
            let Ok(port) = u16::try_from(p.container_port) else {
                continue;
            };
            if port != 0 && !ports.iter().any(|q: &PodPort| q.port == port) {
                ports.push(PodPort {
                    name: p.name.clone(),
                    port,
                });
            }
        }
    }

    let mut containers = Vec::new();
    let mut unusable = Vec::new();
    for cs in status.container_statuses.iter().flatten() {
        if !wanted(&cs.name) {
            continue;
        }
        // Only a running container has a cgroup; a waiting one (creating, crash loop)
        // still carries the id of its previous, gone, instance.
        let running = cs.state.as_ref().is_some_and(|s| s.running.is_some());
        let Some(id) = cs.container_id.as_deref().filter(|_| running) else {
            continue;
        };
        match ContainerId::parse(id) {
            Ok(id) => containers.push(ContainerInfo {
                name: cs.name.clone(),
                id,
            }),
            Err(reason) => unusable.push((cs.name.clone(), reason)),
        }
    }

    Some(PodInfo {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        uid: pod.uid().unwrap_or_default(),
        qos: status.qos_class.as_deref().and_then(QosClass::parse),
        ips,
        ports,
        containers,
        unusable,
        owner: pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| format!("{}/{}", o.kind, o.name)),
        ready_since: status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .and_then(|t| u64::try_from(t.0.as_second()).ok())
            .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s)),
    })
}

/// Whether an object that names an ingress class names ours (or names none).
fn class_matches(named: Option<&str>, ours: &str) -> bool {
    named.is_none_or(|c| c.is_empty() || c == ours)
}

/// The ingress class an Ingress names, by field or by the legacy annotation.
pub(super) fn ingress_class(ing: &Ingress) -> Option<&str> {
    ing.spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| ing.annotations().get(CLASS_ANNOTATION).map(String::as_str))
}

/// Rule hosts of an Ingress served by our class.
pub(super) fn ingress_hosts(ing: &Ingress, class: &str) -> Vec<String> {
    let Some(spec) = ing.spec.as_ref() else {
        return Vec::new();
    };
    let named = ingress_class(ing);
    if !class_matches(named, class) {
        return Vec::new();
    }
    spec.rules
        .iter()
        .flatten()
        .filter_map(|r| r.host.as_deref())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The hosts one object names, and how many of its rules did not parse.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteHosts {
    pub hosts: Vec<String>,
    pub unparsable: usize,
}

/// Hosts of an IngressRoute's `spec.routes[].match` rules, and how many rules did not parse.
pub(super) fn ingress_route_hosts(obj: &DynamicObject, class: &str) -> RouteHosts {
    let mut out = RouteHosts::default();
    if !class_matches(
        obj.annotations().get(CLASS_ANNOTATION).map(String::as_str),
        class,
    ) {
        return out;
    }
    let routes = obj
        .data
        .get("spec")
        .and_then(|s| s.get("routes"))
        .and_then(|r| r.as_array());
    for route in routes.into_iter().flatten() {
        let Some(rule) = route.get("match").and_then(|m| m.as_str()) else {
            out.unparsable += 1;
            continue;
        };
        match traefik_rule::hosts(rule) {
            Ok(h) => out.hosts.extend(h.hosts),
            Err(e) => {
                out.unparsable += 1;
                tracing::debug!(namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(), error = %e, "IngressRoute rule not parsed");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    const ID: &str = "0f3c9e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766";

    fn traefik_pod(node: &str, phase: &str, running: bool) -> Pod {
        pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "traefik-1", "namespace": "edge", "uid": "5e6f1d2c-aaaa-4bbb-8ccc-0123456789ab"},
            "spec": {"nodeName": node, "containers": [
                {"name": "traefik", "image": "traefik:v3.7", "ports": [
                    {"name": "web", "containerPort": 8000, "protocol": "TCP"},
                    {"name": "websecure", "containerPort": 8443, "protocol": "TCP"},
                    {"name": "websecure-h3", "containerPort": 8443, "protocol": "UDP"},
                    {"containerPort": 9100}
                ]},
                {"name": "sidecar", "image": "busybox", "ports": [{"name": "debug", "containerPort": 7000}]}
            ]},
            "status": {"phase": phase, "qosClass": "Burstable", "podIP": "10.1.2.3",
                "podIPs": [{"ip": "10.1.2.3"}, {"ip": "fd00::3"}],
                "containerStatuses": [
                    {"name": "traefik", "ready": true, "restartCount": 0, "image": "traefik:v3.7", "imageID": "",
                     "containerID": format!("containerd://{ID}"),
                     "state": if running { serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}) } else { serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}) }},
                    {"name": "sidecar", "ready": true, "restartCount": 0, "image": "busybox", "imageID": "",
                     "containerID": "containerd://zz", "state": {"running": {}}}
                ]}
        }))
    }

    #[test]
    fn pod_to_info() {
        let info = pod_info(&traefik_pod("n1", "Running", true), "n1", &[]).unwrap();
        assert_eq!(info.name, "traefik-1");
        assert_eq!(info.namespace, "edge");
        assert_eq!(info.qos, Some(QosClass::Burstable));
        assert_eq!(info.ips.len(), 2);
        let ports: Vec<(Option<&str>, u16)> = info
            .ports
            .iter()
            .map(|p| (p.name.as_deref(), p.port))
            .collect();
        assert_eq!(
            ports,
            vec![
                (Some("web"), 8000),
                (Some("websecure"), 8443),
                (None, 9100),
                (Some("debug"), 7000)
            ]
        );
        assert_eq!(info.containers.len(), 1);
        assert_eq!(info.containers[0].id.id, ID);
        // The sidecar's id is garbage: reported, not guessed at.
        assert_eq!(info.unusable.len(), 1);
        assert_eq!(info.endpoints().len(), 8);

        let only = pod_info(
            &traefik_pod("n1", "Running", true),
            "n1",
            &["traefik".to_string()],
        )
        .unwrap();
        assert!(only.unusable.is_empty());
        assert_eq!(only.ports.len(), 3);

        assert!(pod_info(&traefik_pod("n2", "Running", true), "n1", &[]).is_none());
        assert!(pod_info(&traefik_pod("n1", "Succeeded", true), "n1", &[]).is_none());
        let waiting = pod_info(&traefik_pod("n1", "Running", false), "n1", &[]).unwrap();
        assert!(waiting.containers.is_empty());
    }

    #[test]
    fn ingress_class_filter() {
        let ing = |class: Option<&str>, annotation: Option<&str>| -> Ingress {
            let mut meta = serde_json::json!({"name": "app", "namespace": "default"});
            if let Some(a) = annotation {
                meta["annotations"] = serde_json::json!({CLASS_ANNOTATION: a});
            }
            let mut spec = serde_json::json!({"rules": [
                {"host": "App.Test", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "app", "port": {"number": 80}}}}]}},
                {"http": {"paths": []}}
            ]});
            if let Some(c) = class {
                spec["ingressClassName"] = serde_json::json!(c);
            }
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec
            }))
            .unwrap()
        };
        assert_eq!(ingress_hosts(&ing(None, None), "traefik"), vec!["app.test"]);
        assert_eq!(
            ingress_hosts(&ing(Some("traefik"), None), "traefik"),
            vec!["app.test"]
        );
        assert!(ingress_hosts(&ing(Some("nginx"), None), "traefik").is_empty());
        assert!(ingress_hosts(&ing(None, Some("nginx")), "traefik").is_empty());
        assert_eq!(
            ingress_hosts(&ing(None, Some("traefik")), "traefik"),
            vec!["app.test"]
        );
    }

    #[test]
    fn ingress_route_rules() {
        let route = |annotations: serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute",
                "metadata": {"name": "r", "namespace": "default", "annotations": annotations},
                "spec": {"entryPoints": ["websecure"], "routes": [
                    {"kind": "Rule", "match": "Host(`a.test`) && PathPrefix(`/ws`)", "services": [{"name": "a", "port": 80}]},
                    {"kind": "Rule", "match": "Host(`b.test`) || Host(`c.test`)", "services": [{"name": "b", "port": 80}]},
                    {"kind": "Rule", "match": "Host(`broken", "services": []},
                    {"kind": "Rule", "services": []}
                ]}
            }))
            .unwrap()
        };
        let r = ingress_route_hosts(&route(serde_json::json!({})), "traefik");
        assert_eq!(r.hosts, vec!["a.test", "b.test", "c.test"]);
        assert_eq!(r.unparsable, 2);
        let other = ingress_route_hosts(
            &route(serde_json::json!({CLASS_ANNOTATION: "internal"})),
            "traefik",
        );
        assert_eq!(other, RouteHosts::default());
    }
}
