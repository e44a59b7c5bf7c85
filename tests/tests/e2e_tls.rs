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
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::time::Duration;

use routeskew_testbed::e2e::{self, Fleet};
use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::plans;
use routeskew_testbed::tally::diff;
use routeskew_testbed::TestbedConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pins_router_misses_over_tls() {
    let fleet = Fleet::start(
        TestbedConfig {
            tls: true,
            ..TestbedConfig::default()
        },
        // The byte-capture suite (e2e_semantic covers the same plan with the default
        // sensor).
        e2e::byte_capture(),
    )
    .await;
    let Fleet {
        bed, agent, names, ..
    } = &fleet;

    let steps = plans::tls(bed);
    let plans::Expected {
        http: want_http,
        ws: want_ws,
        early_closes: want_early,
        ..
    } = plans::expected(&steps, bed.replicas(), &fleet.sc);
    for s in &steps {
        let r = &bed.replicas()[s.replica];
        let addr = r.websecure_addr.expect("websecure entrypoint");
        let statuses = e2e::send_tls(addr, s).await;
        assert_eq!(
            statuses,
            vec![s.status; s.n],
            "{} × {}{} via {}",
            s.n,
            s.host,
            s.path,
            r.name
        );
    }

    // Ground truth from Traefik itself: each replica's websecure access log.
    fleet.assert_access_logs_match(&want_http, true);

    let done = |m: &Metrics| fleet.responses(m) == want_http && fleet.ws_upgrades(m) == want_ws;
    let m = agent
        .scrape_until(Duration::from_secs(15), done)
        .await
        .unwrap();
    let log = agent.log_tail();
    let got_http = fleet.responses(&m);
    e2e::assert_table(
        "routeskew_http_responses_total over TLS vs the plan and the access logs",
        &want_http,
        &got_http,
        &log,
    );
    let got_ws = fleet.ws_upgrades(&m);
    e2e::assert_table(
        "routeskew_ws_upgrades_total over TLS",
        &want_ws,
        &got_ws,
        &log,
    );
    let got_early = fleet.by_label(&m, "routeskew_ws_early_closes_total", "host");
    e2e::assert_table(
        "routeskew_ws_early_closes_total over TLS",
        &want_early,
        &got_early,
        &log,
    );
    fleet.assert_router_misses_only_on_the_broken_replica(&m);

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
    fleet.stop();
}
