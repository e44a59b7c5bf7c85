//! End to end through a real Prometheus: three real Traefik replicas, the second missing
//! the router of one host, the agent watching them from the kernel, and Debian's
//! Prometheus scraping the agent every second. Traffic is spread round-robin over the
//! replicas as a Service would, and the verdict is read back with the PromQL users put
//! in dashboards and alerts: exact counts, the per-replica router-miss ratio and the
//! cross-replica skew that singles out the broken replica.
//!
//! That a real Prometheus scrapes the target without error is itself the check that our
//! OpenMetrics exposition is acceptable to the consumer it is written for.
//!
//! Run as root after building the agent:
//! `cargo test -p routeskew-testbed --test e2e_prometheus` (ROUTESKEW_AGENT,
//! ROUTESKEW_TRAEFIK, ROUTESKEW_EBPF_OBJECT and ROUTESKEW_PROMETHEUS locate the pieces).
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions unwrap too (clippy.toml covers only tests); a panic there fails the test"
)]

mod queries;
mod tables;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use routeskew_testbed::plans::{self, Mix};
use routeskew_testbed::prometheus::{self, Prometheus, PrometheusConfig};
use routeskew_testbed::tally::{add, diff, Table};
use routeskew_testbed::{e2e, expect, process, Agent, AgentConfig};
use routeskew_testbed::{Testbed, TestbedConfig};

use queries::Fleet;
use tables::{agent_table, count, table, Verdict};

