//! The deploy tier of `cargo xtask test` (also `cargo xtask deploy-check`): renders every
//! kustomization with `kubectl kustomize`, runs `promtool check rules` and `promtool test
//! rules`, and checks what neither tool can: that the PrometheusRule carries exactly the
//! rules file, that the dashboard and the rules only name metrics the agent declares, that
//! the DaemonSet keeps its documented security posture, that RBAC stays read-only, and that
//! every alert has a runbook entry and a unit test.
//!
//! No Kubernetes API server is available, so manifests are not validated against the API
//! schemas; `kubectl kustomize` only proves they render.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::prereqs::workspace_root;

const RULES: &str = "deploy/rules/routeskew.rules.yml";
const RULE_TESTS: &str = "deploy/rules/tests";
const PROMETHEUS_RULE: &str = "deploy/kustomize/components/prometheus-operator/prometheusrule.yaml";
const DASHBOARD: &str = "deploy/kustomize/base/dashboards/routeskew.json";
const BASE: &str = "deploy/kustomize/base";
const OPERATOR_OVERLAY: &str = "deploy/kustomize/overlays/prometheus-operator";
const METRIC_SOURCES: &str = "userspace/src";
const README: &str = "README.md";

/// Capabilities the DaemonSet adds, exactly; README's deployment section documents each.
pub const CAPABILITIES: [&str; 5] = [
    "BPF",
    "PERFMON",
    "SYS_RESOURCE",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];

/// What a dashboard must show (issue 5), as one metric each topic must query.
const DASHBOARD_TOPICS: [(&str, &str); 8] = [
    ("router-miss ratio", "routeskew_http_responses_total"),
    ("WebSocket outcomes", "routeskew_ws_upgrades_total"),
    ("probe success", "routeskew_probe_success"),
    ("router counts", "routeskew_replica_routers"),
    ("lost events", "routeskew_sensor_lost_events_total"),
    ("blind probes", "routeskew_sensor_blind_probes_total"),
    ("hooks attached", "routeskew_sensor_hook_attached"),
    ("targets", "routeskew_targets"),
];

/// Oldest kustomize that knows `components` and the `labels` field.
const MIN_KUSTOMIZE: (u32, u32) = (4, 1);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
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
pub fn check_all() -> Outcome {
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

    run("kubectl kustomize version", kustomize_version());
    let base = render(BASE);
    run(
        &format!("kubectl kustomize {BASE}"),
        base.as_ref().map(|_| ()).map_err(clone_err),
    );
    let overlay = render(OPERATOR_OVERLAY);
    run(
        &format!("kubectl kustomize {OPERATOR_OVERLAY}"),
        overlay.as_ref().map(|_| ()).map_err(clone_err),
    );
    run("promtool check rules", promtool(&["check", "rules", RULES]));
    match rule_test_files() {
        Ok(files) => {
            for file in files {
                let rel = format!("{RULE_TESTS}/{file}");
                run(
                    &format!("promtool test rules {rel}"),
                    promtool(&["test", "rules", &rel]),
                );
            }
        }
        Err(e) => run("promtool test rules", Err(e)),
    }

    let rules = read(RULES).and_then(|text| {
        let value: Value = serde_saphyr::from_str(&text).context("parsing the rules file")?;
        Ok((text, value))
    });
    let declared = declared_metrics(&path(METRIC_SOURCES));
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
            .and_then(|(_, value)| same_groups(value, &rendered(&overlay)?)),
    );
    run(
        "rules name only declared metrics and recorded series",
        rules.as_ref().map_err(clone_err).and_then(|(_, value)| {
            let declared = declared.as_ref().map_err(clone_err)?;
            rules_reference_known_metrics(value, declared)
        }),
    );
    run(
        "alerts: severity, summary, description, runbook anchor in README",
        rules
            .as_ref()
            .map_err(clone_err)
            .and_then(|(_, value)| alerts_documented(value, &read(README)?)),
    );
    run(
        "every alert fires in a promtool unit test",
        rules
            .as_ref()
            .map_err(clone_err)
            .and_then(|(_, value)| alerts_tested(value, &read_rule_tests()?)),
    );
    run(
        "dashboard parses and names only declared metrics",
        (|| {
            let declared = declared.as_ref().map_err(clone_err)?;
            let recorded = match &rules {
                Ok((_, v)) => recorded_names(v),
                Err(_) => BTreeSet::new(),
            };
            let file: Value = serde_json::from_str(&read(DASHBOARD)?)
                .with_context(|| format!("{DASHBOARD} is not JSON"))?;
            check_dashboard(&file, declared, &recorded)?;
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
            check_daemonset(find(&docs, "DaemonSet", "routeskew")?)?;
            capabilities_documented(&read(README)?)
        }),
    );
    run(
        "RBAC: get/list/watch on pods, ingresses, ingressroutes only",
        rendered(&base).and_then(|docs| check_rbac(find(&docs, "ClusterRole", "routeskew")?)),
    );
    run(
        "PodMonitor scrapes the metrics port with honorLabels and a node label",
        rendered(&overlay)
            .and_then(|docs| check_podmonitor(find(&docs, "PodMonitor", "routeskew")?)),
    );
    out
}

