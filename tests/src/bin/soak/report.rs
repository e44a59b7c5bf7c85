//! The soak's rows (one per quiescent comparison), the final markdown table and the
//! verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One comparison window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// Minutes since traffic started, at the comparison.
    pub(crate) minute: f64,
    pub(crate) rss_mib: f64,
    pub(crate) hwm_mib: f64,
    /// Agent CPU over the window, % of one CPU.
    pub(crate) cpu_pct: f64,
    /// Answered requests the agent must count so far: the mixed traffic's and the hostile
    /// ones Traefik's handlers answered (the ground truth's responses).
    pub(crate) sent: u64,
    /// Responses the agent counted so far (its passive `routeskew_http_responses_total`).
    pub(crate) counted: u64,
    /// Keys outside the ground truth's range at this comparison.
    pub(crate) mismatches: usize,
    pub(crate) lost: u64,
    pub(crate) restarts: u32,
    pub(crate) hostile: u64,
    /// Connections refused by replicas while they were down, so far.
    pub(crate) refused_down: u64,
    /// How long the agent took to match the ground truth after traffic paused.
    pub(crate) settle_s: f64,
}

const HEADER: [&str; 12] = [
    "minute",
    "RSS MiB",
    "HWM MiB",
    "CPU %",
    "requests sent",
    "agent-counted",
    "mismatches",
    "lost events",
    "restarts",
    "hostile sent",
    "refused while down",
    "settle s",
];

fn cells(r: &Row) -> [String; 12] {
    [
        format!("{:.1}", r.minute),
        format!("{:.1}", r.rss_mib),
        format!("{:.1}", r.hwm_mib),
        format!("{:.1}", r.cpu_pct),
        r.sent.to_string(),
        r.counted.to_string(),
        r.mismatches.to_string(),
        r.lost.to_string(),
        r.restarts.to_string(),
        r.hostile.to_string(),
        r.refused_down.to_string(),
        format!("{:.2}", r.settle_s),
    ]
}

/// The progress line printed after each comparison.
pub(crate) fn progress(r: &Row) -> String {
    HEADER
        .iter()
        .zip(cells(r))
        .map(|(h, c)| format!("{h} {c}"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The windows as a markdown table.
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", HEADER.join(" | "));
    let align: Vec<&str> = HEADER.iter().map(|_| "---:").collect();
    let _ = writeln!(out, "| {} |", align.join(" | "));
    for r in rows {
        let _ = writeln!(out, "| {} |", cells(r).join(" | "));
    }
    out
}

/// What the verdict is judged on, beside the rows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub(crate) unexpected: u64,
    pub(crate) client_errors: u64,
    pub(crate) accepted_down: u64,
    pub(crate) agent_died: bool,
    /// Final values of every drop-like counter.
    pub(crate) drops: BTreeMap<String, f64>,
}

/// `(passed, verdict line)`: failed when any comparison mismatched, any event was lost,
/// the agent died, or the load generator cannot vouch for its ground truth.
pub(crate) fn verdict(rows: &[Row], o: &Outcome) -> (bool, String) {
    let mut problems = Vec::new();
    let bad_windows = rows.iter().filter(|r| r.mismatches > 0).count();
    if bad_windows > 0 {
        problems.push(format!(
            "{bad_windows} of {} comparisons mismatched",
            rows.len()
        ));
    }
    let lost = rows.last().map(|r| r.lost).unwrap_or(0);
    if lost > 0 {
        problems.push(format!("{lost} events lost"));
    }
    if o.agent_died {
        problems.push("the agent died".to_string());
    }
    if o.unexpected > 0 {
        problems.push(format!(
            "{} answers were not what the test bed's configuration says (test bed fault)",
            o.unexpected
        ));
    }
    if o.client_errors > 0 {
        problems.push(format!(
            "{} requests failed on the client side, outcome unknown (test bed fault)",
            o.client_errors
        ));
    }
    if o.accepted_down > 0 {
        problems.push(format!(
            "{} connections were accepted by a replica that was down (test bed fault)",
            o.accepted_down
        ));
    }
    if rows.is_empty() {
        problems.push("no comparison ran".to_string());
    }
    let last = rows.last();
    if problems.is_empty() {
        let r = last.expect("rows is not empty here");
        let peak_rss = rows.iter().map(|r| r.rss_mib).fold(0.0, f64::max);
        (
            true,
            format!(
                "PASS: {} comparisons over {:.1} minutes, every counter matched the ground truth \
                 ({} requests, {} agent-counted, {} restarts, {} hostile), 0 events lost; \
                 RSS {:.1} MiB at the end (peak sample {peak_rss:.1}, high-water mark {:.1})",
                rows.len(),
                r.minute,
                r.sent,
                r.counted,
                r.restarts,
                r.hostile,
                r.rss_mib,
                r.hwm_mib
            ),
        )
    } else {
        (false, format!("FAIL: {}", problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(minute: f64, mismatches: usize, lost: u64) -> Row {
        Row {
            minute,
            rss_mib: 20.5,
            hwm_mib: 22.3,
            cpu_pct: 3.06,
            sent: 1000,
            counted: 990,
            mismatches,
            lost,
            restarts: 2,
            hostile: 40,
            refused_down: 12,
            settle_s: 1.234,
        }
    }

    #[test]
    fn markdown_has_one_line_per_window() {
        let md = markdown(&[row(1.0, 0, 0), row(2.0, 0, 0)]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("| minute | RSS MiB | HWM MiB | CPU % | requests sent |"));
        assert_eq!(
            lines[2],
            "| 1.0 | 20.5 | 22.3 | 3.1 | 1000 | 990 | 0 | 0 | 2 | 40 | 12 | 1.23 |"
        );
        assert!(progress(&row(3.0, 0, 0)).contains("mismatches 0 | lost events 0"));
    }

    #[test]
    fn verdicts() {
        let (ok, line) = verdict(&[row(1.0, 0, 0), row(2.0, 0, 0)], &Outcome::default());
        assert!(ok, "{line}");
        assert!(line.starts_with("PASS: 2 comparisons over 2.0 minutes"));
        let (ok, line) = verdict(&[row(1.0, 3, 0), row(2.0, 0, 5)], &Outcome::default());
        assert!(!ok);
        assert_eq!(line, "FAIL: 1 of 2 comparisons mismatched; 5 events lost");
        let o = Outcome {
            client_errors: 1,
            agent_died: true,
            ..Outcome::default()
        };
        let (ok, line) = verdict(&[row(1.0, 0, 0)], &o);
        assert!(!ok);
        assert!(line.contains("the agent died") && line.contains("1 requests failed"));
        assert!(!verdict(&[], &Outcome::default()).0);
    }
}
