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
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use routeskew_testbed::http::HttpConn;
use routeskew_testbed::prometheus::{self, Prometheus, PrometheusConfig, Sample};
use routeskew_testbed::scenario::Scenario;
use routeskew_testbed::tally::{add, diff, Table};
use routeskew_testbed::{expect, path, paths, process, Agent, AgentConfig, Metrics};
use routeskew_testbed::{Testbed, TestbedConfig};

/// Rounds of the traffic mix; enough that the shared round-robin cursor gives every
/// replica several requests of each kind, in different numbers per replica.
const ROUNDS: usize = 16;
/// How long Prometheus may take to scrape values that include all the traffic: the agent
/// needs a moment to count, then the next 1 s scrape must happen.
const SCRAPED_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the kernel's own counters may trail the traffic counts in Prometheus: one
/// housekeeping tick of the agent (1 s) and one scrape (1 s), with room for a slow machine.
const KERNEL_COUNTERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Wide enough to hold the zero samples scraped before the traffic however slow the
/// run, which `increase` needs to see the step.
const WINDOW: &str = "5m";

/// A `sum by (k0, k1, k2)` result as a table (zero elements left out).
fn table(samples: &[Sample], keys: [&str; 3]) -> Table {
    let mut t = Table::new();
    for s in samples {
        add(
            &mut t,
            s.label(keys[0]),
            s.label(keys[1]),
            s.label(keys[2]),
            s.value as u64,
        );
    }
    t
}

/// The same table from the agent's own `/metrics` (passive traffic of our replicas), to
/// tell an agent fault from an ingestion fault when Prometheus disagrees.
fn agent_table(m: &Metrics, name: &str, replicas: &[String], keys: [&str; 3]) -> Table {
    let mut t = Table::new();
    for s in m.select(name, &[("source", "passive")]) {
        let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        if replicas.contains(&get(keys[0])) {
            add(
                &mut t,
                &get(keys[0]),
                &get(keys[1]),
                &get(keys[2]),
                s.value as u64,
            );
        }
    }
    t
}