/// anyhow errors are not Clone; checks that share an input each report its failure.
fn clone_err(e: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// `cargo xtask gen-rules`: writes the PrometheusRule from the rules file.
pub fn gen_rules() -> Result<()> {
    let text = prometheus_rule(&read(RULES)?);
    fs::write(path(PROMETHEUS_RULE), text).with_context(|| format!("writing {PROMETHEUS_RULE}"))?;
    eprintln!("wrote {PROMETHEUS_RULE} from {RULES}");
    Ok(())
}

/// The PrometheusRule text: a fixed header, then the rules file without its leading
/// comment block, indented under `spec:`. Indenting every line alike keeps block scalars
/// intact, so the groups are the rules file's, byte for byte.
pub fn prometheus_rule(rules: &str) -> String {
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

fn kustomize_version() -> Result<()> {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .context("running kubectl version --client")?;
    kustomize_recent_enough(&String::from_utf8_lossy(&out.stdout))
}

/// Judges `kubectl version --client` output. kubectl before 1.24 does not print its
/// kustomize version: then its own version decides (Debian 12's kubectl 1.20 prints
/// `GitVersion:"v1.20.2"` and embeds kustomize 2.0.3).
fn kustomize_recent_enough(text: &str) -> Result<()> {
    let (what, version, minimum) = match text
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version:"))
    {
        Some(v) => ("kustomize", v.trim().to_owned(), MIN_KUSTOMIZE),
        None => {
            let v = text
                .split(|c: char| c == '"' || c.is_whitespace())
                .find(|w| w.starts_with("v1."))
                .with_context(|| format!("no version in `kubectl version --client`: {text}"))?;
            ("kubectl", v.to_owned(), (1, 22))
        }
    };
    let have = parse_version(&version).with_context(|| format!("{what} version {version:?}"))?;
    ensure!(
        have >= minimum,
        "{what} {version} is too old: the manifests need kustomize >= v{}.{} (kubectl >= 1.22)",
        MIN_KUSTOMIZE.0,
        MIN_KUSTOMIZE.1
    );
    Ok(())
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, minor))
}

/// `kubectl kustomize <dir>`, parsed into one value per document.
fn render(dir: &str) -> Result<Vec<Value>> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(path(dir))
        .output()
        .context("running kubectl kustomize")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {dir} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("kubectl kustomize output is not UTF-8")?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("parsing the output of kubectl kustomize {dir}"))?;
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    ensure!(!docs.is_empty(), "kubectl kustomize {dir} rendered nothing");
    Ok(docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered manifests"))
}

