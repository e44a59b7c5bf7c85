//! End to end with the semantic sensor: WebSocket sessions are timed from the relayed
//! `101` to the close of the hijacked client connection, so a session that ends inside
//! the early-close window is an early close and one that outlives it is not, over TLS.
//!
//! Run as root after building the agent: `cargo test -p routeskew-testbed --test
//! e2e_semantic_ws`.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::time::Duration;

use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::{e2e, tls, Agent, AgentConfig, Testbed, TestbedConfig};

/// The agent's early-close window in this test.
const WINDOW: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_are_timed_against_the_early_close_window() {
    let agent_bin = e2e::preconditions();
    let mut bed = Testbed::start(TestbedConfig {
        tls: true,
        access_log: false,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let sc = bed.scenario().clone();
    let first = bed.replicas()[0].clone();
    let mut agent = Agent::start(AgentConfig {
        binary: Some(agent_bin),
        extra_args: [
            "--sensor",
            "semantic",
            "--probe-interval",
            "0s",
            "--ws-early-close",
            "2s",
        ]
        .map(String::from)
        .to_vec(),
        ..AgentConfig::for_testbed(&bed)
    })
    .await
    .expect("starting the agent");
    let addr = first.websecure_addr.expect("websecure entrypoint");
    // Two short sessions, one held past the window; curl ends each at its time limit.
    for hold in [
        Duration::from_millis(300),
        WINDOW + Duration::from_millis(1500),
        Duration::from_millis(300),
    ] {
        let host = sc.ws_host.clone();
        let code =
            tokio::task::spawn_blocking(move || tls::curl_wss_upgrade(addr, &host, "/ws", hold))
                .await
                .expect("curl task")
                .expect("curl");
        assert_eq!(code, 101);
    }
    let series = |m: &Metrics, family: &str, label: (&str, &str)| {
        m.sum(
            family,
            &[
                ("replica", first.name.as_str()),
                ("host", &sc.ws_host),
                label,
            ],
        )
    };
    let upgraded = |m: &Metrics| series(m, "routeskew_ws_upgrades_total", ("outcome", "upgraded"));
    let early = |m: &Metrics| {
        m.sum(
            "routeskew_ws_early_closes_total",
            &[("replica", first.name.as_str()), ("host", &sc.ws_host)],
        )
    };
    // Every session had ended before this scrape: a third early close would be there.
    let m = agent
        .scrape_until(Duration::from_secs(10), |m| {
            upgraded(m) >= 3.0 && early(m) >= 2.0
        })
        .await
        .expect("scraping the agent");
    let log = agent.log_tail();
    assert_eq!(upgraded(&m), 3.0, "agent log:\n{log}");
    assert_eq!(
        early(&m),
        2.0,
        "the held session is no early close; agent log:\n{log}"
    );
    assert_eq!(
        m.get(
            "routeskew_sensor_mode",
            &[("replica", &first.name), ("mode", "semantic")]
        )
        .expect("routeskew_sensor_mode"),
        Some(1.0)
    );
    e2e::stop(&mut agent, &mut bed);
}
