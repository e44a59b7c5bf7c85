//! Helpers for reading Prometheus's answers: result elements as count tables, the same
//! table from the agent's own `/metrics`, and a verdict that collects every failed check.

use std::collections::BTreeMap;

use routeskew_testbed::prometheus::Sample;
use routeskew_testbed::tally::{add, Table};
use routeskew_testbed::Metrics;

/// A `sum by (k0, k1, k2)` result as a table (zero elements left out).
pub(crate) fn table(samples: &[Sample], keys: [&str; 3]) -> Table {
    let mut t = Table::new();
    for s in samples {
        add(
            &mut t,
            s.label(keys[0]),
            s.label(keys[1]),
            s.label(keys[2]),
            s.value as u64,
        );
    }
    t
}

/// The same table from the agent's own `/metrics` (passive traffic of our replicas), to
/// tell an agent fault from an ingestion fault when Prometheus disagrees.
pub(crate) fn agent_table(m: &Metrics, name: &str, replicas: &[String], keys: [&str; 3]) -> Table {
    let mut t = Table::new();
    for s in m.select(name, &[("source", "passive")]) {
        let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        if replicas.contains(&get(keys[0])) {
            add(
                &mut t,
                &get(keys[0]),
                &get(keys[1]),
                &get(keys[2]),
                s.value as u64,
            );
        }
    }
    t
}

pub(crate) fn show(samples: &[Sample]) -> String {
    if samples.is_empty() {
        return "(empty)".into();
    }
    samples
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result elements keyed by one label.
pub(crate) fn by(samples: &[Sample], label: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .map(|s| (s.label(label).to_string(), s.value))
        .collect()
}

/// The count under one key of a table (0 when absent).
pub(crate) fn count(t: &Table, replica: &str, host: &str, class: &str) -> u64 {
    t.get(&(replica.into(), host.into(), class.into()))
        .copied()
        .unwrap_or(0)
}

/// Collects every failed check, so one run reports all of Prometheus's wrong answers
/// rather than only the first.
#[derive(Default)]
pub(crate) struct Verdict {
    pub(crate) failures: Vec<String>,
    pub(crate) passed: Vec<String>,
}

impl Verdict {
    pub(crate) fn check(&mut self, ok: bool, what: &str, detail: impl FnOnce() -> String) {
        if ok {
            self.passed.push(what.to_string());
        } else {
            self.failures.push(format!("{what}: {}", detail()));
        }
    }
}
