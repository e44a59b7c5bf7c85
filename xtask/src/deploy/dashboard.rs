//! The Grafana dashboard: it queries only metrics the agent exposes (or recorded series)
//! and shows every topic an operator needs.

use std::collections::BTreeSet;

use anyhow::{ensure, Result};
use serde_json::Value;

use super::promql::{promql_names, unknown_names};

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

pub(super) fn check(
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        check(&good, &declared, &BTreeSet::new()).unwrap();
        panels.push(panel("routeskew_no_such_metric"));
        let bad = json!({"uid": "routeskew", "panels": panels});
        assert!(check(&bad, &declared, &BTreeSet::new()).is_err());
        let partial = json!({"uid": "routeskew", "panels": [panel("routeskew_targets")]});
        assert!(check(&partial, &declared, &BTreeSet::new()).is_err());
    }
}
