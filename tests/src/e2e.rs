//! What the end-to-end tests share: the fleet (the test bed and the agent watching it,
//! started after the preconditions), the agent's passive counts as [`Table`]s, Traefik's
//! own access logs as ground truth, and the checks every run ends with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::plans::{Step, Tls};
use crate::tally::{add, class_of_status, diff, host_label, table, Table};
use crate::{paths, tls, Agent, AgentConfig, Scenario, Testbed, TestbedConfig};

/// How long curl keeps an upgraded `wss` connection open (well inside the agent's
/// early-close window).
const WS_HOLD: Duration = Duration::from_millis(500);

/// Sends one step of a TLS plan to a replica's `websecure` entrypoint with curl
/// (`--http1.1` keep-alive, `--http2` streams of one connection, or `wss` upgrades held
/// for [`WS_HOLD`]); the statuses curl saw, in order.
pub async fn send_tls(addr: SocketAddr, s: &Step<Tls>) -> Vec<u16> {
    let (host, path, n, kind) = (s.host.clone(), s.path, s.n, s.kind);
    tokio::task::spawn_blocking(move || match kind {
        Tls::Http => tls::curl_https(addr, &host, &vec![path; n]),
        Tls::Http2 => tls::curl_https_h2(addr, &host, &vec![path; n]),
        Tls::Ws => (0..n)
            .map(|_| tls::curl_wss_upgrade(addr, &host, path, WS_HOLD))
            .collect(),
    })
    .await
    .unwrap_or_else(|e| panic!("curl task for {}{}: {e}", s.host, s.path))
    .unwrap_or_else(|e| panic!("{} × {}{} via {addr}: {e:#}", s.n, s.host, s.path))
}

/// A running test bed and the agent watching it.
pub struct Fleet {
    pub bed: Testbed,
    pub agent: Agent,
    pub sc: Scenario,
    /// Every replica's name, in the test bed's order.
    pub names: Vec<String>,
    /// The name of the replica missing a router.
    pub broken: String,
}

/// The agent arguments that select the byte-capture sensor (the default is `semantic`).
pub fn byte_capture() -> Vec<String> {
    vec!["--sensor".into(), "bytes".into()]
}

/// Root, the agent binary and Traefik, or the test cannot run; returns the agent binary.
pub fn preconditions() -> PathBuf {
    paths::require_root().expect("precondition");
    let agent = paths::agent_binary().expect("precondition: the agent binary");
    paths::traefik_binary().expect("precondition: Traefik");
    agent
}

impl Fleet {
    /// Checks the preconditions, starts the test bed and then the agent (with
    /// `extra_args` beside the test bed's defaults).
    pub async fn start(bed: TestbedConfig, extra_args: Vec<String>) -> Fleet {
        let agent_bin = preconditions();
        let bed = Testbed::start(bed).await.expect("starting the test bed");
        let sc = bed.scenario().clone();
        let names: Vec<String> = bed.replicas().iter().map(|r| r.name.clone()).collect();
        let broken = bed.broken().expect("a broken replica").name.clone();
        let agent = Agent::start(AgentConfig {
            binary: Some(agent_bin),
            extra_args,
            ..AgentConfig::for_testbed(&bed)
        })
        .await
        .expect("starting the agent");
        eprintln!("agent: {}", agent.command);
        Fleet {
            bed,
            agent,
            sc,
            names,
            broken,
        }
    }

    /// `routeskew_http_responses_total` by (replica, host, class).
    pub fn responses(&self, m: &Metrics) -> Table {
        table(
            m,
            "routeskew_http_responses_total",
            &self.names,
            "host",
            "class",
        )
    }

    /// `routeskew_ws_upgrades_total` by (replica, host, outcome).
    pub fn ws_upgrades(&self, m: &Metrics) -> Table {
        table(
            m,
            "routeskew_ws_upgrades_total",
            &self.names,
            "host",
            "outcome",
        )
    }

    /// A family with one label beside the replica, by (replica, `label`, "-").
    pub fn by_label(&self, m: &Metrics, family: &str, label: &str) -> Table {
        table(m, family, &self.names, label, "<none>")
            .into_iter()
            .map(|((r, l, _), v)| ((r, l, "-".to_string()), v))
            .collect()
    }

    /// Traefik's own account, before the agent is judged: each replica's access log (the
    /// `websecure` one with `websecure`), classified as the agent classifies (no router
    /// name on a 404 = Traefik's own), must match the plan.
    pub fn assert_access_logs_match(&self, want_http: &Table, websecure: bool) {
        let hosts = self.sc.hosts();
        let mut logged = Table::new();
        for r in self.bed.replicas() {
            let entries = if websecure {
                r.websecure_access_log_entries()
            } else {
                r.access_log_entries()
            };
            for e in entries.expect("reading an access log") {
                let class = class_of_status(e.client_status(), e.router_miss() && e.status == 404);
                add(&mut logged, &r.name, &host_label(&hosts, &e.host), class, 1);
            }
        }
        assert!(
            logged == *want_http,
            "test bed fault: Traefik's access logs disagree with the plan:\n{}",
            diff(want_http, &logged)
        );
    }

    /// The decisive signal: router misses for the configured host that one replica lacks,
    /// on that replica only.
    pub fn assert_router_misses_only_on_the_broken_replica(&self, m: &Metrics) {
        for r in &self.names {
            let misses = m.sum(
                "routeskew_http_responses_total",
                &[
                    ("replica", r),
                    ("host", &self.sc.missing_host),
                    ("class", "router_miss"),
                ],
            );
            assert_eq!(
                misses > 0.0,
                *r == self.broken,
                "router misses of {} on {r}: {misses}",
                self.sc.missing_host
            );
        }
    }

    /// The agent survived the test; stops it and the test bed.
    pub fn stop(mut self) {
        stop(&mut self.agent, &mut self.bed);
    }
}

/// The agent's table matches the expected one, or the test fails with both and the
/// agent's log.
pub fn assert_table(what: &str, want: &Table, got: &Table, agent_log: &str) {
    assert!(
        got == want,
        "{what}:\n{}\nagent log:\n{agent_log}",
        diff(want, got)
    );
}

/// The agent survived the test; stops it and the test bed.
pub fn stop(agent: &mut Agent, bed: &mut Testbed) {
    assert!(
        agent.running(),
        "the agent died during the test:\n{}",
        agent.log_tail()
    );
    agent.stop();
    bed.stop().expect("stopping the test bed");
}

/// `routeskew_probe_success` of one replica, host and check.
pub fn probe_success(m: &Metrics, replica: &str, host: &str, check: &str) -> Option<f64> {
    m.get(
        "routeskew_probe_success",
        &[("replica", replica), ("host", host), ("check", check)],
    )
    .expect("routeskew_probe_success")
}

/// `routeskew_sensor_blind_probes_total` of one replica.
pub fn blind_probes(m: &Metrics, replica: &str) -> f64 {
    m.sum(
        "routeskew_sensor_blind_probes_total",
        &[("replica", replica)],
    )
}

/// Probe checks the prober ran on one replica (its duration histogram's count).
pub fn probes_run(m: &Metrics, replica: &str) -> f64 {
    m.sum(
        "routeskew_probe_duration_seconds_count",
        &[("replica", replica)],
    )
}
