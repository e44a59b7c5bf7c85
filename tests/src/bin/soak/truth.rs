//! The ground truth: what the load generator sent and what each answer was, per replica
//! and host label, in the agent's own terms; and its comparison with the agent's
//! passive counters.

use routeskew_testbed::tally::{add, diff, Table};

/// What the clients saw, cumulative since the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Truth {
    /// `routeskew_http_responses_total{source="passive"}` by (replica, host, class).
    pub(crate) http: Table,
    /// `routeskew_ws_upgrades_total{source="passive"}` by (replica, host, outcome).
    pub(crate) ws: Table,
    /// `routeskew_ws_early_closes_total` by (replica, host, `-`).
    pub(crate) early: Table,
    /// `routeskew_upstream_connect_failures_total` by (replica, reason, `-`).
    pub(crate) upstream: Table,
    /// Answers the agent may count or not, by (replica, `other`, class): hostile requests
    /// Go's HTTP server answered itself (a malformed head: 400, 505) before any Traefik
    /// handler ran (the semantic sensor sees handlers' answers only), and a restarted
    /// replica's API answers to the test bed's readiness checks (counted when the agent
    /// already watched the new process). They widen the accepted range of that key of
    /// `http`, never of another.
    pub(crate) tolerated: Table,
    pub(crate) counts: Counts,
}

/// Totals that are no agent series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Answered requests (upgrade requests included) of the mixed traffic.
    pub(crate) sent: u64,
    /// Connections to a replica while it was down (refused, as they should be).
    pub(crate) refused_down: u64,
    /// Connections a down replica accepted (should never happen).
    pub(crate) accepted_down: u64,
    /// Hostile connections opened.
    pub(crate) hostile: u64,
    /// Hostile requests a Traefik handler answered (part of `http`).
    pub(crate) hostile_routed: u64,
    /// Hostile requests Go's server answered itself (in `tolerated`).
    pub(crate) hostile_rejected: u64,
    /// A restarted replica's API answers to the readiness checks (in `tolerated`).
    pub(crate) api_answers: u64,
    /// Answers of the mixed traffic that were not what the test bed's configuration
    /// says they must be (still counted as seen).
    pub(crate) unexpected: u64,
    /// Mixed-traffic requests that failed on the client side: their outcome is unknown,
    /// so a run with any cannot vouch for the comparison.
    pub(crate) client_errors: u64,
}

impl Truth {
    /// One answered HTTP exchange (an upgrade request included).
    pub(crate) fn http(&mut self, replica: &str, host: &str, class: &str) {
        add(&mut self.http, replica, host, class, 1);
    }

    /// One upgrade request answered with `status`: an HTTP exchange, an upgrade outcome,
    /// and for a `101` an early close (every client here closes well inside the window).
    pub(crate) fn upgrade(&mut self, replica: &str, host: &str, status: u16, class: &str) {
        self.http(replica, host, class);
        let outcome = routeskew_testbed::plans::ws_outcome(status, class);
        add(&mut self.ws, replica, host, outcome, 1);
        if status == 101 {
            add(&mut self.early, replica, host, "-", 1);
        }
    }

    pub(crate) fn upstream_refused(&mut self, replica: &str) {
        add(&mut self.upstream, replica, "refused", "-", 1);
    }

    pub(crate) fn tolerate(&mut self, replica: &str, class: &str) {
        add(&mut self.tolerated, replica, "other", class, 1);
    }
}

/// The agent's counters, as the same tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Observed {
    pub(crate) http: Table,
    pub(crate) ws: Table,
    pub(crate) early: Table,
    pub(crate) upstream: Table,
}

impl Observed {
    /// Responses the agent counted.
    pub(crate) fn responses(&self) -> u64 {
        self.http.values().sum()
    }
}

/// One key where the agent and the ground truth disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch {
    pub(crate) family: &'static str,
    pub(crate) key: (String, String, String),
    pub(crate) want: u64,
    /// Hostile answers that may or may not be counted on top of `want`.
    pub(crate) tolerance: u64,
    pub(crate) got: u64,
}

