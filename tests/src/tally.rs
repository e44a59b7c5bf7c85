//! Expected-versus-reported counts for the end-to-end tests: per-replica tables of the
//! agent's passive counters, the label the agent gives a host and the class it gives a
//! status, and a readable diff of two tables. The traffic plans the expected tables come
//! from are in [`crate::plans`].

use std::collections::{BTreeMap, BTreeSet};

use crate::metrics::Metrics;

/// Counts keyed by (replica, second label, third label).
pub type Table = BTreeMap<(String, String, String), u64>;

/// Adds `n` (if any) under the key.
pub fn add(t: &mut Table, a: &str, b: &str, c: &str, n: u64) {
    if n > 0 {
        *t.entry((a.into(), b.into(), c.into())).or_default() += n;
    }
}

/// Non-zero samples of `name` for the given replicas, keyed by (replica, `label2`,
/// `label3`), restricted to passive traffic where the metric has a source.
pub fn table(m: &Metrics, name: &str, replicas: &[String], label2: &str, label3: &str) -> Table {
    let mut t = Table::new();
    for s in m.select(name, &[]) {
        let Some(replica) = s.labels.get("replica") else {
            continue;
        };
        if !replicas.contains(replica) || s.labels.get("source").is_some_and(|v| v != "passive") {
            continue;
        }
        let get = |k: &str| {
            s.labels
                .get(k)
                .cloned()
                .unwrap_or_else(|| format!("<no {k}>"))
        };
        add(&mut t, replica, &get(label2), &get(label3), s.value as u64);
    }
    t
}

/// The `host` label the agent gives `host` when it knows `known_hosts`.
pub fn host_label(known_hosts: &[String], host: &str) -> String {
    if known_hosts.iter().any(|h| h == host) {
        host.to_string()
    } else {
        "other".to_string()
    }
}

/// The `class` label of a response with this status.
pub fn class_of_status(status: u16, router_miss: bool) -> &'static str {
    match status {
        404 if router_miss => "router_miss",
        421 => "misdirected",
        100..=399 => "ok",
        400..=499 => "client_error",
        _ => "server_error",
    }
}

/// Every key of either table, `!!` where they differ.
pub fn diff(want: &Table, got: &Table) -> String {
    let mut out = String::new();
    let keys: BTreeSet<_> = want.keys().chain(got.keys()).collect();
    for k in keys {
        let (w, g) = (
            want.get(k).copied().unwrap_or(0),
            got.get(k).copied().unwrap_or(0),
        );
        let mark = if w == g { "  " } else { "!!" };
        out.push_str(&format!(
            "{mark} {:<10} {:<18} {:<13} want {w:>3} got {g:>3}\n",
            k.0, k.1, k.2
        ));
    }
    out
}