fn promtool(args: &[&str]) -> Result<()> {
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

fn rule_test_files() -> Result<Vec<String>> {
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

fn read_rule_tests() -> Result<Vec<Value>> {
    rule_test_files()?
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

fn recorded_names(rules: &Value) -> BTreeSet<String> {
    rules_of(rules)
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect()
}

fn same_groups(rules: &Value, overlay: &[Value]) -> Result<()> {
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

/// Every metric name an exposition of the agent can contain, from the `register` calls in
/// the agent's sources: counters get `_total`, histograms `_bucket`, `_sum` and `_count`.
pub fn declared_metrics(dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&p)?;
                names.extend(metrics_in_source(&text));
            }
        }
    }
    for must in ["routeskew_http_responses_total", "routeskew_targets"] {
        ensure!(
            names.contains(must),
            "found no declaration of {must} in {}: the declaration parser no longer matches the sources",
            dir.display()
        );
    }
    Ok(names)
}

/// The metric names one source file registers (see [`declared_metrics`]).
pub fn metrics_in_source(src: &str) -> BTreeSet<String> {
    // `let r = reg.sub_registry_with_prefix("pipeline");` → receiver r registers pipeline_*.
    // (position, receiver, prefix): a receiver name may be rebound for another prefix
    // further down, so a register call takes the closest binding above it.
    let mut prefixes: Vec<(usize, String, String)> = Vec::new();
    for (at, _) in src.match_indices("sub_registry_with_prefix(") {
        let stmt_start = src[..at].rfind(';').map_or(0, |i| i + 1);
        let stmt = &src[stmt_start..at];
        let Some(var) = stmt
            .split("let ")
            .nth(1)
            .and_then(|s| s.split(|c: char| !is_ident(c)).next())
        else {
            continue;
        };
        if let Some(prefix) = string_literals(&src[at..]).next() {
            prefixes.push((at, var.to_owned(), format!("{prefix}_")));
        }
    }

    let mut names = BTreeSet::new();
    for (at, _) in src.match_indices(".register(") {
        let receiver: String = src[..at]
            .chars()
            .rev()
            .take_while(|c| is_ident(*c))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let args = &src[at + ".register(".len()..];
        let Some(end) = call_end(args) else { continue };
        let args = &args[..end];
        let Some(name) = string_literals(args).next() else {
            continue;
        };
        // The collector argument: `x.clone()` or `m.x.clone()`; its declared type says
        // whether it is a counter, a gauge or a histogram.
        let Some(var) = args
            .rsplit(".clone()")
            .nth(1)
            .and_then(|s| s.rsplit(|c: char| !is_ident(c)).next())
        else {
            continue;
        };
        let full = format!(
            "routeskew_{}{name}",
            prefixes
                .iter()
                .rev()
                .find(|(pos, var, _)| *pos < at && *var == receiver)
                .map_or("", |(_, _, prefix)| prefix.as_str())
        );
        match declared_kind(src, var) {
            Some(Kind::Counter) => {
                names.insert(format!("{full}_total"));
            }
            Some(Kind::Histogram) => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{full}{suffix}"));
                }
            }
            Some(Kind::Gauge) => {
                names.insert(full);
            }
            None => {}
        }
    }
    names
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The kind of `var` from its declaration: `var: Family<L, Counter>,` in a struct or
/// `let var = Family::<L, Gauge>::default();`.
fn declared_kind(src: &str, var: &str) -> Option<Kind> {
    let decls = [
        format!("{var}: "),
        format!("let {var} = "),
        format!("let {var}: "),
    ];
    for decl in &decls {
        for (at, _) in src.match_indices(decl.as_str()) {
            let before = src[..at].chars().next_back();
            if before.is_some_and(is_ident) {
                continue;
            }
            let rest = &src[at + decl.len()..];
            let ty = &rest[..rest.find([';', '\n']).unwrap_or(rest.len())];
            if ty.contains("Histogram") {
                return Some(Kind::Histogram);
            }
            if ty.contains("Counter") {
                return Some(Kind::Counter);
            }
            if ty.contains("Gauge") {
                return Some(Kind::Gauge);
            }
        }
    }
    None
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Length of the argument list up to the `)` closing an already opened call.
fn call_end(args: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for (i, c) in args.char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' => depth += 1,
            ')' if depth == 0 => return Some(i),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The plain `"..."` string literals of a piece of source, in order.
fn string_literals(src: &str) -> impl Iterator<Item = &str> {
    let mut rest = src;
    std::iter::from_fn(move || {
        let start = rest.find('"')? + 1;
        let len = rest[start..].find('"')?;
        let lit = &rest[start..start + len];
        rest = &rest[start + len + 1..];
        Some(lit)
    })
}

/// The metric and recorded-series names a PromQL expression selects: identifiers that
/// start with `routeskew_` or hold a colon, outside string literals.
pub fn promql_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            for (_, d) in chars.by_ref() {
                if d == c {
                    break;
                }
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if is_ident(d) || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("routeskew_") || word.contains(':') {
                names.insert(word.to_owned());
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (5m, 1e3): not a name.
            while chars.peek().is_some_and(|&(_, d)| is_ident(d) || d == '.') {
                chars.next();
            }
        }
    }
    names
}

fn unknown_names(
    expr: &str,
    declared: &BTreeSet<String>,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    promql_names(expr)
        .into_iter()
        .filter(|n| !declared.contains(n) && !recorded.contains(n))
        .collect()
}

fn rules_reference_known_metrics(rules: &Value, declared: &BTreeSet<String>) -> Result<()> {
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
        "names neither declared in {METRIC_SOURCES} nor recorded: {}",
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

fn alerts_documented(rules: &Value, readme: &str) -> Result<()> {
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
fn alerts_tested(rules: &Value, tests: &[Value]) -> Result<()> {
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

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    // Template variables that query Prometheus.
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| exprs(i, out)),
        _ => {}
    }
}

pub fn check_dashboard(
    dashboard: &Value,
    declared: &BTreeSet<String>,
    recorded: &BTreeSet<String>,
) -> Result<()> {
    ensure!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "the dashboard has no panels"
    );
    ensure!(
        dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "the dashboard has no uid"
    );
    let mut all = Vec::new();
    exprs(dashboard, &mut all);
    ensure!(!all.is_empty(), "the dashboard has no queries");
    let mut unknown = BTreeSet::new();
    let mut used = BTreeSet::new();
    for e in &all {
        unknown.extend(unknown_names(e, declared, recorded));
        used.extend(promql_names(e));
    }
    ensure!(
        unknown.is_empty(),
        "queries name metrics the agent does not declare: {}",
        unknown.into_iter().collect::<Vec<_>>().join(", ")
    );
    let missing: Vec<&str> = DASHBOARD_TOPICS
        .iter()
        .filter(|(_, metric)| !used.contains(*metric))
        .map(|(topic, metric)| if topic.is_empty() { *metric } else { *topic })
        .collect();
    ensure!(
        missing.is_empty(),
        "the dashboard shows no {}",
        missing.join(", ")
    );
    Ok(())
}

