//! The least-privilege options (issue 16, item 9): the NetworkPolicy, /metrics behind
//! kube-rbac-proxy, and the agent's own seccomp profile, as rendered by the
//! `least-privilege` overlay; and the profile file itself, which the kernel-tier test
//! `e2e_seccomp` runs the agent under.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use super::{find, strings};

/// Syscalls the profile must deny: the agent never calls them, and a compromised agent
/// holding CAP_SYS_PTRACE could use them against its neighbours.
const MUST_DENY: [&str; 8] = [
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "open_by_handle_at",
    "mount",
    "setns",
    "init_module",
    "kexec_load",
];

/// Syscalls the agent needs: loading and attaching its programs, reading replicas'
/// binaries and /proc, serving and probing over TCP, its threads.
const MUST_ALLOW: [&str; 24] = [
    "bpf",
    "perf_event_open",
    "ioctl",
    "mmap",
    "munmap",
    "openat",
    "read",
    "pread64",
    "close",
    "statx",
    "newfstatat",
    "readlink",
    "getdents64",
    "epoll_wait",
    "epoll_ctl",
    "socket",
    "connect",
    "accept4",
    "bind",
    "listen",
    "clone3",
    "futex",
    "prlimit64",
    "rt_sigaction",
];

pub(super) const PROFILE: &str = "deploy/seccomp/routeskew.json";
const LOCALHOST_PROFILE: &str = "profiles/routeskew.json";

/// The profile denies [`MUST_DENY`] with EPERM, allows [`MUST_ALLOW`], and covers the
/// 32-bit ABIs too (else `int 0x80` would reach the denied calls by their i386 numbers).
pub(super) fn check_profile(profile: &Value) -> Result<()> {
    ensure!(
        profile["defaultAction"] == "SCMP_ACT_ALLOW",
        "defaultAction is not SCMP_ACT_ALLOW (the profile is a deny list)"
    );
    let arches = strings(&profile["architectures"]);
    for arch in ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"] {
        ensure!(arches.contains(arch), "architectures lacks {arch}");
    }
    let mut denied = BTreeSet::new();
    for rule in profile["syscalls"].as_array().into_iter().flatten() {
        ensure!(
            rule["action"] == "SCMP_ACT_ERRNO" && rule["errnoRet"] == 1,
            "a rule is not SCMP_ACT_ERRNO with errnoRet 1 (EPERM): {rule}"
        );
        ensure!(rule["args"].is_null(), "rules take no argument filters");
        denied.extend(strings(&rule["names"]));
    }
    let missing: Vec<&str> = MUST_DENY
        .iter()
        .copied()
        .filter(|s| !denied.contains(s))
        .collect();
    ensure!(missing.is_empty(), "the profile allows {missing:?}");
    let needed: Vec<&str> = MUST_ALLOW
        .iter()
        .copied()
        .filter(|s| denied.contains(s))
        .collect();
    ensure!(
        needed.is_empty(),
        "the profile denies {needed:?}, which the agent needs"
    );
    Ok(())
}

