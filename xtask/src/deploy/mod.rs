//! The deploy tier of `cargo xtask test` (also `cargo xtask deploy-check`): renders every
//! kustomization with `kubectl kustomize`, runs `promtool check rules` and `promtool test
//! rules`, and checks what neither tool can: that the PrometheusRule carries exactly the
//! rules file, that the dashboard and the rules only name metrics the agent exposes (the
//! list `routeskew metrics-list` prints), that the DaemonSet keeps its documented security
//! posture, that RBAC stays read-only, that the least-privilege overlay and seccomp
//! profile keep theirs, and that every alert has a runbook entry and a unit test.
//!
//! No Kubernetes API server is available, so manifests are not validated against the API
//! schemas; `kubectl kustomize` only proves they render.

mod dashboard;
mod hardened;
mod kustomize;
mod manifests;
mod metric_names;
mod promql;
mod rules;

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::prereqs::workspace_root;

const RULES: &str = "deploy/rules/routeskew.rules.yml";
const RULE_TESTS: &str = "deploy/rules/tests";
const PROMETHEUS_RULE: &str = "deploy/kustomize/components/prometheus-operator/prometheusrule.yaml";
const DASHBOARD: &str = "deploy/kustomize/base/dashboards/routeskew.json";
const BASE: &str = "deploy/kustomize/base";
const OPERATOR_OVERLAY: &str = "deploy/kustomize/overlays/prometheus-operator";
const LEAST_PRIVILEGE_OVERLAY: &str = "deploy/kustomize/overlays/least-privilege";
const README: &str = "README.md";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub passed: u64,
    pub failed: u64,
}

fn path(rel: &str) -> PathBuf {
    workspace_root().join(rel)
}

fn read(rel: &str) -> Result<String> {
    fs::read_to_string(path(rel)).with_context(|| format!("reading {rel}"))
}

/// Runs every check, printing one line per check; failures do not stop the others.
pub(crate) fn check_all() -> Outcome {
    let mut out = Outcome::default();
    let mut run = |name: &str, result: Result<()>| match result {
        Ok(()) => {
            out.passed += 1;
            println!("deploy check {name} ... ok");
        }
        Err(e) => {
            out.failed += 1;
            println!("deploy check {name} ... FAILED\n    {e:#}");
        }
    };

    run("kubectl kustomize version", kustomize::version());
    let base = kustomize::render(BASE);
    run(
        &format!("kubectl kustomize {BASE}"),
        base.as_ref().map(|_| ()).map_err(clone_err),
    );
    let overlay = kustomize::render(OPERATOR_OVERLAY);
    run(
        &format!("kubectl kustomize {OPERATOR_OVERLAY}"),
        overlay.as_ref().map(|_| ()).map_err(clone_err),
    );
    let least = kustomize::render(LEAST_PRIVILEGE_OVERLAY);
    run(
        &format!("kubectl kustomize {LEAST_PRIVILEGE_OVERLAY}"),
        least.as_ref().map(|_| ()).map_err(clone_err),
    );
    run(
        "promtool check rules",
        rules::promtool(&["check", "rules", RULES]),
    );
    match rules::test_files() {
        Ok(files) => {
            for file in files {
                let rel = format!("{RULE_TESTS}/{file}");
                run(
                    &format!("promtool test rules {rel}"),
                    rules::promtool(&["test", "rules", &rel]),
                );
            }
        }
        Err(e) => run("promtool test rules", Err(e)),
    }

    let rules = read(RULES).and_then(|text| {
        let value: Value = serde_saphyr::from_str(&text).context("parsing the rules file")?;
        Ok((text, value))
    });
    let declared = metric_names::from_agent();
    let rendered = |docs: &Result<Vec<Value>>| -> Result<Vec<Value>> {
        match docs {
            Ok(d) => Ok(d.clone()),
            Err(e) => Err(clone_err(e)),
        }
    };

    run(
        "PrometheusRule is generated from the rules file",
        rules.as_ref().map_err(clone_err).and_then(|(text, _)| {
            let want = prometheus_rule(text);
            let have = read(PROMETHEUS_RULE)?;
            ensure!(
                have == want,
                "{PROMETHEUS_RULE} differs from what {RULES} generates: run `cargo xtask gen-rules`"
            );
            Ok(())
        }),
    );
    run(
        "rendered PrometheusRule groups equal the rules file's",
        rules
            .as_ref()
            .map_err(clone_err)
            .and_then(|(_, value)| rules::same_groups(value, &rendered(&overlay)?)),
    );
    run(
        "rules name only declared metrics and recorded series",
        rules.as_ref().map_err(clone_err).and_then(|(_, value)| {
            let declared = declared.as_ref().map_err(clone_err)?;
            rules::reference_known_metrics(value, declared)
        }),
    );
    run(
        "alerts: severity, summary, description, runbook anchor in README",
        rules
            .as_ref()
            .map_err(clone_err)
            .and_then(|(_, value)| rules::alerts_documented(value, &read(README)?)),
    );
    run(
        "every alert fires in a promtool unit test",
        rules
            .as_ref()
            .map_err(clone_err)
            .and_then(|(_, value)| rules::alerts_tested(value, &rules::read_tests()?)),
    );
    run(
        "dashboard parses and names only declared metrics",
        (|| {
            let declared = declared.as_ref().map_err(clone_err)?;
            let recorded = match &rules {
                Ok((_, v)) => rules::recorded_names(v),
                Err(_) => BTreeSet::new(),
            };
            let file: Value = serde_json::from_str(&read(DASHBOARD)?)
                .with_context(|| format!("{DASHBOARD} is not JSON"))?;
            dashboard::check(&file, declared, &recorded)?;
            // The copy Grafana gets is the one in the rendered ConfigMap.
            let docs = rendered(&base)?;
            let cm = find(&docs, "ConfigMap", "routeskew-dashboard")?;
            let text = cm["data"]["routeskew.json"]
                .as_str()
                .context("ConfigMap routeskew-dashboard has no data.routeskew.json")?;
            let shipped: Value =
                serde_json::from_str(text).context("the rendered dashboard is not JSON")?;
            ensure!(
                shipped == file,
                "the rendered dashboard differs from {DASHBOARD}"
            );
            Ok(())
        })(),
    );
    run(
        "DaemonSet: not privileged, documented capabilities, probes, host mounts",
        rendered(&base).and_then(|docs| {
            manifests::check_daemonset(find(&docs, "DaemonSet", "routeskew")?)?;
            manifests::capabilities_documented(&read(README)?)
        }),
    );
    run(
        "RBAC: get/list/watch on pods, ingresses, ingressroutes only",
        rendered(&base)
            .and_then(|docs| manifests::check_rbac(find(&docs, "ClusterRole", "routeskew")?)),
    );
    run(
        "PodMonitor scrapes the metrics port with honorLabels and a node label",
        rendered(&overlay)
            .and_then(|docs| manifests::check_podmonitor(find(&docs, "PodMonitor", "routeskew")?)),
    );
    run(
        "least privilege: NetworkPolicy, /metrics behind kube-rbac-proxy, Localhost seccomp",
        (|| hardened::check_overlay(&rendered(&least)?, &rendered(&base)?))(),
    );
    run(
        "seccomp profile denies ptrace and friends, allows what the agent calls",
        read(hardened::PROFILE).and_then(|text| {
            let profile: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", hardened::PROFILE))?;
            hardened::check_profile(&profile)
        }),
    );
    out
}