/// Rounds of the traffic mix; enough that the shared round-robin cursor gives every
/// replica several requests of each kind, in different numbers per replica.
const ROUNDS: usize = 16;
/// How long Prometheus may take to scrape values that include all the traffic: the agent
/// needs a moment to count, then the next 1 s scrape must happen.
const SCRAPED_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the kernel's own counters may trail the traffic counts in Prometheus: one
/// housekeeping tick of the agent (1 s) and one scrape (1 s), with room for a slow machine.
pub(crate) const KERNEL_COUNTERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Wide enough to hold the zero samples scraped before the traffic however slow the
/// run, which `increase` needs to see the step.
pub(crate) const WINDOW: &str = "5m";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_singles_out_the_broken_replica() {
    let t0 = Instant::now();
    let agent_bin = e2e::preconditions();
    let prom_bin = prometheus::binary().expect("precondition: Prometheus");

    let mut bed = Testbed::start(TestbedConfig::default())
        .await
        .expect("starting the test bed");
    let sc = bed.scenario().clone();
    let names: Vec<String> = bed.replicas().iter().map(|r| r.name.clone()).collect();
    let broken = bed.broken().unwrap().name.clone();
    let healthy: BTreeSet<String> = names.iter().filter(|n| **n != broken).cloned().collect();
    let missing = sc.missing_host.clone();
    let t_bed = t0.elapsed();

    let mut agent = Agent::start(AgentConfig {
        binary: Some(agent_bin),
        ..AgentConfig::for_testbed(&bed)
    })
    .await
    .expect("starting the agent");
    eprintln!("agent: {}", agent.command);
    let t_agent = t0.elapsed();

    let mut prom = Prometheus::start(PrometheusConfig {
        binary: Some(prom_bin),
        ..PrometheusConfig::for_agent(agent.addr)
    })
    .await
    .expect("starting Prometheus and waiting for its first successful scrape of the agent");
    eprintln!("prometheus: {}", prom.command);
    let t_prom = t0.elapsed();
    let mut v = Verdict::default();

    let fleet = Fleet {
        names: names.clone(),
        broken: broken.clone(),
        healthy: healthy.clone(),
        missing: missing.clone(),
    };
    queries::before_traffic(&agent, &prom, &fleet, &mut v).await;

    // Traffic, checked on the client side first so a test-bed fault is not blamed on the
    // agent or on Prometheus.
    let mut want_http = Table::new();
    let mut want_ws = Table::new();
    let mut rr = bed.round_robin();
    let t_traffic = Instant::now();
    for req in plans::prometheus_mix(&sc, ROUNDS) {
        match req.kind {
            Mix::Get => {
                let (i, resp) = rr.get(&req.host, req.path).await.unwrap();
                let r = &bed.replicas()[i];
                let ctx = format!("GET {}{} via {}", req.host, req.path, r.name);
                let (status, class, _) = req.answer(r);
                assert_eq!(resp.status, status, "{ctx}");
                assert_eq!(
                    expect::is_traefik_router_miss(&resp),
                    class == "router_miss",
                    "{ctx}: {}",
                    resp.head_without_date()
                );
                add(&mut want_http, &r.name, &req.host, class, 1);
            }
            Mix::Upgrade => {
                let (i, o) = rr.upgrade(&req.host, req.path).await.unwrap();
                let r = &bed.replicas()[i];
                let ctx = format!("upgrade {}{} via {}", req.host, req.path, r.name);
                let (status, class, outcome) = req.answer(r);
                assert_eq!(o.status, status, "{ctx}");
                assert!(o.status != 101 || o.echoed, "{ctx}: no echo");
                // The upgrade request is an HTTP exchange too (101 counts as ok).
                add(&mut want_http, &r.name, &req.host, class, 1);
                add(
                    &mut want_ws,
                    &r.name,
                    &req.host,
                    outcome.expect("an upgrade has an outcome"),
                    1,
                );
            }
        }
    }
    let traffic_took = t_traffic.elapsed();
    let miss_http = count(&want_http, &broken, &missing, "router_miss");
    let miss_ws = count(&want_ws, &broken, &missing, "router_miss");
    // The plan must exercise what is asserted below, on every replica.
    assert!(
        count(&want_ws, &broken, &missing, "router_miss") > 0
            && miss_http > miss_ws
            && healthy.iter().all(|h| {
                count(&want_http, h, &missing, "ok") > 0
                    && count(&want_ws, h, &missing, "upgraded") > 0
            }),
        "test fault: the traffic plan does not reach every replica with every kind:\n{}{}",
        diff(&want_http, &Table::new()),
        diff(&want_ws, &Table::new())
    );

    // Exact counts, as raw counter values at the latest scrape; polled until Prometheus
    // has scraped values that include all of the traffic.
    let q_http =
        r#"sum by (replica, host, class) (routeskew_http_responses_total{source="passive"})"#;
    let q_ws = r#"sum by (replica, host, outcome) (routeskew_ws_upgrades_total{source="passive"})"#;
    let t_wait = Instant::now();
    let (got_http, got_ws) = loop {
        let h = table(
            &prom.query(q_http).await.unwrap(),
            ["replica", "host", "class"],
        );
        let w = table(
            &prom.query(q_ws).await.unwrap(),
            ["replica", "host", "outcome"],
        );
        if (h == want_http && w == want_ws) || t_wait.elapsed() > SCRAPED_TIMEOUT {
            break (h, w);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let scraped_took = t_wait.elapsed();
    if got_http != want_http || got_ws != want_ws {
        let m = agent.scrape().await.unwrap();
        panic!(
            "Prometheus's counts did not reach what was sent within {SCRAPED_TIMEOUT:?}\n\
             {q_http}:\n{}\n{q_ws}:\n{}\n\
             the agent's own /metrics now (passive):\n{}{}\nagent log:\n{}",
            diff(&want_http, &got_http),
            diff(&want_ws, &got_ws),
            diff(
                &want_http,
                &agent_table(
                    &m,
                    "routeskew_http_responses_total",
                    &names,
                    ["replica", "host", "class"]
                )
            ),
            diff(
                &want_ws,
                &agent_table(
                    &m,
                    "routeskew_ws_upgrades_total",
                    &names,
                    ["replica", "host", "outcome"]
                )
            ),
            agent.log_tail()
        );
    }

    queries::verdict(&prom, &fleet, &want_ws, miss_http, &mut v).await;
    queries::agent_health(&prom, &names, &mut v).await;

    assert!(
        v.failures.is_empty(),
        // The failures last, where a truncated report still shows them.
        "agent log:\n{}\n{} of {} PromQL checks failed:\n  {}",
        agent.log_tail(),
        v.failures.len(),
        v.failures.len() + v.passed.len(),
        v.failures.join("\n  ")
    );
    eprintln!(
        "Prometheus's counts (all matched):\n{}{}all {} PromQL checks passed:\n  {}",
        diff(&want_http, &got_http),
        diff(&want_ws, &got_ws),
        v.passed.len(),
        v.passed.join("\n  ")
    );
    assert!(
        agent.running(),
        "the agent died during the test:\n{}",
        agent.log_tail()
    );
    assert!(prom.running(), "Prometheus died:\n{}", prom.log_tail());

    // Cleanup leaves nothing behind: the process is reaped and its TSDB removed.
    let (prom_pid, prom_dir) = (prom.pid().unwrap(), prom.dir().to_path_buf());
    prom.stop();
    assert!(
        !process::pid_alive(prom_pid),
        "Prometheus {prom_pid} still runs"
    );
    if std::env::var_os("ROUTESKEW_KEEP_TESTBED").is_none() {
        assert!(!prom_dir.exists(), "{} left behind", prom_dir.display());
    }
    agent.stop();
    bed.stop().unwrap();
    eprintln!(
        "timings: test bed {:.1?}, agent {:.1?}, Prometheus up {:.1?}, traffic {:.1?}, \
         scraped {:.1?}, total {:.1?}",
        t_bed,
        t_agent - t_bed,
        t_prom - t_agent,
        traffic_took,
        scraped_took,
        t0.elapsed()
    );
}
