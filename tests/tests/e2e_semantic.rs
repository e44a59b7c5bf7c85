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

use std::time::Duration;

use routeskew_testbed::e2e::{self, Fleet};
use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::plans::{self, Plain};
use routeskew_testbed::tally::{diff, Table};
use routeskew_testbed::{paths, traffic, TestbedConfig};

fn merge(mut a: Table, b: &Table) -> Table {
    for (k, v) in b {
        *a.entry(k.clone()).or_default() += v;
    }
    a
}

async fn semantic_fleet_counts_exactly(release: &str) {
    let traefik = paths::traefik_release(release).expect("precondition: the Traefik release");
    let fleet = Fleet::start(
        TestbedConfig {
            tls: true,
            traefik: Some(traefik),
            ..TestbedConfig::default()
        },
        vec!["--sensor".into(), "semantic".into()],
    )
    .await;
    let Fleet {
        bed, agent, names, ..
    } = &fleet;

    let plain = plans::plaintext(bed);
    let plans::Expected {
        http: want_plain,
        ws: ws_plain,
        ..
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
        ..
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
    // or unrouted upgrade is only a response so far (the request's Upgrade header is not
    // read yet).
    let upgraded = |t: Table| -> Table {
        t.into_iter()
            .filter(|((_, _, outcome), _)| outcome == "upgraded")
            .collect()
    };
    let want_ws = upgraded(merge(ws_plain, &ws_tls));

    let m = agent
        .scrape_until(Duration::from_secs(15), |m: &Metrics| {
            fleet.responses(m) == want && upgraded(fleet.ws_upgrades(m)) == want_ws
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
        "routeskew_ws_upgrades_total{outcome=\"upgraded\"} (semantic sensor)",
        &want_ws,
        &upgraded(fleet.ws_upgrades(&m)),
        &log,
    );
    fleet.assert_router_misses_only_on_the_broken_replica(&m);

    // The counts came from the semantic uprobes alone: one plan attached for the shared
    // binary, and no data hook (nothing per syscall) on the machine.
    let full_log = std::fs::read_to_string(bed.dir().join("agent.log")).unwrap_or_default();
    assert_eq!(
        full_log.matches("semantic uprobes attached").count(),
        1,
        "one binary, one attachment; agent log:\n{log}"
    );
    for program in ["sock_send", "sock_recv", "sys_exit", "go_tls_write"] {
        assert_eq!(
            m.sum("routeskew_sensor_events_total", &[("program", program)]),
            0.0,
            "{program} ran in semantic mode"
        );
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