fn show(samples: &[Sample]) -> String {
    if samples.is_empty() {
        return "(empty)".into();
    }
    samples
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result elements keyed by one label.
fn by(samples: &[Sample], label: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .map(|s| (s.label(label).to_string(), s.value))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Get,
    Upgrade,
}

#[derive(Debug, Clone)]
struct Req {
    host: String,
    path: &'static str,
    kind: Kind,
}

/// The mix sent through one round-robin cursor. Requests of different hosts share it, so
/// per-replica counts differ between hosts, and traffic credited to the wrong replica or
/// host shows up as a count mismatch.
fn plan(sc: &Scenario) -> Vec<Req> {
    let req = |host: &str, path, kind| Req {
        host: host.to_string(),
        path,
        kind,
    };
    let mut out = Vec::new();
    for round in 0..ROUNDS {
        out.push(req(&sc.app_host, path::ROOT, Kind::Get));
        out.push(req(&sc.missing_host, path::ROOT, Kind::Get));
        if round % 2 == 0 {
            out.push(req(&sc.missing_host, path::WS, Kind::Upgrade));
        }
        if round % 3 == 0 {
            out.push(req(&sc.ws_host, path::WS, Kind::Upgrade));
        }
        // The backend's own http.NotFound: Traefik's body, but relayed, so a legitimate
        // 404 on every replica that must not count as a router miss.
        if round % 4 == 1 {
            out.push(req(&sc.notfound_host, path::NOTFOUND, Kind::Get));
        }
    }
    out
}

/// Collects every failed check, so one run reports all of Prometheus's wrong answers
/// rather than only the first.
#[derive(Default)]
struct Verdict {
    failures: Vec<String>,
    passed: Vec<String>,
}

impl Verdict {
    fn check(&mut self, ok: bool, what: &str, detail: impl FnOnce() -> String) {
        if ok {
            self.passed.push(what.to_string());
        } else {
            self.failures.push(format!("{what}: {}", detail()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_singles_out_the_broken_replica() {
    let t0 = Instant::now();
    paths::require_root().expect("precondition");
    let agent_bin = paths::agent_binary().expect("precondition: the agent binary");
    paths::traefik_binary().expect("precondition: Traefik");
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

    // Prometheus 2.42 picks its parser from the answer's Content-Type, so `up` with no
    // error proves the OpenMetrics parser (which insists on `# EOF`) accepted the
    // exposition, provided the agent answers Prometheus's Accept with OpenMetrics.
    let mut conn = HttpConn::connect(agent.addr).await.unwrap();
    let scrape = conn
        .round_trip(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: {}\r\nAccept: {}\r\nConnection: close\r\n\r\n",
                agent.addr,
                prometheus::SCRAPE_ACCEPT
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let ctype = scrape.header("content-type").unwrap_or("").to_string();
    v.check(
        scrape.status == 200
            && ctype.starts_with("application/openmetrics-text")
            && scrape.body_text().ends_with("# EOF\n"),
        "the agent answers Prometheus's scrape with OpenMetrics",
        || format!("status {}, Content-Type {ctype:?}", scrape.status),
    );
    for (family, kind) in [
        ("routeskew_http_responses", "counter"),
        ("routeskew_ws_upgrades", "counter"),
        ("routeskew_targets", "gauge"),
    ] {
        let meta = prom.metadata(family).await.unwrap();
        v.check(
            meta.iter()
                .any(|m| m.get("type").map(String::as_str) == Some(kind)),
            &format!("Prometheus knows {family} as a {kind}"),
            || format!("metadata {meta:?}"),
        );
    }

    // Before any traffic: the router-miss series alerts are computed from already exist
    // at zero, so the first miss is an increase Prometheus can see, not a new series.
    let zeros = prom
        .query(&format!(
            r#"routeskew_http_responses_total{{host="{missing}",class="router_miss",source="passive"}}"#
        ))
        .await
        .unwrap();
    let zero_replicas: BTreeSet<&str> = zeros
        .iter()
        .filter(|s| s.value == 0.0)
        .map(|s| s.label("replica"))
        .collect();
    v.check(
        zeros.len() == names.len() && zero_replicas == names.iter().map(String::as_str).collect(),
        "router-miss series of every replica exist at 0 before traffic",
        || show(&zeros),
    );

    // Traffic, checked on the client side first so a test-bed fault is not blamed on the
    // agent or on Prometheus.
    let mut want_http = Table::new();
    let mut want_ws = Table::new();
    let mut rr = bed.round_robin();
    let t_traffic = Instant::now();
    for req in plan(&sc) {
        match req.kind {
            Kind::Get => {
                let (i, resp) = rr.get(&req.host, req.path).await.unwrap();
                let r = &bed.replicas()[i];
                let ctx = format!("GET {}{} via {}", req.host, req.path, r.name);
                let (status, class) = if !r.routes(&req.host) {
                    (404, "router_miss")
                } else if req.path == path::NOTFOUND {
                    (404, "client_error")
                } else {
                    (200, "ok")
                };
                assert_eq!(resp.status, status, "{ctx}");
                assert_eq!(
                    expect::is_traefik_router_miss(&resp),
                    class == "router_miss",
                    "{ctx}: {}",
                    resp.head_without_date()
                );
                add(&mut want_http, &r.name, &req.host, class, 1);
            }
            Kind::Upgrade => {
                let (i, o) = rr.upgrade(&req.host, req.path).await.unwrap();
                let r = &bed.replicas()[i];
                let ctx = format!("upgrade {}{} via {}", req.host, req.path, r.name);
                let (status, class, outcome) = if r.routes(&req.host) {
                    (101, "ok", "upgraded")
                } else {
                    (404, "router_miss", "router_miss")
                };
                assert_eq!(o.status, status, "{ctx}");
                assert!(o.status != 101 || o.echoed, "{ctx}: no echo");
                // The upgrade request is an HTTP exchange too (101 counts as ok).
                add(&mut want_http, &r.name, &req.host, class, 1);
                add(&mut want_ws, &r.name, &req.host, outcome, 1);
            }
        }
    }
    let traffic_took = t_traffic.elapsed();
    let count = |t: &Table, replica: &str, host: &str, class: &str| {
        t.get(&(replica.into(), host.into(), class.into()))
            .copied()
            .unwrap_or(0)
    };
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

    // Router misses: only the broken replica, only the host it lacks, the exact number
    // sent there (plain requests and refused upgrades alike).
    let q = r#"sum by (replica, host) (routeskew_http_responses_total{class="router_miss"}) > 0"#;
    let misses = prom.query(q).await.unwrap();
    let got: BTreeMap<(String, String), f64> = misses
        .iter()
        .map(|s| ((s.label("replica").into(), s.label("host").into()), s.value))
        .collect();
    let want = BTreeMap::from([((broken.clone(), missing.clone()), miss_http as f64)]);
    v.check(got == want, q, || {
        format!("got {}, want {want:?}", show(&misses))
    });

    // The alerting form: a positive increase over the window, for that pair alone.
    let q = format!(
        r#"sum by (replica, host) (increase(routeskew_http_responses_total{{class="router_miss"}}[{WINDOW}])) > 0"#
    );
    let inc = prom.query(&q).await.unwrap();
    let got: BTreeSet<(String, String)> = inc
        .iter()
        .map(|s| (s.label("replica").into(), s.label("host").into()))
        .collect();
    v.check(
        got == BTreeSet::from([(broken.clone(), missing.clone())]),
        &q,
        || show(&inc),
    );

    // The per-replica router-miss ratio of the host: 1 on the broken replica, 0 elsewhere.
    let ratio = format!(
        r#"(sum by (replica) (routeskew_http_responses_total{{host="{missing}",class="router_miss"}}) / sum by (replica) (routeskew_http_responses_total{{host="{missing}"}}))"#
    );
    let ratios = prom.query(&ratio).await.unwrap();
    let want: BTreeMap<String, f64> = names
        .iter()
        .map(|n| (n.clone(), if *n == broken { 1.0 } else { 0.0 }))
        .collect();
    v.check(by(&ratios, "replica") == want, &ratio, || {
        format!("got {}, want {want:?}", show(&ratios))
    });

    // Skew: each replica's ratio minus the fleet's average ratio. The broken one is 2/3
    // above it, the healthy ones 1/3 below; a threshold between singles it out.
    let skew = format!("{ratio} - on() group_left() avg({ratio})");
    let skews = prom.query(&skew).await.unwrap();
    let n = names.len() as f64;
    let skew_ok = skews.len() == names.len()
        && skews.iter().all(|s| {
            let want = if s.label("replica") == broken {
                1.0 - 1.0 / n
            } else {
                -1.0 / n
            };
            (s.value - want).abs() < 1e-9
        });
    v.check(skew_ok, &skew, || {
        format!(
            "got {}, want {broken} at 1-1/{n}, the others at -1/{n}",
            show(&skews)
        )
    });
    let alert = format!("({skew}) > 0.25");
    let firing = prom.query(&alert).await.unwrap();
    let got: BTreeSet<&str> = firing.iter().map(|s| s.label("replica")).collect();
    v.check(got == BTreeSet::from([broken.as_str()]), &alert, || {
        format!("got {}, want only {broken}", show(&firing))
    });

    // WebSocket upgrades of the host: refused by Traefik on the broken replica only,
    // upgraded on the others.
    let q = r#"sum by (replica) (routeskew_ws_upgrades_total{outcome="router_miss"}) > 0"#;
    let ws_miss = prom.query(q).await.unwrap();
    let want = BTreeMap::from([(broken.clone(), miss_ws as f64)]);
    v.check(by(&ws_miss, "replica") == want, q, || {
        format!("got {}, want {want:?}", show(&ws_miss))
    });
    let q = format!(
        r#"sum by (replica) (routeskew_ws_upgrades_total{{host="{missing}",outcome="upgraded"}}) > 0"#
    );
    let ws_up = prom.query(&q).await.unwrap();
    let want: BTreeMap<String, f64> = healthy
        .iter()
        .map(|h| (h.clone(), count(&want_ws, h, &missing, "upgraded") as f64))
        .collect();
    v.check(by(&ws_up, "replica") == want, &q, || {
        format!("got {}, want {want:?}", show(&ws_up))
    });

    // The agent's own health, as Prometheus sees it.
    let q = r#"routeskew_targets{state="attached"}"#;
    let attached = prom.query(q).await.unwrap();
    v.check(
        attached.len() == 1 && attached[0].value == names.len() as f64,
        q,
        || format!("got {}, want {}", show(&attached), names.len()),
    );
    // The kernel's counters reach /metrics on the agent's 1 s housekeeping tick, not with
    // each event, so they may trail the traffic counts above by a tick and a scrape.
    let q = "sum(routeskew_sensor_events_total) > 0";
    let t_kernel = Instant::now();
    let events = loop {
        let events = prom.query(q).await.unwrap();
        if !events.is_empty() || t_kernel.elapsed() > KERNEL_COUNTERS_TIMEOUT {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    v.check(events.len() == 1, q, || {
        format!("{} after {KERNEL_COUNTERS_TIMEOUT:?}", show(&events))
    });
    // `sum` of an absent metric is an empty result, not 0: one element is required.
    let q = "sum(routeskew_sensor_lost_events_total)";
    let lost = prom.query(q).await.unwrap();
    v.check(lost.len() == 1 && lost[0].value == 0.0, q, || {
        format!("got {}, want one element at 0", show(&lost))
    });
    let q = r#"up{job="routeskew"}"#;
    let up = prom.query(q).await.unwrap();
    v.check(up.len() == 1 && up[0].value == 1.0, q, || show(&up));
    let targets = prom.targets().await.unwrap();
    v.check(
        targets.len() == 1 && targets[0].health == "up" && targets[0].last_error.is_empty(),
        "the agent is Prometheus's only target, up and scraped without error",
        || format!("{targets:?}"),
    );

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
