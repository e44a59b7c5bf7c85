//! Objects shaped like the API's.

use serde_json::{json, Value};

pub(crate) const NODE: &str = "node-a";

pub(crate) fn pod(
    name: &str,
    uid: &str,
    node: &str,
    container_id: Option<&str>,
    ip: &str,
) -> Value {
    let state = match container_id {
        Some(_) => json!({"running": {"startedAt": "2026-05-01T10:00:05Z"}}),
        None => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let mut status = json!({
        "phase": if container_id.is_some() { "Running" } else { "Pending" },
        "conditions": [{"type": "Ready", "status": if container_id.is_some() { "True" } else { "False" },
                        "lastProbeTime": null, "lastTransitionTime": "2026-05-01T10:00:06Z"}],
        "hostIP": "192.168.1.10", "hostIPs": [{"ip": "192.168.1.10"}],
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": "2026-05-01T10:00:00Z",
        "qosClass": "Burstable",
        "containerStatuses": [{
            "name": "traefik", "state": state, "lastState": {},
            "ready": container_id.is_some(), "restartCount": 0,
            "image": "docker.io/library/traefik:v3.7.15",
            "imageID": "docker.io/library/traefik@sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "started": container_id.is_some()
        }]
    });
    if let Some(id) = container_id {
        status["containerStatuses"][0]["containerID"] = json!(format!("containerd://{id}"));
    }
    json!({
        "metadata": {
            "name": name, "generateName": "traefik-6d5f8c7b9-", "namespace": "traefik", "uid": uid,
            "labels": {"app.kubernetes.io/name": "traefik", "app.kubernetes.io/instance": "traefik-traefik",
                       "pod-template-hash": "6d5f8c7b9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "traefik-6d5f8c7b9",
                                 "uid": "9a8b7c6d-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": "traefik",
            "containers": [{
                "name": "traefik", "image": "docker.io/library/traefik:v3.7.15",
                "args": ["--entryPoints.web.address=:8000/tcp", "--entryPoints.websecure.address=:8443/tcp"],
                "ports": [
                    {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
                    {"name": "traefik", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "web", "containerPort": 8000, "protocol": "TCP"},
                    {"name": "websecure", "containerPort": 8443, "protocol": "TCP"},
                    {"name": "websecure-http3", "containerPort": 8443, "protocol": "UDP"}
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 60, "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "priority": 0, "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": status
    })
}

pub(crate) fn ingress(name: &str, hosts: &[&str], class: Option<&str>) -> Value {
    let rules: Vec<Value> = hosts
        .iter()
        .map(|h| {
            json!({"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"number": 80}}}}]}})
        })
        .collect();
    let mut spec = json!({"rules": rules});
    if let Some(c) = class {
        spec["ingressClassName"] = json!(c);
    }
    json!({
        "metadata": {"name": name, "namespace": "apps", "generation": 1,
                     "annotations": {"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"}},
        "spec": spec,
        "status": {"loadBalancer": {}}
    })
}

pub(crate) fn ingress_route(name: &str, rules: &[&str]) -> Value {
    let routes: Vec<Value> = rules
        .iter()
        .map(|r| {
            json!({"kind": "Rule", "match": r, "priority": 10,
                   "services": [{"kind": "Service", "name": name, "port": 80}]})
        })
        .collect();
    json!({
        "metadata": {"name": name, "namespace": "apps", "generation": 1},
        "spec": {"entryPoints": ["websecure"], "routes": routes, "tls": {}}
    })
}
