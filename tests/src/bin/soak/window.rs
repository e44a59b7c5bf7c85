//! One quiescent comparison: traffic pauses (the visits in flight end, no new one
//! starts), the agent's counters are scraped until they match the ground truth or the
//! settle timeout passes, the agent process is sampled, and traffic resumes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use routeskew_testbed::tally::{table, Table};
use routeskew_testbed::{Agent, Metrics};

use crate::report::Row;
use crate::sample::{self, ProcSample};
use crate::shared::Shared;
use crate::truth::{compare, explain, Observed};

/// A family with one label beside the replica, keyed (replica, label, `-`).
fn by_label(m: &Metrics, family: &str, names: &[String], label: &str) -> Table {
    table(m, family, names, label, "<none>")
        .into_iter()
        .map(|((r, l, _), v)| ((r, l, "-".to_string()), v))
        .collect()
}

pub(crate) fn observed(m: &Metrics, names: &[String]) -> Observed {
    Observed {
        http: table(m, "routeskew_http_responses_total", names, "host", "class"),
        ws: table(m, "routeskew_ws_upgrades_total", names, "host", "outcome"),
        early: by_label(m, "routeskew_ws_early_closes_total", names, "host"),
        upstream: by_label(
            m,
            "routeskew_upstream_connect_failures_total",
            names,
            "reason",
        ),
    }
}

/// State carried from one window to the next.
pub(crate) struct Windows {
    pub(crate) started: Instant,
    pub(crate) names: Vec<String>,
    pub(crate) settle_timeout: Duration,
    prev: ProcSample,
    prev_at: Instant,
    ticks_per_second: u64,
    /// The drop counters at the last comparison.
    pub(crate) drops: BTreeMap<String, f64>,
}

impl Windows {
    pub(crate) fn new(agent: &Agent, names: Vec<String>, settle_timeout: Duration) -> Result<Self> {
        Ok(Windows {
            started: Instant::now(),
            names,
            settle_timeout,
            prev: sample::read(agent.pid())?,
            prev_at: Instant::now(),
            ticks_per_second: sample::clock_ticks_per_second(),
            drops: BTreeMap::new(),
        })
    }

    /// Pauses traffic, compares, samples; prints the progress line (and the mismatches
    /// with both tables when there are any).
    pub(crate) async fn compare(
        &mut self,
        agent: &Agent,
        s: &Shared,
        restarts: u32,
    ) -> Result<Row> {
        let _closed = s.gate.write().await;
        let paused = Instant::now();
        let (m, got, mismatches) = loop {
            let m = agent.scrape().await?;
            let got = observed(&m, &self.names);
            let truth = s.truth().clone();
            let mismatches = compare(&truth, &got);
            if mismatches.is_empty() || paused.elapsed() > self.settle_timeout {
                break (m, got, mismatches);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let settle_s = paused.elapsed().as_secs_f64();
        let now = Instant::now();
        let proc = sample::read(agent.pid())?;
        let cpu_pct = sample::cpu_percent(
            proc.cpu_ticks.saturating_sub(self.prev.cpu_ticks),
            self.ticks_per_second,
            now.duration_since(self.prev_at).as_secs_f64(),
        );
        self.prev = proc;
        self.prev_at = now;
        self.drops = sample::drop_counters(&m);
        let truth = s.truth().clone();
        let row = Row {
            minute: paused.duration_since(self.started).as_secs_f64() / 60.0,
            rss_mib: proc.rss_kib as f64 / 1024.0,
            hwm_mib: proc.hwm_kib as f64 / 1024.0,
            cpu_pct,
            sent: truth.http.values().sum(),
            counted: got.responses(),
            mismatches: mismatches.len(),
            lost: sample::lost_events(&m),
            restarts,
            hostile: truth.counts.hostile,
            refused_down: truth.counts.refused_down,
            settle_s,
        };
        println!("{}", crate::report::progress(&row));
        let moved: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !moved.is_empty() {
            println!("  drop counters: {}", moved.join(", "));
        }
        if !mismatches.is_empty() {
            println!("{}", explain(&truth, &got, &mismatches));
        }
        Ok(row)
    }
}
