//! The workload manifests: the DaemonSet's security posture and mounts, read-only RBAC,
//! and the PodMonitor.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::strings;

/// Capabilities the DaemonSet adds, exactly; README's deployment section documents each.
pub(super) const CAPABILITIES: [&str; 5] = [
    "BPF",
    "PERFMON",
    "SYS_RESOURCE",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];

pub(super) fn check_daemonset(ds: &Value) -> Result<()> {
    let pod = &ds["spec"]["template"]["spec"];
    let mut problems = Vec::new();
    if pod["hostPID"] != true {
        problems.push("hostPID is not true".to_string());
    }
    if pod["hostNetwork"] == true {
        problems.push("hostNetwork is set".to_string());
    }
    if !pod["tolerations"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())
    }) {
        problems.push("no toleration of every taint (operator: Exists)".to_string());
    }
    if pod["securityContext"]["seccompProfile"]["type"] != "RuntimeDefault" {
        problems.push("pod seccompProfile is not RuntimeDefault".to_string());
    }
    let containers = pod["containers"].as_array().cloned().unwrap_or_default();
    if containers.len() != 1 {
        problems.push(format!("{} containers, want 1", containers.len()));
    }
    let mounts_by_volume = |c: &Value| -> BTreeMap<String, (String, bool)> {
        c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m["name"].as_str()?.to_owned(),
                    (m["mountPath"].as_str()?.to_owned(), m["readOnly"] == true),
                ))
            })
            .collect()
    };
    for c in pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(&containers)
    {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["privileged"] == true {
            problems.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            problems.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        if sc["readOnlyRootFilesystem"] != true {
            problems.push(format!("{name}: readOnlyRootFilesystem is not true"));
        }
        if !strings(&sc["capabilities"]["drop"]).contains("ALL") {
            problems.push(format!("{name}: capabilities do not drop ALL"));
        }
        let added: BTreeSet<String> = strings(&sc["capabilities"]["add"])
            .into_iter()
            .map(|c| c.trim_start_matches("CAP_").to_owned())
            .collect();
        let want: BTreeSet<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
        if added != want {
            problems.push(format!(
                "{name}: adds capabilities {added:?}, documented are {want:?}"
            ));
        }
        for (volume, (path, read_only)) in mounts_by_volume(c) {
            if !read_only {
                problems.push(format!(
                    "{name}: volume {volume} at {path} is not read-only"
                ));
            }
        }
    }
    if let Some(c) = containers.first() {
        let port = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "metrics");
        match port {
            Some(p) if p["containerPort"] == 9477 => {}
            _ => problems.push("no port named metrics on 9477".to_string()),
        }
        for (probe, want) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            if get["path"] != want || (get["port"] != "metrics" && get["port"] != 9477) {
                problems.push(format!(
                    "{probe} is not an HTTP GET of {want} on the metrics port"
                ));
            }
        }
        let env: BTreeMap<&str, &Value> = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?, e)))
            .collect();
        if env
            .get("NODE_NAME")
            .map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"])
            != Some(&Value::from("spec.nodeName"))
        {
            problems.push("NODE_NAME does not come from spec.nodeName".to_string());
        }
        if env.get("ROUTESKEW_DISCOVERY").map(|e| &e["value"]) != Some(&Value::from("kubernetes")) {
            problems.push("ROUTESKEW_DISCOVERY is not kubernetes".to_string());
        }
        let res = &c["resources"];
        for (section, key) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            if res[section][key].is_null() {
                problems.push(format!("no resources.{section}.{key}"));
            }
        }
        // Host paths the sensor and discovery read, each mounted read-only.
        let volumes: BTreeMap<&str, &str> = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
            .collect();
        let mounts = mounts_by_volume(c);
        let mounted_host_paths: BTreeSet<&str> = mounts
            .keys()
            .filter_map(|v| volumes.get(v.as_str()).copied())
            .collect();
        for host in [
            "/proc",
            "/sys/fs/cgroup",
            "/sys/kernel/btf",
            "/sys/kernel/tracing",
        ] {
            if !mounted_host_paths.contains(host) {
                problems.push(format!("host path {host} is not mounted"));
            }
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

/// README's deployment section names every added capability as CAP_<NAME>.
pub(super) fn capabilities_documented(readme: &str) -> Result<()> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Deploying to a cluster"))
        .context("README.md has no \"## Deploying to a cluster\" section")?;
    let missing: Vec<&str> = CAPABILITIES
        .iter()
        .filter(|c| !section.contains(&format!("CAP_{c}")))
        .copied()
        .collect();
    ensure!(
        missing.is_empty(),
        "README's deployment section does not document CAP_{}",
        missing.join(", CAP_")
    );
    Ok(())
}

pub(super) fn check_rbac(role: &Value) -> Result<()> {
    let want: BTreeSet<(String, String)> = [
        ("", "pods"),
        ("networking.k8s.io", "ingresses"),
        ("traefik.io", "ingressroutes"),
        ("traefik.containo.us", "ingressroutes"),
    ]
    .iter()
    .map(|(g, r)| (g.to_string(), r.to_string()))
    .collect();
    let mut have = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let verbs = strings(&rule["verbs"]);
        let extra: Vec<&&str> = verbs
            .iter()
            .filter(|v| !["get", "list", "watch"].contains(*v))
            .collect();
        ensure!(extra.is_empty(), "ClusterRole grants {extra:?}");
        ensure!(
            rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null(),
            "ClusterRole rules must be plain resource rules"
        );
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                have.insert((g.to_owned(), r.to_owned()));
            }
        }
    }
    ensure!(
        have == want,
        "ClusterRole covers {have:?}, want exactly {want:?}"
    );
    Ok(())
}