/// The `least-privilege` overlay: the NetworkPolicy, the proxy and the profile, with the
/// agent's own container as in the base.
pub(super) fn check_overlay(docs: &[Value], base: &[Value]) -> Result<()> {
    check_network_policy(find(docs, "NetworkPolicy", "routeskew")?)?;
    let ds = find(docs, "DaemonSet", "routeskew")?;
    let pod = &ds["spec"]["template"]["spec"];
    let seccomp = &pod["securityContext"]["seccompProfile"];
    ensure!(
        seccomp["type"] == "Localhost" && seccomp["localhostProfile"] == LOCALHOST_PROFILE,
        "the pod's seccompProfile is not Localhost {LOCALHOST_PROFILE}: {seccomp}"
    );
    let container = |pod: &Value, name: &str| -> Result<Value> {
        pod["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .cloned()
            .with_context(|| format!("no container {name}"))
    };
    let agent = container(pod, "routeskew")?;
    let base_agent = container(
        &find(base, "DaemonSet", "routeskew")?["spec"]["template"]["spec"],
        "routeskew",
    )?;
    ensure!(
        agent["securityContext"] == base_agent["securityContext"],
        "the agent's securityContext differs from the base"
    );
    let listen = agent["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "ROUTESKEW_LISTEN")
        .and_then(|e| e["value"].as_str())
        .context("no ROUTESKEW_LISTEN")?;
    ensure!(
        listen.starts_with("127.0.0.1:"),
        "the agent listens on {listen}, not on loopback only"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &agent[probe]["httpGet"];
        ensure!(
            get["scheme"] == "HTTPS" && get["port"] == 8443,
            "{probe} does not go through the proxy: {get}"
        );
    }
    let proxy = container(pod, "kube-rbac-proxy")?;
    let args = strings(&proxy["args"]);
    let upstream = format!("--upstream=http://{listen}/");
    ensure!(
        args.contains(upstream.as_str()),
        "the proxy's upstream is not {upstream}"
    );
    ensure!(
        args.contains("--ignore-paths=/healthz,/readyz"),
        "the proxy does not let the kubelet's probes through"
    );
    let sc = &proxy["securityContext"];
    ensure!(
        sc["runAsNonRoot"] == true
            && sc["allowPrivilegeEscalation"] == false
            && sc["readOnlyRootFilesystem"] == true
            && strings(&sc["capabilities"]["drop"]).contains("ALL")
            && sc["capabilities"]["add"].is_null(),
        "the proxy is not a non-root container without capabilities: {sc}"
    );
    let role = find(docs, "ClusterRole", "routeskew-auth-proxy")?;
    let grants: BTreeSet<(String, String, String)> = role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| {
            let verbs = strings(&r["verbs"]);
            let groups = strings(&r["apiGroups"]);
            let resources = strings(&r["resources"]);
            let mut out = Vec::new();
            for g in &groups {
                for res in &resources {
                    for v in &verbs {
                        out.push((g.to_string(), res.to_string(), v.to_string()));
                    }
                }
            }
            out
        })
        .collect();
    let want: BTreeSet<(String, String, String)> = [
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    ]
    .iter()
    .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
    .collect();
    ensure!(
        grants == want,
        "routeskew-auth-proxy grants {grants:?}, want {want:?}"
    );
    Ok(())
}

/// Ingress only from a namespace, on the metrics ports; egress only to the API server's
/// ports and to the Traefik pods.
fn check_network_policy(np: &Value) -> Result<()> {
    let spec = &np["spec"];
    let types = strings(&spec["policyTypes"]);
    ensure!(
        types.contains("Ingress") && types.contains("Egress"),
        "policyTypes must hold Ingress and Egress"
    );
    for rule in spec["ingress"].as_array().into_iter().flatten() {
        let from = rule["from"].as_array().cloned().unwrap_or_default();
        ensure!(
            !from.is_empty()
                && from
                    .iter()
                    .all(|f| f["namespaceSelector"]["matchLabels"].is_object()
                        && f["ipBlock"].is_null()),
            "an ingress rule admits more than one namespace: {rule}"
        );
        let ports = rule["ports"].as_array().cloned().unwrap_or_default();
        ensure!(
            !ports.is_empty()
                && ports
                    .iter()
                    .all(|p| p["port"] == "metrics" || p["port"] == "https"),
            "an ingress rule opens more than the metrics ports: {rule}"
        );
    }
    for rule in spec["egress"].as_array().into_iter().flatten() {
        let ports: BTreeSet<i64> = rule["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_i64())
            .collect();
        let to_traefik = rule["to"].as_array().is_some_and(|to| {
            !to.is_empty()
                && to
                    .iter()
                    .all(|t| t["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "traefik")
        });
        ensure!(
            to_traefik || (!ports.is_empty() && ports.is_subset(&BTreeSet::from([443, 6443]))),
            "an egress rule reaches beyond the API server and the Traefik pods: {rule}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_shipped_profile_passes_and_each_deviation_fails() {
        let text = std::fs::read_to_string(super::super::path(PROFILE)).unwrap();
        let good: Value = serde_json::from_str(&text).unwrap();
        check_profile(&good).unwrap();
        let mut allows_ptrace = good.clone();
        let names = allows_ptrace["syscalls"][0]["names"]
            .as_array_mut()
            .unwrap();
        names.retain(|n| n != "ptrace");
        assert!(check_profile(&allows_ptrace).is_err());
        let mut denies_bpf = good.clone();
        denies_bpf["syscalls"][0]["names"]
            .as_array_mut()
            .unwrap()
            .push(json!("bpf"));
        assert!(check_profile(&denies_bpf).is_err());
        let mut no_x86 = good.clone();
        no_x86["architectures"] = json!(["SCMP_ARCH_X86_64"]);
        assert!(check_profile(&no_x86).is_err());
        let mut kills = good;
        kills["syscalls"][0]["action"] = json!("SCMP_ACT_KILL");
        assert!(check_profile(&kills).is_err());
    }

    #[test]
    fn the_network_policy_check_rejects_open_rules() {
        let good = json!({"spec": {
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                         "ports": [{"port": "metrics"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]},
                       {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}}}]}]
        }});
        check_network_policy(&good).unwrap();
        let mut any_egress = good.clone();
        any_egress["spec"]["egress"]
            .as_array_mut()
            .unwrap()
            .push(json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}));
        assert!(check_network_policy(&any_egress).is_err());
        let mut any_ingress = good.clone();
        any_ingress["spec"]["ingress"][0]["from"] = json!([{"ipBlock": {"cidr": "0.0.0.0/0"}}]);
        assert!(check_network_policy(&any_ingress).is_err());
        let mut ingress_only = good;
        ingress_only["spec"]["policyTypes"] = json!(["Ingress"]);
        assert!(check_network_policy(&ingress_only).is_err());
    }
}
