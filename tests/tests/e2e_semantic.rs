//! End to end with the semantic sensor (`--sensor semantic`): the plaintext and TLS
//! tests' fleet (three real Traefik replicas, the second missing the router of one host),
//! on each Traefik release of the matrix, with no data hook attached at all. Every
//! response is counted in the kernel at Go `net/http`'s `WriteHeader` (HTTP/1.x over
//! plaintext and TLS) and the HTTP/2 server's `writeHeader` (h2 over TLS), router misses
//! by `net/http.NotFound` on the same request. The agent's response counts must match the
//! plan and each replica's own access log exactly.
//!
//! Run as root after building the agent and `cargo xtask setup` (the release matrix):
//! `cargo test -p routeskew-testbed --test e2e_semantic`.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::time::{Duration, Instant};

use routeskew_testbed::e2e::{self, Fleet};
use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::plans::{self, Plain};
use routeskew_testbed::tally::{diff, Table};
use routeskew_testbed::{
    paths, tls, traffic, Agent, AgentConfig, ConnMode, Testbed, TestbedConfig,
};

fn merge(mut a: Table, b: &Table) -> Table {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
    a
}

/// How the agent is expected to see the replicas.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Semantic,
    /// The semantic sensor refused the binary; byte capture counts instead.
    Fallback,
}

async fn semantic_fleet_counts_exactly(release: &str) {
    fleet_counts_exactly(release, &[], Mode::Semantic).await;
}