pub(super) fn check_podmonitor(pm: &Value) -> Result<()> {
    let endpoints = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        endpoints.len() == 1,
        "want one podMetricsEndpoint, have {}",
        endpoints.len()
    );
    let ep = &endpoints[0];
    ensure!(
        ep["port"] == "metrics" && ep["path"] == "/metrics",
        "the endpoint is not /metrics on port metrics"
    );
    ensure!(
        ep["honorLabels"] == true,
        "honorLabels is not true: the Traefik namespace label would be renamed"
    );
    ensure!(
        pm["spec"]["jobLabel"] == "app.kubernetes.io/name",
        "jobLabel must be app.kubernetes.io/name (job=\"routeskew\")"
    );
    let targets: BTreeSet<&str> = ep["relabelings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| strings(&r["sourceLabels"]).contains("__meta_kubernetes_pod_node_name"))
        .filter_map(|r| r["targetLabel"].as_str())
        .collect();
    ensure!(
        targets.contains("node") && targets.contains("instance"),
        "node and instance must come from the pod's node name"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good_daemonset() -> Value {
        json!({"kind": "DaemonSet", "metadata": {"name": "routeskew"}, "spec": {"template": {"spec": {
            "hostPID": true,
            "tolerations": [{"operator": "Exists"}],
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "routeskew",
                "securityContext": {
                    "privileged": false, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH"]}
                },
                "ports": [{"name": "metrics", "containerPort": 9477}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}},
                "env": [
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "ROUTESKEW_DISCOVERY", "value": "kubernetes"}
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}},
                "volumeMounts": [
                    {"name": "p", "mountPath": "/host/proc", "readOnly": true},
                    {"name": "c", "mountPath": "/host/sys/fs/cgroup", "readOnly": true},
                    {"name": "b", "mountPath": "/sys/kernel/btf", "readOnly": true},
                    {"name": "t", "mountPath": "/sys/kernel/tracing", "readOnly": true}
                ]
            }],
            "volumes": [
                {"name": "p", "hostPath": {"path": "/proc"}},
                {"name": "c", "hostPath": {"path": "/sys/fs/cgroup"}},
                {"name": "b", "hostPath": {"path": "/sys/kernel/btf"}},
                {"name": "t", "hostPath": {"path": "/sys/kernel/tracing"}}
            ]
        }}}})
    }

    #[test]
    fn daemonset_check_accepts_the_documented_posture() {
        check_daemonset(&good_daemonset()).unwrap();
    }

    #[test]
    fn daemonset_check_rejects_each_deviation() {
        let container = "/spec/template/spec/containers/0";
        let cases: [(&str, Value); 8] = [
            ("/securityContext/privileged", json!(true)),
            (
                "/securityContext/capabilities/add",
                json!([
                    "BPF",
                    "PERFMON",
                    "SYS_RESOURCE",
                    "SYS_PTRACE",
                    "DAC_READ_SEARCH",
                    "SYS_ADMIN"
                ]),
            ),
            ("/securityContext/capabilities/drop", json!([])),
            ("/securityContext/readOnlyRootFilesystem", json!(false)),
            ("/livenessProbe/httpGet/path", json!("/metrics")),
            ("/readinessProbe/httpGet/path", json!("/healthz")),
            ("/volumeMounts/0/readOnly", json!(false)),
            ("/resources/limits", json!({})),
        ];
        for (pointer, value) in cases {
            let mut ds = good_daemonset();
            *ds.pointer_mut(&format!("{container}{pointer}")).unwrap() = value;
            assert!(check_daemonset(&ds).is_err(), "{pointer} accepted");
        }
        let mut ds = good_daemonset();
        *ds.pointer_mut("/spec/template/spec/hostPID").unwrap() = json!(false);
        assert!(check_daemonset(&ds).is_err());
        let mut ds = good_daemonset();
        ds.pointer_mut("/spec/template/spec/volumes")
            .unwrap()
            .as_array_mut()
            .unwrap()
            .pop();
        assert!(check_daemonset(&ds).is_err(), "tracefs unmounted accepted");
    }

    #[test]
    fn rbac_check_is_read_only_and_exact() {
        let role = |verbs: Value, resources: Value| {
            json!({"rules": [
                {"apiGroups": [""], "resources": resources, "verbs": verbs},
                {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["traefik.io", "traefik.containo.us"], "resources": ["ingressroutes"], "verbs": ["get", "list", "watch"]}
            ]})
        };
        check_rbac(&role(json!(["get", "list", "watch"]), json!(["pods"]))).unwrap();
        assert!(check_rbac(&role(
            json!(["get", "list", "watch", "delete"]),
            json!(["pods"])
        ))
        .is_err());
        assert!(check_rbac(&role(json!(["get"]), json!(["pods", "secrets"]))).is_err());
    }
}
