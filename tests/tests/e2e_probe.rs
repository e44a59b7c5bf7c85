//! End to end, active probes: three real Traefik replicas, the second missing the router
//! of one host, the agent probing each replica directly with no client traffic at all.
//!
//! (a) the replica missing the router is reported by `routeskew_probe_success` within
//!     about one interval, and only for the missing host;
//! (b) its API shows fewer routers: `routeskew_replica_routers` says so, and the agent
//!     logs which router it lacks;
//! (c) the kernel sensor is made blind to one replica and `sensor_blind_probes_total`
//!     rises for it (within two intervals) while its probes keep running;
//! (d) probe traffic is counted only as `source="probe"`, once per probe, and passive
//!     counts are exactly the client traffic sent alongside.
//!
//! Blinding the sensor, honestly and without a test hook in the agent: the agent runs
//! with a long `--rescan-interval`, so its kernel filter keeps the cgroups discovery saw
//! at start; the test then moves the replica's process into a new cgroup that nobody
//! watches. The kernel programs stay attached and keep filtering by cgroup id, so they
//! really stop reporting that replica's sockets, as they would if a replica's cgroup
//! changed behind discovery's back; the prober still knows the replica and its address.
//!
//! Run as root after building the agent:
//! `cargo test -p routeskew-testbed --test e2e_probe` (ROUTESKEW_AGENT, ROUTESKEW_TRAEFIK
//! and ROUTESKEW_EBPF_OBJECT locate the pieces; see `routeskew_testbed::paths`).
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions unwrap too (clippy.toml covers only tests); a panic there fails the test"
)]

use std::time::{Duration, Instant};

use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::{
    cgroup, e2e, traffic, Agent, AgentConfig, ConnMode, Testbed, TestbedConfig,
};

const INTERVAL: Duration = Duration::from_secs(1);

