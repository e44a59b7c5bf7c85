//! End to end over TLS: the plaintext test's fleet (three real Traefik replicas, the
//! second missing the router of one host for HTTP and WebSocket alike) reached through
//! each replica's `websecure` entrypoint, so the socket hooks only ever see ciphertext and
//! every count must come from the Go `crypto/tls` uprobes. Clients are `curl --http1.1`
//! (HTTP keep-alive, and `wss` upgrades) and `curl --http2` (streams of one h2 connection,
//! decoded from the frames by the agent's HPACK tracker). The agent's counters must match
//! the plan and each replica's own access log exactly, with no h2 stream left
//! unclassified.
//!
//! Run as root after building the agent:
//! `cargo test -p routeskew-testbed --test e2e_tls`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::tally::{
    self, add, class_of_status, diff, host_label, routed_or_miss, table, Plan, Table,
};
use routeskew_testbed::{path, paths, tls, Agent, AgentConfig, Testbed, TestbedConfig};

/// A host no replica routes: Traefik's 404 everywhere, labelled `other` by the agent.
const UNROUTED_HOST: &str = "nobody.test";
/// How long curl keeps an upgraded connection open (well inside the early-close window).
const WS_HOLD: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `n` requests on one keep-alive connection.
    Http,
    /// `n` requests as streams of one HTTP/2 connection.
    Http2,
    /// `n` upgrades, each on its own connection.
    Ws,
}

type Step = tally::Step<Kind>;

fn plan(bed: &Testbed) -> Vec<Step> {
    let sc = bed.scenario();
    let mut steps = Plan::default();
    // Different counts per replica, so traffic attributed to the wrong replica shows.
    let missing_http = [2, 7, 3];
    let missing_ws = [2, 3, 4];
    let ws_ok = [1, 2, 1];
    for r in bed.replicas() {
        let i = r.index;
        steps.step(i, &sc.app_host, path::ROOT, Kind::Http, 3 + i, 200, "ok");
        let (status, class) = routed_or_miss(r.routes(&sc.missing_host));
        steps.step(
            i,
            &sc.missing_host,
            path::ROOT,
            Kind::Http,
            missing_http[i],
            status,
            class,
        );
        let (status, class) = if r.routes(&sc.missing_host) {
            (101, "ok")
        } else {
            (404, "router_miss")
        };
        steps.step(
            i,
            &sc.missing_host,
            path::WS,
            Kind::Ws,
            missing_ws[i],
            status,
            class,
        );
        steps.step(i, &sc.ws_host, path::WS, Kind::Ws, ws_ok[i], 101, "ok");
        steps.step(
            i,
            &sc.notfound_host,
            path::NOTFOUND,
            Kind::Http,
            2,
            404,
            "client_error",
        );
        steps.step(
            i,
            UNROUTED_HOST,
            path::ROOT,
            Kind::Http,
            1,
            404,
            "router_miss",
        );
    }
    steps.step(
        0,
        &sc.unavailable_host,
        path::ROOT,
        Kind::Http,
        2,
        503,
        "server_error",
    );
    // The same shapes over HTTP/2, again with counts per replica that differ from each
    // other and from the HTTP/1.1 ones.
    let missing_h2 = [4, 5, 1];
    for r in bed.replicas() {
        let i = r.index;
        steps.step(
            i,
            &sc.app_host,
            path::ROOT,
            Kind::Http2,
            2 + 2 * i,
            200,
            "ok",
        );
        let (status, class) = routed_or_miss(r.routes(&sc.missing_host));
        steps.step(
            i,
            &sc.missing_host,
            path::ROOT,
            Kind::Http2,
            missing_h2[i],
            status,
            class,
        );
        // A Go backend's own http.NotFound and a JSON 404, relayed over h2: never a miss.
        steps.step(
            i,
            &sc.notfound_host,
            path::NOTFOUND,
            Kind::Http2,
            1 + i,
            404,
            "client_error",
        );
        steps.step(
            i,
            &sc.notfound_host,
            path::MISSING,
            Kind::Http2,
            1,
            404,
            "client_error",
        );
        steps.step(
            i,
            UNROUTED_HOST,
            path::ROOT,
            Kind::Http2,
            2,
            404,
            "router_miss",
        );
    }
    steps.step(
        2,
        &sc.unavailable_host,
        path::ROOT,
        Kind::Http2,
        3,
        503,
        "server_error",
    );
    steps.into_steps()
}