/// Every key of every family where the agent is outside the ground truth's range.
pub(crate) fn compare(truth: &Truth, got: &Observed) -> Vec<Mismatch> {
    let empty = Table::new();
    let families: [(&'static str, &Table, &Table, &Table); 4] = [
        (
            "routeskew_http_responses_total",
            &truth.http,
            &got.http,
            &truth.tolerated,
        ),
        ("routeskew_ws_upgrades_total", &truth.ws, &got.ws, &empty),
        (
            "routeskew_ws_early_closes_total",
            &truth.early,
            &got.early,
            &empty,
        ),
        (
            "routeskew_upstream_connect_failures_total",
            &truth.upstream,
            &got.upstream,
            &empty,
        ),
    ];
    let mut out = Vec::new();
    for (family, want, got, tolerated) in families {
        let keys: std::collections::BTreeSet<_> = want
            .keys()
            .chain(got.keys())
            .chain(tolerated.keys())
            .collect();
        for k in keys {
            let w = want.get(k).copied().unwrap_or(0);
            let t = tolerated.get(k).copied().unwrap_or(0);
            let g = got.get(k).copied().unwrap_or(0);
            if g < w || g > w + t {
                out.push(Mismatch {
                    family,
                    key: k.clone(),
                    want: w,
                    tolerance: t,
                    got: g,
                });
            }
        }
    }
    out
}

/// A readable account of the mismatches: each family that has any, with every key of
/// it (`!!` where the two differ), and the tolerated hostile answers.
pub(crate) fn explain(truth: &Truth, got: &Observed, mismatches: &[Mismatch]) -> String {
    let mut out = String::new();
    for m in mismatches {
        out.push_str(&format!(
            "MISMATCH {} {{replica={}, {}, {}}}: want {}{} got {}\n",
            m.family,
            m.key.0,
            m.key.1,
            m.key.2,
            m.want,
            if m.tolerance > 0 {
                format!(" (+ up to {} hostile answers Go wrote itself)", m.tolerance)
            } else {
                String::new()
            },
            m.got
        ));
    }
    let tables = [
        ("routeskew_http_responses_total", &truth.http, &got.http),
        ("routeskew_ws_upgrades_total", &truth.ws, &got.ws),
        ("routeskew_ws_early_closes_total", &truth.early, &got.early),
        (
            "routeskew_upstream_connect_failures_total",
            &truth.upstream,
            &got.upstream,
        ),
    ];
    for (family, want, have) in tables {
        if mismatches.iter().any(|m| m.family == family) {
            out.push_str(&format!("{family} (ground truth vs agent):\n"));
            out.push_str(&diff(want, have));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed_from(t: &Truth) -> Observed {
        Observed {
            http: t.http.clone(),
            ws: t.ws.clone(),
            early: t.early.clone(),
            upstream: t.upstream.clone(),
        }
    }

    #[test]
    fn upgrades_count_as_exchanges_outcomes_and_early_closes() {
        let mut t = Truth::default();
        t.upgrade("traefik-1", "ws.test", 101, "ok");
        t.upgrade("traefik-2", "missing.test", 404, "router_miss");
        t.http("traefik-1", "ws.test", "ok");
        let k = |r: &str, h: &str, c: &str| (r.to_string(), h.to_string(), c.to_string());
        assert_eq!(t.http[&k("traefik-1", "ws.test", "ok")], 2);
        assert_eq!(t.http[&k("traefik-2", "missing.test", "router_miss")], 1);
        assert_eq!(t.ws[&k("traefik-1", "ws.test", "upgraded")], 1);
        assert_eq!(t.ws[&k("traefik-2", "missing.test", "router_miss")], 1);
        assert_eq!(t.early.len(), 1);
        assert_eq!(t.early[&k("traefik-1", "ws.test", "-")], 1);
    }

    #[test]
    fn exact_match_has_no_mismatch() {
        let mut t = Truth::default();
        t.http("traefik-1", "app.test", "ok");
        t.upstream_refused("traefik-3");
        assert!(compare(&t, &observed_from(&t)).is_empty());
    }

    #[test]
    fn tolerated_hostile_answers_widen_only_their_key() {
        let mut t = Truth::default();
        t.http("traefik-1", "other", "router_miss");
        t.tolerate("traefik-1", "client_error");
        t.tolerate("traefik-1", "client_error");
        let mut got = observed_from(&t);
        // None, one or both of the tolerated answers counted: all fine.
        for n in 0..=2 {
            if n > 0 {
                add(&mut got.http, "traefik-1", "other", "client_error", 1);
            }
            assert!(compare(&t, &got).is_empty(), "{n} counted");
        }
        // A third is more than was sent.
        add(&mut got.http, "traefik-1", "other", "client_error", 1);
        let m = compare(&t, &got);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].want, m[0].tolerance, m[0].got), (0, 2, 3));
        // Tolerance does not cover another class or a missing router miss.
        let mut got = observed_from(&t);
        got.http.clear();
        let m = compare(&t, &got);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].key.2, "router_miss");
    }

    #[test]
    fn every_family_is_compared_and_explained() {
        let mut t = Truth::default();
        t.upgrade("traefik-1", "ws.test", 101, "ok");
        t.upstream_refused("traefik-2");
        let mut got = observed_from(&t);
        got.early.clear();
        add(&mut got.upstream, "traefik-2", "refused", "-", 1);
        add(&mut got.ws, "traefik-3", "ws.test", "reset", 1);
        let m = compare(&t, &got);
        let families: Vec<_> = m.iter().map(|m| m.family).collect();
        assert_eq!(
            families,
            vec![
                "routeskew_ws_upgrades_total",
                "routeskew_ws_early_closes_total",
                "routeskew_upstream_connect_failures_total"
            ]
        );
        let text = explain(&t, &got, &m);
        assert!(text.contains("MISMATCH routeskew_ws_early_closes_total {replica=traefik-1, ws.test, -}: want 1 got 0"));
        assert!(text.contains("!! traefik-2"));
        assert!(!text.contains("routeskew_http_responses_total ("));
        assert_eq!(got.responses(), 1);
    }
}