use e2e::{blind_probes as blind, probe_success as success, probes_run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_find_the_broken_replica_and_the_blind_sensor() {
    probes_find_the_broken_replica_and_the_blind(Sensor::Bytes).await;
}

/// The same with the semantic sensor: it tells the prober's connections (probe and
/// housekeeping) apart by their address, counts in the kernel, and its counts settle the
/// prober's reports by (replica, host, status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_sensor_counts_probes_once_and_goes_blind_honestly() {
    probes_find_the_broken_replica_and_the_blind(Sensor::Semantic).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sensor {
    Bytes,
    Semantic,
}

async fn probes_find_the_broken_replica_and_the_blind(sensor: Sensor) {
    let agent_bin = e2e::preconditions();

    let mut bed = Testbed::start(TestbedConfig {
        access_log: false,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let sc = bed.scenario().clone();
    let names: Vec<String> = bed.replicas().iter().map(|r| r.name.clone()).collect();
    let broken = bed.broken().unwrap().clone();

    // The test bed's own reading of each replica's API, taken before the agent watches:
    // afterwards it would be passive traffic.
    let mut truth = Vec::new();
    for r in bed.replicas() {
        truth.push(bed.routers_of(r).await.unwrap().len() as f64);
    }

    let started = Instant::now();
    let mut agent = Agent::start(AgentConfig {
        binary: Some(agent_bin),
        extra_args: vec![
            "--probe-interval".into(),
            format!("{}ms", INTERVAL.as_millis()),
            "--probe-timeout".into(),
            "2s".into(),
            "--probe-ws-path".into(),
            format!("{}/ws", sc.ws_host),
            "--probe-ws-path".into(),
            format!("{}/ws", sc.missing_host),
            // Discovery runs once: see the module comment on blinding.
            "--rescan-interval".into(),
            "1h".into(),
            "--sensor".into(),
            match sensor {
                Sensor::Bytes => "bytes",
                Sensor::Semantic => "semantic",
            }
            .into(),
        ],
        ..AgentConfig::for_testbed(&bed)
    })
    .await
    .expect("starting the agent");
    let ready_after = started.elapsed();
    eprintln!("agent: {}", agent.command);

    // (a) No client traffic: the probe alone pins the broken replica.
    let want = |m: &Metrics| {
        names.iter().all(|r| {
            let expect = if *r == broken.name { 0.0 } else { 1.0 };
            success(m, r, &sc.missing_host, "http") == Some(expect)
                && success(m, r, &sc.missing_host, "websocket") == Some(expect)
                && success(m, r, &sc.app_host, "http") == Some(1.0)
                && success(m, r, &sc.ws_host, "websocket") == Some(1.0)
        })
    };
    let t0 = Instant::now();
    let m = agent
        .scrape_until(Duration::from_secs(10), want)
        .await
        .unwrap();
    let verdict_after = t0.elapsed();
    let dump = |m: &Metrics, name: &str| -> String {
        m.select(name, &[])
            .map(|s| format!("  {s}\n"))
            .collect::<String>()
    };
    assert!(
        want(&m),
        "probe verdicts:\n{}\nagent log:\n{}",
        dump(&m, "routeskew_probe_success"),
        agent.log_tail()
    );
    eprintln!(
        "verdicts visible {verdict_after:?} after the agent was ready ({ready_after:?} after its start)"
    );
    assert!(
        verdict_after <= INTERVAL + Duration::from_secs(2),
        "probe verdicts took {verdict_after:?} with a {INTERVAL:?} interval"
    );
    // 5xx hosts fail on every replica alike (no skew), routed hosts succeed everywhere.
    for r in &names {
        assert_eq!(success(&m, r, &sc.refused_host, "http"), Some(0.0), "{r}");
        assert_eq!(
            success(&m, r, &sc.unavailable_host, "http"),
            Some(0.0),
            "{r}"
        );
        assert_eq!(success(&m, r, &sc.notfound_host, "http"), Some(1.0), "{r}");
    }

    // (b) Router inventory from each replica's API, checked against the test bed's own
    //     reading of the same API.
    let m = agent
        .scrape_until(Duration::from_secs(5), |m| {
            names.iter().all(|r| {
                m.get("routeskew_replica_routers", &[("replica", r)])
                    .unwrap()
                    .is_some()
            })
        })
        .await
        .unwrap();
    for r in bed.replicas() {
        let got = m
            .get("routeskew_replica_routers", &[("replica", &r.name)])
            .unwrap();
        assert_eq!(got, Some(truth[r.index]), "{}", r.name);
    }
    let healthy = m
        .get("routeskew_replica_routers", &[("replica", &names[0])])
        .unwrap()
        .unwrap();
    let fewer = m
        .get("routeskew_replica_routers", &[("replica", &broken.name)])
        .unwrap()
        .unwrap();
    assert_eq!(fewer, healthy - 1.0);
    let log = agent.log_tail();
    let lacks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("replica lacks routers"))
        .collect();
    assert_eq!(lacks.len(), 1, "logged once per change:\n{log}");
    assert!(
        lacks[0].contains(&broken.name) && lacks[0].contains("missing@file"),
        "{}",
        lacks[0]
    );

    // (d) Probe traffic is probe traffic: the sensor saw it (nothing blind), counted it as
    //     source="probe" once per probe, and counted nothing as passive. (The semantic
    //     sensor's counts reach the pipeline on its 1 s fold: wait for the first.)
    let probe_counted = |m: &Metrics, r: &str, family: &str, host: &str, label: (&str, &str)| {
        m.sum(
            family,
            &[("replica", r), ("host", host), label, ("source", "probe")],
        )
    };
    let m = agent
        .scrape_until(Duration::from_secs(5), |m| {
            names.iter().all(|r| {
                probe_counted(
                    m,
                    r,
                    "routeskew_http_responses_total",
                    &sc.app_host,
                    ("class", "ok"),
                ) > 0.0
                    && probe_counted(
                        m,
                        r,
                        "routeskew_ws_upgrades_total",
                        &sc.ws_host,
                        ("outcome", "upgraded"),
                    ) > 0.0
            })
        })
        .await
        .unwrap();
    for r in &names {
        assert_eq!(
            blind(&m, r),
            0.0,
            "{r}: the sensor missed probes while attached"
        );
        let passive = m.sum(
            "routeskew_http_responses_total",
            &[("replica", r), ("source", "passive")],
        ) + m.sum(
            "routeskew_ws_upgrades_total",
            &[("replica", r), ("source", "passive")],
        );
        let passive_series: Vec<String> = m
            .samples
            .iter()
            .filter(|s| {
                s.labels.get("replica").is_some_and(|v| v == r)
                    && s.labels.get("source").is_some_and(|v| v == "passive")
                    && s.value != 0.0
            })
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            passive,
            0.0,
            "{r}: probe traffic counted as passive: {passive_series:?}; agent log:\n{}",
            agent.log_tail()
        );
        assert!(
            m.sum(
                "routeskew_http_responses_total",
                &[
                    ("replica", r),
                    ("host", &sc.app_host),
                    ("class", "ok"),
                    ("source", "probe")
                ]
            ) > 0.0,
            "{r}: no probe counted"
        );
        assert!(
            m.sum(
                "routeskew_ws_upgrades_total",
                &[
                    ("replica", r),
                    ("host", &sc.ws_host),
                    ("outcome", "upgraded"),
                    ("source", "probe")
                ]
            ) > 0.0,
            "{r}: no WebSocket probe counted"
        );
        // Once per probe: every answered probe is one response (its WebSocket upgrades
        // too). Up to one round may be between the two numbers at scrape time.
        let counted = m.sum(
            "routeskew_http_responses_total",
            &[("replica", r), ("source", "probe")],
        );
        let sent = probes_run(&m, r);
        let per_round = (sc.hosts().len() + 2) as f64;
        assert!(
            (counted - sent).abs() <= per_round,
            "{r}: {counted} probe responses counted for {sent} probes"
        );
        assert_eq!(
            m.sum("routeskew_ws_early_closes_total", &[("replica", r)]),
            0.0,
            "{r}: a probe's closing WebSocket is not an early close"
        );
    }
    assert!(
        m.sum(
            "routeskew_http_responses_total",
            &[
                ("replica", &broken.name),
                ("host", &sc.missing_host),
                ("class", "router_miss"),
                ("source", "probe")
            ]
        ) > 0.0
    );
    // The unrouted WebSocket probe is a WebSocket outcome too, with either sensor.
    let ws_miss = |m: &Metrics| {
        m.sum(
            "routeskew_ws_upgrades_total",
            &[
                ("replica", &broken.name),
                ("host", &sc.missing_host),
                ("outcome", "router_miss"),
                ("source", "probe"),
            ],
        ) > 0.0
    };
    let m = agent
        .scrape_until(Duration::from_secs(5), ws_miss)
        .await
        .unwrap();
    assert!(ws_miss(&m), "no unrouted WebSocket probe counted");
    // Client traffic next to the probes is counted exactly, as passive.
    for r in bed.replicas() {
        let n = 3 + r.index;
        traffic::send_http(r.web_addr, &sc.app_host, "/", n, ConnMode::KeepAlive)
            .await
            .unwrap();
    }
    let passive_ok = |m: &Metrics, r: &str| {
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
    let m = agent
        .scrape_until(Duration::from_secs(5), |m| {
            bed.replicas()
                .iter()
                .all(|r| passive_ok(m, &r.name) == (3 + r.index) as f64)
        })
        .await
        .unwrap();
    for r in bed.replicas() {
        assert_eq!(passive_ok(&m, &r.name), (3 + r.index) as f64, "{}", r.name);
    }

    // (c) Blind the sensor to the broken replica: move its process out of the cgroup the
    //     kernel filter matches.
    let blind_cg = bed
        .cgroup_root()
        .unwrap()
        .join(format!("{}-unwatched", broken.name));
    cgroup::create(&blind_cg).unwrap();
    std::fs::write(blind_cg.join("cgroup.procs"), broken.pid.to_string()).unwrap();
    assert_eq!(cgroup::procs(&blind_cg).unwrap(), vec![broken.pid]);
    let before = agent.scrape().await.unwrap();
    let runs_before = probes_run(&before, &broken.name);
    let t0 = Instant::now();
    let m = agent
        .scrape_until(Duration::from_secs(10), |m| blind(m, &broken.name) > 0.0)
        .await
        .unwrap();
    let detected_after = t0.elapsed();
    assert!(
        blind(&m, &broken.name) > 0.0,
        "the blind sensor was not noticed:\n{}\nagent log:\n{}",
        dump(&m, "routeskew_sensor_blind_probes_total"),
        agent.log_tail()
    );
    eprintln!("blind sensor noticed {detected_after:?} after the replica left the watched cgroup");
    // Two intervals, plus the scrape poll (250 ms) and scheduling on a shared machine;
    // the semantic sensor's copy is waited for 2 s (its counts come on the 1 s fold).
    let slack = match sensor {
        Sensor::Bytes => Duration::from_millis(1500),
        Sensor::Semantic => Duration::from_millis(3000),
    };
    assert!(
        detected_after <= 2 * INTERVAL + slack,
        "blindness took {detected_after:?} to show with a {INTERVAL:?} interval"
    );
    // Probes keep running and keep their verdicts; the other replicas stay seen.
    let m = agent
        .scrape_until(Duration::from_secs(5), |m| {
            probes_run(m, &broken.name) >= runs_before + 2.0 * (sc.hosts().len() as f64)
        })
        .await
        .unwrap();
    assert!(probes_run(&m, &broken.name) > runs_before);
    assert_eq!(
        success(&m, &broken.name, &sc.missing_host, "http"),
        Some(0.0)
    );
    assert_eq!(success(&m, &broken.name, &sc.app_host, "http"), Some(1.0));
    for r in names.iter().filter(|r| **r != broken.name) {
        assert_eq!(blind(&m, r), 0.0, "{r}");
    }
    // What the sensor missed is counted from the prober's reports, still as probe.
    let blind_count = blind(&m, &broken.name);
    assert!(
        blind_count >= (sc.hosts().len() + 2) as f64,
        "{blind_count}"
    );
    assert_eq!(
        m.sum(
            "routeskew_http_responses_total",
            &[("replica", &broken.name), ("source", "passive")]
        ),
        passive_ok(&m, &broken.name),
        "only the client traffic is passive:\n{}",
        m.select("routeskew_http_responses_total", &[("source", "passive")])
            .filter(|s| s.value != 0.0)
            .map(|s| format!("  {s}\n"))
            .collect::<String>()
    );

    e2e::stop(&mut agent, &mut bed);
}