async fn send(addr: SocketAddr, s: &Step) -> Vec<u16> {
    let (host, path, n, kind) = (s.host.clone(), s.path, s.n, s.kind);
    tokio::task::spawn_blocking(move || match kind {
        Kind::Http => tls::curl_https(addr, &host, &vec![path; n]),
        Kind::Http2 => tls::curl_https_h2(addr, &host, &vec![path; n]),
        Kind::Ws => (0..n)
            .map(|_| tls::curl_wss_upgrade(addr, &host, path, WS_HOLD))
            .collect(),
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{} × {}{} via {addr}: {e:#}", s.n, s.host, s.path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pins_router_misses_over_tls() {
    paths::require_root().expect("precondition");
    let agent_bin = paths::agent_binary().expect("precondition: the agent binary");
    paths::traefik_binary().expect("precondition: Traefik");

    let mut bed = Testbed::start(TestbedConfig {
        tls: true,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let sc = bed.scenario().clone();
    let hosts = sc.hosts();
    let names: Vec<String> = bed.replicas().iter().map(|r| r.name.clone()).collect();
    let broken = bed.broken().unwrap().name.clone();

    let mut agent = Agent::start(AgentConfig {
        binary: Some(agent_bin),
        ..AgentConfig::for_testbed(&bed)
    })
    .await
    .expect("starting the agent");
    eprintln!("agent: {}", agent.command);

    let steps = plan(&bed);
    let mut want_http = Table::new();
    let mut want_ws = Table::new();
    let mut want_early = Table::new();
    for s in &steps {
        let r = &bed.replicas()[s.replica];
        let addr = r.websecure_addr.expect("websecure entrypoint");
        let statuses = send(addr, s).await;
        assert_eq!(
            statuses,
            vec![s.status; s.n],
            "{} × {}{} via {}",
            s.n,
            s.host,
            s.path,
            r.name
        );
        if s.kind == Kind::Ws {
            let outcome = match s.status {
                101 => "upgraded",
                _ if s.class == "router_miss" => "router_miss",
                500..=599 => "failed",
                _ => "rejected",
            };
            add(&mut want_ws, &r.name, &s.host, outcome, s.n as u64);
            if s.status == 101 {
                add(&mut want_early, &r.name, &s.host, "-", s.n as u64);
            }
        }
        add(
            &mut want_http,
            &r.name,
            &host_label(&hosts, &s.host),
            s.class,
            s.n as u64,
        );
    }

    // Ground truth from Traefik itself: each replica's websecure access log.
    let mut logged = Table::new();
    for r in bed.replicas() {
        for e in r.websecure_access_log_entries().unwrap() {
            let class = class_of_status(e.client_status(), e.router_miss() && e.status == 404);
            add(&mut logged, &r.name, &host_label(&hosts, &e.host), class, 1);
        }
    }
    assert!(
        logged == want_http,
        "test bed fault: Traefik's access logs disagree with the plan:\n{}",
        diff(&want_http, &logged)
    );

    let done = |m: &Metrics| {
        table(m, "routeskew_http_responses_total", &names, "host", "class") == want_http
            && table(m, "routeskew_ws_upgrades_total", &names, "host", "outcome") == want_ws
    };
    let m = agent
        .scrape_until(Duration::from_secs(15), done)
        .await
        .unwrap();
    let log = agent.log_tail();
    let got_http = table(
        &m,
        "routeskew_http_responses_total",
        &names,
        "host",
        "class",
    );
    assert!(
        got_http == want_http,
        "routeskew_http_responses_total over TLS vs the plan and the access logs:\n{}\nagent log:\n{log}",
        diff(&want_http, &got_http)
    );
    let got_ws = table(&m, "routeskew_ws_upgrades_total", &names, "host", "outcome");
    assert!(
        got_ws == want_ws,
        "routeskew_ws_upgrades_total over TLS:\n{}\nagent log:\n{log}",
        diff(&want_ws, &got_ws)
    );
    let got_early: Table = table(
        &m,
        "routeskew_ws_early_closes_total",
        &names,
        "host",
        "<none>",
    )
    .into_iter()
    .map(|((r, l, _), v)| ((r, l, "-".to_string()), v))
    .collect();
    assert!(
        got_early == want_early,
        "routeskew_ws_early_closes_total over TLS:\n{}\nagent log:\n{log}",
        diff(&want_early, &got_early)
    );
    for r in &names {
        let misses = m.sum(
            "routeskew_http_responses_total",
            &[
                ("replica", r),
                ("host", &sc.missing_host),
                ("class", "router_miss"),
            ],
        );
        assert_eq!(misses > 0.0, *r == broken, "router misses on {r}: {misses}");
    }

    // Every count above came from the TLS uprobes; the replicas share one binary, which
    // was resolved and attached once. The kernel's counters reach /metrics on the agent's
    // 1 s housekeeping tick, so they may trail the traffic counts by that much.
    let tls_events = |m: &Metrics| {
        m.sum(
            "routeskew_sensor_events_total",
            &[("program", "go_tls_write")],
        ) + m.sum(
            "routeskew_sensor_events_total",
            &[("program", "go_tls_read_ret")],
        )
    };
    let kernel = agent
        .scrape_until(Duration::from_secs(5), |m| tls_events(m) > 0.0)
        .await
        .unwrap();
    assert!(tls_events(&kernel) > 0.0, "no TLS uprobe events counted");
    let lost = kernel.sum("routeskew_sensor_lost_events_total", &[]);
    assert_eq!(lost, 0.0, "routeskew_sensor_lost_events_total");
    let unclassified = m.sum("routeskew_pipeline_h2_unclassified_total", &[]);
    assert_eq!(
        unclassified, 0.0,
        "h2 streams left unclassified; agent log:\n{log}"
    );
    assert_eq!(
        m.get("routeskew_targets", &[("state", "attached")])
            .unwrap(),
        Some(names.len() as f64)
    );
    assert_eq!(
        m.get("routeskew_targets", &[("state", "failed")]).unwrap(),
        Some(0.0)
    );
    let full_log = std::fs::read_to_string(bed.dir().join("agent.log")).unwrap_or_default();
    let attached = full_log.matches("TLS uprobes attached").count();
    assert_eq!(attached, 1, "one binary, one attachment; agent log:\n{log}");

    eprintln!(
        "agent's counts over TLS (all matched):\n{}{}{}",
        diff(&want_http, &got_http),
        diff(&want_ws, &got_ws),
        diff(&want_early, &got_early)
    );
    assert!(
        agent.running(),
        "the agent died during the test:\n{}",
        agent.log_tail()
    );
    agent.stop();
    bed.stop().unwrap();
}
