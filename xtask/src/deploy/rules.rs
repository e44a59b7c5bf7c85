//! The alerting and recording rules: promtool, the rules' unit tests, and what promtool
//! cannot check (metric names, runbook anchors, an alert that fires in a test).

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::promql::unknown_names;
use super::{find, path, read, workspace_root, RULES, RULE_TESTS};

pub(super) fn promtool(args: &[&str]) -> Result<()> {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .context("running promtool")?;
    if !out.status.success() {
        bail!(
            "promtool {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub(super) fn test_files() -> Result<Vec<String>> {
    let mut files: Vec<String> = fs::read_dir(path(RULE_TESTS))
        .with_context(|| format!("listing {RULE_TESTS}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml") || n.ends_with(".yaml"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no unit tests in {RULE_TESTS}");
    Ok(files)
}

pub(super) fn read_tests() -> Result<Vec<Value>> {
    test_files()?
        .iter()
        .map(|f| {
            let rel = format!("{RULE_TESTS}/{f}");
            serde_saphyr::from_str(&read(&rel)?).with_context(|| format!("parsing {rel}"))
        })
        .collect()
}

fn rules_of(rules: &Value) -> impl Iterator<Item = &Value> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
}

pub(super) fn recorded_names(rules: &Value) -> BTreeSet<String> {
    rules_of(rules)
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect()
}

pub(super) fn same_groups(rules: &Value, overlay: &[Value]) -> Result<()> {
    let rule = find(overlay, "PrometheusRule", "routeskew")?;
    ensure!(
        rules["groups"].is_array() && rule["spec"]["groups"] == rules["groups"],
        "spec.groups of the rendered PrometheusRule differ from the groups of {RULES}"
    );
    ensure!(
        rule["metadata"]["namespace"] == "routeskew",
        "the PrometheusRule is not in namespace routeskew"
    );
    Ok(())
}

pub(super) fn reference_known_metrics(rules: &Value, declared: &BTreeSet<String>) -> Result<()> {
    let recorded = recorded_names(rules);
    let mut problems = Vec::new();
    for rule in rules_of(rules) {
        let what = rule["alert"]
            .as_str()
            .or(rule["record"].as_str())
            .unwrap_or("?");
        let expr = rule["expr"].as_str().unwrap_or_default();
        for n in unknown_names(expr, declared, &recorded) {
            problems.push(format!("{what}: {n}"));
        }
    }
    ensure!(
        problems.is_empty(),
        "names neither in the agent's metric list (`routeskew metrics-list`) nor recorded: {}",
        problems.join(", ")
    );
    Ok(())
}

/// GitHub's anchor for a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

pub(super) fn alerts_documented(rules: &Value, readme: &str) -> Result<()> {
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect();
    let mut problems = Vec::new();
    let mut alerts = 0;
    for rule in rules_of(rules) {
        let Some(alert) = rule["alert"].as_str() else {
            continue;
        };
        alerts += 1;
        if !matches!(
            rule["labels"]["severity"].as_str(),
            Some("critical" | "warning" | "info")
        ) {
            problems.push(format!(
                "{alert}: severity must be critical, warning or info"
            ));
        }
        for key in ["summary", "description"] {
            if rule["annotations"][key].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{alert}: no {key}"));
            }
        }
        let want = format!("README.md#{}", slug(alert));
        match rule["annotations"]["runbook_url"].as_str() {
            Some(url) if url == want => {}
            other => problems.push(format!("{alert}: runbook_url is {other:?}, want {want:?}")),
        }
        if !anchors.contains(&slug(alert)) {
            problems.push(format!("{alert}: README.md has no heading for it"));
        }
    }
    ensure!(alerts > 0, "no alerts in {RULES}");
    ensure!(problems.is_empty(), "{}", problems.join("; "));
    Ok(())
}

/// Every alert is expected to fire in at least one `alert_rule_test`.
pub(super) fn alerts_tested(rules: &Value, tests: &[Value]) -> Result<()> {
    let mut firing = BTreeSet::new();
    for file in tests {
        for group in file["tests"].as_array().into_iter().flatten() {
            for t in group["alert_rule_test"].as_array().into_iter().flatten() {
                if t["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                    if let Some(name) = t["alertname"].as_str() {
                        firing.insert(name.to_owned());
                    }
                }
            }
        }
    }
    let untested: Vec<&str> = rules_of(rules)
        .filter_map(|r| r["alert"].as_str())
        .filter(|a| !firing.contains(*a))
        .collect();
    ensure!(
        untested.is_empty(),
        "alerts no unit test shows firing: {}",
        untested.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn alerts_need_runbook_anchors_and_firing_tests() {
        let rules = json!({"groups": [{"name": "g", "rules": [{
            "alert": "TraefikReplicaRouterMiss", "expr": "x",
            "labels": {"severity": "critical"},
            "annotations": {"summary": "s", "description": "d", "runbook_url": "README.md#traefikreplicaroutermiss"}
        }]}]});
        alerts_documented(&rules, "# r\n#### TraefikReplicaRouterMiss\n").unwrap();
        assert!(alerts_documented(&rules, "# r\n#### SomethingElse\n").is_err());
        let fired = json!({"tests": [{"alert_rule_test": [{"alertname": "TraefikReplicaRouterMiss", "exp_alerts": [{"exp_labels": {}}]}]}]});
        let silent = json!({"tests": [{"alert_rule_test": [{"alertname": "TraefikReplicaRouterMiss", "exp_alerts": []}]}]});
        alerts_tested(&rules, &[fired]).unwrap();
        assert!(alerts_tested(&rules, &[silent]).is_err());
    }

    #[test]
    fn rules_may_name_listed_metrics_and_recorded_series_only() {
        let rules = json!({"groups": [{"name": "g", "rules": [
            {"record": "replica:routeskew_misses:rate5m", "expr": "sum by (replica) (rate(routeskew_http_responses_total[5m]))"},
            {"alert": "A", "expr": "replica:routeskew_misses:rate5m > 0 and routeskew_targets > 0"}
        ]}]});
        let listed: BTreeSet<String> = ["routeskew_http_responses_total", "routeskew_targets"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        reference_known_metrics(&rules, &listed).unwrap();
        let mut fewer = listed.clone();
        fewer.remove("routeskew_targets");
        let err = reference_known_metrics(&rules, &fewer).unwrap_err();
        assert!(format!("{err}").contains("A: routeskew_targets"), "{err}");
    }
}