/// anyhow errors are not Clone; checks that share an input each report its failure.
fn clone_err(e: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// `cargo xtask gen-rules`: writes the PrometheusRule from the rules file.
pub(crate) fn gen_rules() -> Result<()> {
    let text = prometheus_rule(&read(RULES)?);
    fs::write(path(PROMETHEUS_RULE), text).with_context(|| format!("writing {PROMETHEUS_RULE}"))?;
    eprintln!("wrote {PROMETHEUS_RULE} from {RULES}");
    Ok(())
}

/// The PrometheusRule text: a fixed header, then the rules file without its leading
/// comment block, indented under `spec:`. Indenting every line alike keeps block scalars
/// intact, so the groups are the rules file's, byte for byte.
pub(crate) fn prometheus_rule(rules: &str) -> String {
    let mut out = String::from(
        "# Generated by `cargo xtask gen-rules` from deploy/rules/routeskew.rules.yml: edit that\n\
         # file and regenerate; `cargo xtask test` fails when the two differ.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: routeskew\n  namespace: routeskew\n  labels:\n    app.kubernetes.io/name: routeskew\n\
         spec:\n",
    );
    let body = rules
        .lines()
        .skip_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    for line in body {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered manifests"))
}

/// The strings of a YAML/JSON list (nothing for anything else).
fn strings(v: &Value) -> BTreeSet<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_rule_embeds_the_rules_verbatim() {
        let rules = "# header\n# more\ngroups:\n  - name: g\n    rules:\n      - record: a:b\n        expr: |\n          sum(x)\n\n          or y\n";
        let text = prometheus_rule(rules);
        assert!(text.contains("spec:\n  groups:\n    - name: g\n"));
        assert!(!text.contains("# header"));
        let pr: Value = serde_saphyr::from_str(&text).unwrap();
        let orig: Value = serde_saphyr::from_str(rules).unwrap();
        assert_eq!(pr["spec"]["groups"], orig["groups"]);
        assert_eq!(pr["kind"], "PrometheusRule");
    }
}
