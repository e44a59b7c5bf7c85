//! End to end, plaintext: three real Traefik replicas, the second missing the router of
//! one host (its HTTP and WebSocket traffic alike, as in the incident), the agent watching
//! them from the kernel, and exact numbers of requests per replica and host. The agent's
//! counters must match what the client saw and what each replica's own access log says.
//!
//! Run as root after building the agent:
//! `cargo test -p routeskew-testbed --test e2e_plaintext` (ROUTESKEW_AGENT, ROUTESKEW_TRAEFIK
//! and ROUTESKEW_EBPF_OBJECT locate the pieces; see `routeskew_testbed::paths`).
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::time::Duration;

use routeskew_testbed::e2e::{self, Fleet};
use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::plans::{self, Plain};
use routeskew_testbed::tally::{diff, table, Table};
use routeskew_testbed::{expect, traffic, TestbedConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pins_router_misses_on_the_broken_replica() {
    // The byte-capture suite (e2e_semantic covers the same plan with the default sensor).
    let fleet = Fleet::start(TestbedConfig::default(), e2e::byte_capture()).await;
    let Fleet {
        bed,
        agent,
        sc,
        names,
        ..
    } = &fleet;

    // Before any traffic: nothing counted for our replicas.
    let before = agent.scrape().await.unwrap();
    let idle = fleet.responses(&before);
    assert!(
        idle.is_empty(),
        "responses counted before any traffic:\n{}",
        diff(&Table::new(), &idle)
    );

    // Traffic, checked on the client side first so a test-bed fault is not blamed on the agent.
    let steps = plans::plaintext(bed);
    let plans::Expected {
        http: want_http,
        ws: want_ws,
        early_closes: want_early,
        upstream: want_upstream,
    } = plans::expected(&steps, bed.replicas(), sc);
    for s in &steps {
        let r = &bed.replicas()[s.replica];
        let ctx = format!("{} × {}{} via {}", s.n, s.host, s.path, r.name);
        match s.kind {
            Plain::Http(mode) => {
                let rs = traffic::send_http(r.web_addr, &s.host, s.path, s.n, mode)
                    .await
                    .expect(&ctx);
                for resp in &rs {
                    assert_eq!(resp.status, s.status, "{ctx}");
                    assert_eq!(
                        expect::is_traefik_router_miss(resp),
                        s.class == "router_miss",
                        "{ctx}"
                    );
                }
            }
            Plain::Ws => {
                for o in traffic::send_ws(r.web_addr, &s.host, s.path, s.n)
                    .await
                    .expect(&ctx)
                {
                    assert_eq!(o.status, s.status, "{ctx}");
                    assert!(o.status != 101 || o.echoed, "{ctx}: no echo");
                }
            }
        }
    }

    let done = |m: &Metrics| {
        fleet.responses(m) == want_http
            && fleet.ws_upgrades(m) == want_ws
            && table(
                m,
                "routeskew_upstream_connect_failures_total",
                names,
                "reason",
                "<none>",
            )
            .len()
                == want_upstream.len()
    };
    fleet.assert_access_logs_match(&want_http, false);

    let m = agent
        .scrape_until(Duration::from_secs(15), done)
        .await
        .unwrap();
    let log = agent.log_tail();
    let got_http = fleet.responses(&m);
    e2e::assert_table(
        "routeskew_http_responses_total (passive) vs the plan and the access logs",
        &want_http,
        &got_http,
        &log,
    );
    let got_ws = fleet.ws_upgrades(&m);
    e2e::assert_table("routeskew_ws_upgrades_total", &want_ws, &got_ws, &log);

    fleet.assert_router_misses_only_on_the_broken_replica(&m);

    let got_upstream = fleet.by_label(&m, "routeskew_upstream_connect_failures_total", "reason");
    assert!(
        got_upstream == want_upstream,
        "routeskew_upstream_connect_failures_total:\n{}",
        diff(&want_upstream, &got_upstream)
    );
    let got_early = fleet.by_label(&m, "routeskew_ws_early_closes_total", "host");
    assert!(
        got_early == want_early,
        "routeskew_ws_early_closes_total:\n{}",
        diff(&want_early, &got_early)
    );

    // No prober is configured: nothing may be counted as probe traffic. (Alerting series
    // exist at zero from the start, for probes too, so only non-zero ones are wrong.)
    let probes: Vec<String> = m
        .samples
        .iter()
        .filter(|s| s.labels.get("source").is_some_and(|v| v == "probe") && s.value != 0.0)
        .map(|s| s.to_string())
        .collect();
    assert!(
        probes.is_empty(),
        "probe series without a prober: {probes:?}"
    );

    // The sensor saw the traffic and lost none of it. The kernel's counters reach /metrics
    // on the agent's 1 s housekeeping tick, so they may trail the traffic counts.
    let events = |m: &Metrics| m.sum("routeskew_sensor_events_total", &[]);
    let kernel = agent
        .scrape_until(Duration::from_secs(5), |m| events(m) > 0.0)
        .await
        .unwrap();
    let events = events(&kernel);
    assert!(events > 0.0, "routeskew_sensor_events_total is {events}");
    let lost = kernel.sum("routeskew_sensor_lost_events_total", &[]);
    assert_eq!(lost, 0.0, "routeskew_sensor_lost_events_total");
    assert_eq!(
        m.get("routeskew_targets", &[("state", "attached")])
            .unwrap(),
        Some(names.len() as f64)
    );
    assert!(m.saw_eof, "an OpenMetrics exposition ends with # EOF");

    eprintln!(
        "agent's counts (all matched):\n{}{}{}{}",
        diff(&want_http, &got_http),
        diff(&want_ws, &got_ws),
        diff(&want_upstream, &got_upstream),
        diff(&want_early, &got_early)
    );
    fleet.stop();
}