fn strings(v: &Value) -> BTreeSet<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

pub fn check_daemonset(ds: &Value) -> Result<()> {
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
fn capabilities_documented(readme: &str) -> Result<()> {
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

pub fn check_rbac(role: &Value) -> Result<()> {
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

pub fn check_podmonitor(pm: &Value) -> Result<()> {
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
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const SOURCE: &str = r#"
pub struct PipelineMetrics {
    pub events: Family<KindLabels, Counter>,
    pub connections: Gauge,
}
fn register(reg: &mut Registry) {
    let r = reg.sub_registry_with_prefix("pipeline");
    r.register("events", "Events (by kind)", m.events.clone());
    r.register(
        "connections",
        "Connections \"tracked\"",
        m.connections.clone(),
    );
    // The same receiver name, rebound for another prefix.
    let r = reg.sub_registry_with_prefix("discovery");
    r.register("api_up", "API reachable", m.api_up.clone());
}
pub struct Metrics {
    api_up: Gauge,
    http_responses: Family<HttpLabels, Counter>,
    probe_duration: HistogramFamily<ProbeCheckLabels>,
}
fn new() {
    let mut registry = Registry::with_prefix("routeskew");
    let targets = Family::<StateLabels, Gauge>::default();
    registry.register("http_responses", "Responses", http_responses.clone());
    registry.register("probe_duration_seconds", "Duration", probe_duration.clone());
    registry.register("targets", "Watched replicas by state", targets.clone());
}
"#;

    #[test]
    fn finds_declared_metrics_with_their_suffixes() {
        let names = metrics_in_source(SOURCE);
        let want: BTreeSet<String> = [
            "routeskew_pipeline_events_total",
            "routeskew_pipeline_connections",
            "routeskew_discovery_api_up",
            "routeskew_http_responses_total",
            "routeskew_probe_duration_seconds_bucket",
            "routeskew_probe_duration_seconds_sum",
            "routeskew_probe_duration_seconds_count",
            "routeskew_targets",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn promql_names_skip_strings_numbers_and_functions() {
        let names = promql_names(
            r#"sum by (replica) (rate(routeskew_http_responses_total{class="router_miss",host="routeskew_x:y"}[5m])) / ns:routeskew_a:rate5m > 1e3"#,
        );
        let want: BTreeSet<String> = ["routeskew_http_responses_total", "ns:routeskew_a:rate5m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names, want);
    }

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

    #[test]
    fn dashboard_check_rejects_unknown_metrics_and_missing_topics() {
        let declared: BTreeSet<String> = DASHBOARD_TOPICS
            .iter()
            .map(|(_, m)| m.to_string())
            .collect();
        let panel = |expr: &str| json!({"targets": [{"expr": expr}]});
        let mut panels: Vec<Value> = DASHBOARD_TOPICS
            .iter()
            .map(|(_, m)| panel(&format!("sum(rate({m}[5m]))")))
            .collect();
        let good = json!({"uid": "routeskew", "panels": panels.clone()});
        check_dashboard(&good, &declared, &BTreeSet::new()).unwrap();
        panels.push(panel("routeskew_no_such_metric"));
        let bad = json!({"uid": "routeskew", "panels": panels});
        assert!(check_dashboard(&bad, &declared, &BTreeSet::new()).is_err());
        let partial = json!({"uid": "routeskew", "panels": [panel("routeskew_targets")]});
        assert!(check_dashboard(&partial, &declared, &BTreeSet::new()).is_err());
    }

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
    fn kustomize_versions() {
        assert_eq!(parse_version("v5.5.0"), Some((5, 5)));
        assert_eq!(parse_version("v4.1.3-dirty"), Some((4, 1)));
        assert!(parse_version("v2.0.3").unwrap() < MIN_KUSTOMIZE);
        kustomize_recent_enough("Client Version: v1.32.4\nKustomize Version: v5.5.0\n").unwrap();
        assert!(
            kustomize_recent_enough("Client Version: v1.23.0\nKustomize Version: v4.0.5\n")
                .is_err()
        );
        let debian12 = r#"Client Version: version.Info{Major:"1", Minor:"20", GitVersion:"v1.20.2", GitCommit:"x"}"#;
        assert!(kustomize_recent_enough(debian12).is_err());
        let kubectl_1_22 =
            r#"Client Version: version.Info{Major:"1", Minor:"22", GitVersion:"v1.22.0"}"#;
        kustomize_recent_enough(kubectl_1_22).unwrap();
    }
}