async fn fleet_counts_exactly(release: &str, extra: &[&str], mode: Mode) {
    let traefik = paths::traefik_release(release).expect("precondition: the Traefik release");
    let mut args = vec!["--sensor".to_string(), "semantic".to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let fleet = Fleet::start(
        TestbedConfig {
            tls: true,
            traefik: Some(traefik),
            ..TestbedConfig::default()
        },
        args,
    )
    .await;
    let Fleet {
        bed, agent, names, ..
    } = &fleet;

    let plain = plans::plaintext(bed);
    let plans::Expected {
        http: want_plain,
        ws: ws_plain,
        early_closes: early_plain,
        upstream: upstream_plain,
    } = plans::expected(&plain, bed.replicas(), &fleet.sc);
    for s in &plain {
        let r = &bed.replicas()[s.replica];
        let ctx = format!("{} × {}{} via {}", s.n, s.host, s.path, r.name);
        let statuses = match s.kind {
            Plain::Http(mode) => {
                traffic::send_http_statuses(r.web_addr, &s.host, s.path, s.n, mode)
                    .await
                    .expect(&ctx)
            }
            Plain::Ws => traffic::send_ws(r.web_addr, &s.host, s.path, s.n)
                .await
                .expect(&ctx)
                .into_iter()
                .map(|o| o.status)
                .collect(),
        };
        assert_eq!(statuses, vec![s.status; s.n], "{ctx}");
    }
    let secure = plans::tls(bed);
    let plans::Expected {
        http: want_tls,
        ws: ws_tls,
        early_closes: early_tls,
        upstream: upstream_tls,
    } = plans::expected(&secure, bed.replicas(), &fleet.sc);
    for s in &secure {
        let addr = bed.replicas()[s.replica]
            .websecure_addr
            .expect("websecure entrypoint");
        assert_eq!(
            e2e::send_tls(addr, s).await,
            vec![s.status; s.n],
            "{} × {}{} via {addr}",
            s.n,
            s.host,
            s.path
        );
    }
    fleet.assert_access_logs_match(&want_plain, false);
    fleet.assert_access_logs_match(&want_tls, true);
    let want = merge(want_plain, &want_tls);
    // Upgrades are counted where the reverse proxy relays the backend's 101; a refused
    // or unrouted one from the request head the kernel copies for such answers.
    let want_ws = merge(ws_plain, &ws_tls);
    // The test clients close every upgraded connection inside the early-close window.
    let want_early = merge(early_plain, &early_tls);
    let early = |m: &Metrics| fleet.by_label(m, "routeskew_ws_early_closes_total", "host");
    // Upstream connect failures: the TCP state tracepoints, as with byte capture.
    let want_upstream = merge(upstream_plain, &upstream_tls);
    let upstream =
        |m: &Metrics| fleet.by_label(m, "routeskew_upstream_connect_failures_total", "reason");

    let m = agent
        .scrape_until(Duration::from_secs(15), |m: &Metrics| {
            fleet.responses(m) == want
                && fleet.ws_upgrades(m) == want_ws
                && early(m) == want_early
                && upstream(m) == want_upstream
        })
        .await
        .expect("scraping the agent");
    let log = agent.log_tail();
    let got = fleet.responses(&m);
    e2e::assert_table(
        &format!("routeskew_http_responses_total (semantic sensor, Traefik {release})"),
        &want,
        &got,
        &log,
    );
    e2e::assert_table(
        &format!("routeskew_ws_upgrades_total ({mode:?})"),
        &want_ws,
        &fleet.ws_upgrades(&m),
        &log,
    );
    e2e::assert_table(
        &format!("routeskew_ws_early_closes_total ({mode:?})"),
        &want_early,
        &early(&m),
        &log,
    );
    e2e::assert_table(
        "routeskew_upstream_connect_failures_total",
        &want_upstream,
        &upstream(&m),
        &log,
    );
    fleet.assert_router_misses_only_on_the_broken_replica(&m);

    let full_log = std::fs::read_to_string(bed.dir().join("agent.log")).unwrap_or_default();
    let data_events = [
        "sock_send_length",
        "sock_recv_length",
        "sys_exit",
        "go_tls_write",
    ]
    .iter()
    .map(|p| m.sum("routeskew_sensor_events_total", &[("program", p)]))
    .sum::<f64>();
    let mode_label = match mode {
        Mode::Semantic => "semantic",
        Mode::Fallback => "bytes",
    };
    for r in names {
        assert_eq!(
            m.get(
                "routeskew_sensor_mode",
                &[("replica", r), ("mode", mode_label)]
            )
            .expect("routeskew_sensor_mode"),
            Some(1.0),
            "{r} is not seen in {mode_label} mode; agent log:\n{log}"
        );
    }
    match mode {
        // The counts came from the semantic uprobes alone: one plan attached for the
        // shared binary, and no data hook (nothing per syscall) on the machine.
        Mode::Semantic => {
            assert_eq!(
                full_log.matches("semantic uprobes attached").count(),
                1,
                "one binary, one attachment; agent log:\n{log}"
            );
            assert_eq!(data_events, 0.0, "data hooks ran in semantic mode");
            assert_eq!(
                m.get("routeskew_sensor_data_path", &[("path", "off")])
                    .expect("routeskew_sensor_data_path"),
                Some(1.0),
                "no global data hook in semantic mode"
            );
            // Refused and unrouted upgrades came from request heads, each recognised.
            let refused: u64 = want_ws
                .iter()
                .filter(|((_, _, outcome), _)| outcome != "upgraded")
                .map(|(_, n)| *n)
                .sum();
            let heads = |result: &str| {
                m.get(
                    "routeskew_pipeline_request_heads_total",
                    &[("result", result)],
                )
                .expect("routeskew_pipeline_request_heads_total")
                .unwrap_or(0.0)
            };
            assert!(refused > 0, "the plan refuses upgrades");
            assert_eq!(heads("websocket"), refused as f64, "agent log:\n{log}");
            for other in ["other_request", "unparsed", "truncated"] {
                assert_eq!(heads(other), 0.0, "{other}; agent log:\n{log}");
            }
        }
        // The wrong offset failed verification: nothing was attached with it, and byte
        // capture (attached only now) counted everything exactly.
        Mode::Fallback => {
            assert!(
                full_log.contains("offset verification failed"),
                "agent log:\n{log}"
            );
            assert_eq!(full_log.matches("semantic uprobes attached").count(), 0);
            assert!(data_events > 0.0, "byte capture did not run");
            assert_eq!(
                m.get("routeskew_sensor_data_path", &[("path", "off")])
                    .expect("routeskew_sensor_data_path"),
                Some(0.0),
                "byte capture's global hooks are on and say so"
            );
        }
    }
    let anomalies = m.sum("routeskew_sensor_anomalies_total", &[]);
    assert_eq!(anomalies, 0.0, "kernel anomalies; agent log:\n{log}");
    assert_eq!(
        m.get("routeskew_targets", &[("state", "attached")])
            .expect("routeskew_targets"),
        Some(names.len() as f64)
    );
    assert_eq!(
        m.get("routeskew_targets", &[("state", "failed")])
            .expect("routeskew_targets"),
        Some(0.0)
    );
    eprintln!(
        "semantic sensor on Traefik {release}: all matched\n{}",
        diff(&want, &got)
    );
    fleet.stop();
}

/// The release this test runs (the matrix's releases all serve h2c on plaintext).
const H2C_RELEASE: &str = "3.7.15";

/// The semantic sensor counts per HTTP/2 stream at the server's `writeHeader`, so it needs
/// nothing from a connection's start: an h2 connection over TLS opened before the agent
/// (cloudflared keeps them for hours) is counted from the first stream after attachment,
/// and h2c (cleartext HTTP/2, prior knowledge) is counted exactly, router misses included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_h2_connection_and_h2c_are_counted() {
    let agent_bin = e2e::preconditions();
    let mut bed = Testbed::start(TestbedConfig {
        tls: true,
        traefik: Some(paths::traefik_release(H2C_RELEASE).expect("precondition: the release")),
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let sc = bed.scenario().clone();
    let first = bed.replicas()[0].clone();
    let broken = bed.broken().expect("a broken replica").clone();

    // One h2 connection over TLS: 16 streams, one every 500 ms, from before the agent.
    const STREAMS: usize = 16;
    const SPACING: Duration = Duration::from_millis(500);
    let addr = first.websecure_addr.expect("websecure entrypoint");
    let host = sc.app_host.clone();
    let started = Instant::now();
    let client = tokio::task::spawn_blocking(move || {
        tls::curl_https_h2_paced(addr, &host, &["/"; STREAMS], "2/s")
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut agent = Agent::start(AgentConfig {
        binary: Some(agent_bin),
        extra_args: vec!["--sensor".into(), "semantic".into()],
        ..AgentConfig::for_testbed(&bed)
    })
    .await
    .expect("starting the agent");
    // The uprobes are on once the agent logs them; streams sent after that must count.
    let attached_after = loop {
        if std::fs::read_to_string(bed.dir().join("agent.log"))
            .unwrap_or_default()
            .contains("semantic uprobes attached")
        {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never attached"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let statuses = client.await.expect("curl task").expect("curl");
    assert_eq!(statuses, vec![200; STREAMS]);
    let after = (0..STREAMS)
        .filter(|i| SPACING * (*i as u32) > attached_after + SPACING)
        .count() as f64;
    assert!(after >= 4.0, "the agent took {attached_after:?} to attach");

    // h2c to each replica's plaintext entrypoint: the app host, and the missing one.
    let mut want_h2c = Vec::new();
    for r in bed.replicas() {
        let n = 2 + r.index;
        // One connection each: a second stream on one h2c connection fails in curl's
        // framing layer against these Traefik releases (checked by hand with curl 7.88).
        let codes: Vec<u16> = (0..n)
            .flat_map(|_| tls::curl_h2c(r.web_addr, &sc.missing_host, &["/"]).expect("curl h2c"))
            .collect();
        let miss = r.index == broken.index;
        assert_eq!(codes, vec![if miss { 404 } else { 200 }; n]);
        want_h2c.push((r.name.clone(), n as f64, miss));
    }

    let count = |m: &Metrics, r: &str, h: &str, class: &str| {
        m.sum(
            "routeskew_http_responses_total",
            &[
                ("replica", r),
                ("host", h),
                ("class", class),
                ("source", "passive"),
            ],
        )
    };
    let h2c_done = |m: &Metrics| {
        want_h2c.iter().all(|(r, n, miss)| {
            count(
                m,
                r,
                &sc.missing_host,
                if *miss { "router_miss" } else { "ok" },
            ) == *n
        })
    };
    let m = agent
        .scrape_until(Duration::from_secs(10), |m| {
            h2c_done(m) && count(m, &first.name, &sc.app_host, "ok") >= after
        })
        .await
        .expect("scraping the agent");
    let log = agent.log_tail();
    assert!(h2c_done(&m), "h2c counts; agent log:\n{log}");
    let older = count(&m, &first.name, &sc.app_host, "ok");
    assert!(
        older >= after && older <= STREAMS as f64,
        "{older} streams of the older h2 connection counted; {after} were sent after the uprobes were attached at {attached_after:?}"
    );
    eprintln!("older h2 connection: {older} of {STREAMS} streams counted ({after} sent after attachment); h2c exact");
    e2e::stop(&mut agent, &mut bed);
}

/// A deliberately wrong offset (the request's Host one word off) fails verification
/// against the binary: the semantic sensor is not attached with it, and the replicas are
/// counted exactly by byte capture instead, WebSocket outcomes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_offset_falls_back_to_byte_capture() {
    fleet_counts_exactly(
        "3.7.15",
        &["--semantic-offset", "req-host=136"],
        Mode::Fallback,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_sensor_traefik_3_0_4() {
    semantic_fleet_counts_exactly("3.0.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_sensor_traefik_3_3_6() {
    semantic_fleet_counts_exactly("3.3.6").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_sensor_traefik_3_5_3() {
    semantic_fleet_counts_exactly("3.5.3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_sensor_traefik_3_6_15() {
    semantic_fleet_counts_exactly("3.6.15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_sensor_traefik_3_7_15() {
    semantic_fleet_counts_exactly("3.7.15").await;
}

/// The run-time check: offsets that passed verification but are wrong in the kernel
/// (simulated with `--semantic-kernel-offset req-host=136`, the request's Host one word
/// off) make the semantic sensor miss every probe; after three in a row the agent moves
/// the replica to byte capture, which sees its probes and counts client traffic exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_whose_probes_go_unseen_move_to_byte_capture() {
    let agent_bin = e2e::preconditions();
    let mut bed = Testbed::start(TestbedConfig {
        access_log: false,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let sc = bed.scenario().clone();
    let names: Vec<String> = bed.replicas().iter().map(|r| r.name.clone()).collect();
    let mut agent = Agent::start(AgentConfig {
        binary: Some(agent_bin),
        extra_args: [
            "--sensor",
            "semantic",
            "--semantic-kernel-offset",
            "req-host=136",
            "--probe-interval",
            "1s",
            "--probe-timeout",
            "2s",
        ]
        .map(String::from)
        .to_vec(),
        ..AgentConfig::for_testbed(&bed)
    })
    .await
    .expect("starting the agent");
    let mode = |m: &Metrics, r: &str, mode: &str| {
        m.get("routeskew_sensor_mode", &[("replica", r), ("mode", mode)])
            .expect("routeskew_sensor_mode")
    };
    let moved = |m: &Metrics| names.iter().all(|r| mode(m, r, "bytes") == Some(1.0));
    let m = agent
        .scrape_until(Duration::from_secs(30), moved)
        .await
        .expect("scraping the agent");
    let log = agent.log_tail();
    assert!(
        moved(&m),
        "replicas still in semantic mode; agent log:\n{log}"
    );
    assert!(log.contains("byte capture takes over"), "agent log:\n{log}");

    // From now on byte capture counts: client traffic exactly, probes as probes.
    let passive = |m: &Metrics, r: &str| {
        m.sum(
            "routeskew_http_responses_total",
            &[
                ("replica", r),
                ("host", &sc.app_host),
                ("class", "ok"),
                ("source", "passive"),
            ],
        )
    };
    let before: Vec<f64> = names.iter().map(|r| passive(&m, r)).collect();
    for r in bed.replicas() {
        traffic::send_http(
            r.web_addr,
            &sc.app_host,
            "/",
            4 + r.index,
            ConnMode::KeepAlive,
        )
        .await
        .expect("client traffic");
    }
    let want = |m: &Metrics| {
        bed.replicas()
            .iter()
            .all(|r| passive(m, &r.name) == before[r.index] + (4 + r.index) as f64)
    };
    let m = agent
        .scrape_until(Duration::from_secs(10), want)
        .await
        .expect("scraping the agent");
    assert!(
        want(&m),
        "client traffic after the move; agent log:\n{}",
        agent.log_tail()
    );
    e2e::stop(&mut agent, &mut bed);
}
