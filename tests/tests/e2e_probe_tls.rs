//! End to end, active probes over TLS: the prober reaches each replica's `websecure`
//! entrypoint (SNI = the host) and the byte-capture sensor's Go crypto/tls uprobes see
//! those exchanges; with the uprobes off they go unseen and the blind counter says so.
//!
//! Run as root after building the agent: `cargo test -p routeskew-testbed --test
//! e2e_probe_tls`.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::time::Duration;

use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::{e2e, Agent, AgentConfig, Testbed, TestbedConfig};

const INTERVAL: Duration = Duration::from_secs(1);

use e2e::{blind_probes as blind, probe_success as success, probes_run};

/// Probes whatever the replica's `websecure` entrypoint runs over TLS (SNI = the host),
/// and the Go crypto/tls uprobes see those exchanges: nothing is blind. With the uprobes
/// turned off (`--no-tls`) the same TLS probes go unseen and the blind counter says so,
/// which shows the first half is not vacuous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_endpoints_are_probed_and_seen_by_the_tls_sensor() {
    let agent_bin = e2e::preconditions();

    let mut bed = Testbed::start(TestbedConfig {
        access_log: false,
        tls: true,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let sc = bed.scenario().clone();
    let broken = bed.broken().unwrap().clone();
    let names: Vec<String> = bed.replicas().iter().map(|r| r.name.clone()).collect();
    let start = |no_tls: bool| {
        let mut extra_args = vec![
            "--probe-interval".to_string(),
            format!("{}ms", INTERVAL.as_millis()),
            "--probe-timeout".into(),
            "2s".into(),
        ];
        if no_tls {
            extra_args.push("--no-tls".into());
        }
        // `--no-tls` blinds the byte-capture sensor's TLS uprobes, the subject here.
        extra_args.extend(e2e::byte_capture());
        Agent::start(AgentConfig {
            binary: Some(agent_bin.clone()),
            extra_args,
            ..AgentConfig::for_testbed(&bed)
        })
    };

    let mut agent = start(false).await.expect("starting the agent");
    // A verdict of 1 needs every probed endpoint to succeed, the TLS one included.
    let verdicts = |m: &Metrics| {
        names.iter().all(|r| {
            let expect = if *r == broken.name { 0.0 } else { 1.0 };
            success(m, r, &sc.missing_host, "http") == Some(expect)
                && success(m, r, &sc.app_host, "http") == Some(1.0)
        })
    };
    let m = agent
        .scrape_until(Duration::from_secs(10), verdicts)
        .await
        .unwrap();
    assert!(verdicts(&m), "agent log:\n{}", agent.log_tail());
    // No client traffic at all: what the TLS uprobes report is the probes' own.
    let tls_events = |m: &Metrics| {
        m.sum(
            "routeskew_sensor_events_total",
            &[("program", "go_tls_write")],
        )
    };
    let m = agent
        .scrape_until(Duration::from_secs(5), |m| tls_events(m) > 0.0)
        .await
        .unwrap();
    assert!(
        tls_events(&m) > 0.0,
        "no probe went over TLS:\n{}",
        agent.log_tail()
    );
    // Several rounds over both entrypoints, and the kernel saw every probe exchange.
    let runs = |m: &Metrics| names.iter().map(|r| probes_run(m, r)).sum::<f64>();
    let floor = runs(&m) + (3 * names.len() * 2 * sc.hosts().len()) as f64;
    let m = agent
        .scrape_until(Duration::from_secs(15), |m| runs(m) >= floor)
        .await
        .unwrap();
    assert!(runs(&m) >= floor, "probes did not keep running");
    for r in &names {
        assert_eq!(blind(&m, r), 0.0, "{r}: the TLS sensor missed probes");
    }
    agent.stop();

    // Control: the same probes with the TLS uprobes off are blind on every replica.
    let mut agent = start(true).await.expect("starting the agent with --no-tls");
    let m = agent
        .scrape_until(Duration::from_secs(10), |m| {
            names.iter().all(|r| blind(m, r) > 0.0)
        })
        .await
        .unwrap();
    for r in &names {
        assert!(
            blind(&m, r) > 0.0,
            "{r}: TLS probes were not reported blind without the uprobes:\n{}",
            agent.log_tail()
        );
    }
    agent.stop();
    bed.stop().unwrap();
}
