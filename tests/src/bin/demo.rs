//! `cargo xtask demo`: three real Traefik replicas, the second missing the router of one
//! host (its HTTP and its WebSocket endpoint, as in the incident), the agent watching them,
//! and client traffic spread over the replicas like a Service does: first plaintext to
//! their `web` entrypoints, then HTTPS (HTTP/1.1) and `wss` to their `websecure`
//! entrypoints, where the agent only sees the plaintext through its Go `crypto/tls`
//! uprobes. Prints a per-replica table from the agent's /metrics for each phase, both
//! pointing at the broken replica, then keeps everything running with light traffic of
//! both kinds until Ctrl-C or `--seconds N`.
//!
//! `--no-agent` runs the same test bed and traffic and tabulates what the clients saw
//! (useful to check the test bed where the agent cannot run).
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use routeskew_testbed::plans::{self, Mix};
use routeskew_testbed::{
    tls, Agent, AgentConfig, Metrics, RoundRobin, Scenario, Testbed, TestbedConfig,
};
use tokio::signal::unix::{signal, SignalKind};

/// How long curl keeps an upgraded `wss` connection open (it speaks no WebSocket).
const WSS_HOLD: Duration = Duration::from_millis(300);

struct Args {
    seconds: u64,
    burst: u64,
    no_agent: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        seconds: 0,
        burst: 8,
        no_agent: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{what} needs a value"))?
                .parse()
                .with_context(|| format!("{what} takes a number of seconds"))
        };
        match a.as_str() {
            "--seconds" => args.seconds = num("--seconds")?,
            "--burst" => args.burst = num("--burst")?,
            "--no-agent" => args.no_agent = true,
            "-h" | "--help" => {
                println!(
                    "usage: demo [--seconds N (0 = until Ctrl-C)] [--burst SECONDS] [--no-agent]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

/// What the clients saw per replica index.
type Tally = BTreeMap<usize, ClientTally>;

/// What the clients saw per replica, for `--no-agent` and as a cross-check.
#[derive(Default, Clone)]
struct ClientTally {
    requests: u64,
    traefik_404: u64,
    ws_upgraded: u64,
    ws_404: u64,
    bad_gateway: u64,
}

/// One round of TLS traffic through the `websecure` entrypoints
/// ([`plans::demo_tls_round`]). curl makes the requests (see `routeskew_testbed::tls`),
/// off the async runtime.
async fn tls_round(rr: &mut RoundRobin, sc: &Scenario, tally: &mut Tally) -> Result<()> {
    for visit in plans::demo_tls_round(sc) {
        let (i, addr) = rr.pick();
        let (host, path, n) = (visit.host.clone(), visit.path, visit.n);
        let t = tally.entry(i).or_default();
        match visit.kind {
            Mix::Get => {
                let codes = tokio::task::spawn_blocking(move || {
                    tls::curl_https(addr, &host, &vec![path; n])
                })
                .await??;
                t.requests += codes.len() as u64;
                // Only the host the broken replica lacks answers 404 in this round: a 404
                // is its router miss.
                t.traefik_404 += codes.iter().filter(|&&c| c == 404).count() as u64;
            }
            Mix::Upgrade => {
                let code = tokio::task::spawn_blocking(move || {
                    tls::curl_wss_upgrade(addr, &host, path, WSS_HOLD)
                })
                .await??;
                t.requests += 1;
                t.ws_upgraded += u64::from(code == 101);
                t.ws_404 += u64::from(code == 404);
            }
        }
    }
    Ok(())
}

/// One round of mixed plaintext traffic ([`plans::demo_round`]), each request on a new
/// connection to the next replica.
async fn one_round(
    rr: &mut RoundRobin,
    sc: &Scenario,
    round: u64,
    tally: &mut Tally,
) -> Result<()> {
    for visit in plans::demo_round(sc, round) {
        match visit.kind {
            Mix::Get => {
                let (i, r) = rr.get(&visit.host, visit.path).await?;
                let t = tally.entry(i).or_default();
                t.requests += 1;
                t.traefik_404 += u64::from(routeskew_testbed::expect::is_traefik_router_miss(&r));
                t.bad_gateway += u64::from(r.status == 502);
            }
            Mix::Upgrade => {
                let (i, o) = rr.upgrade(&visit.host, visit.path).await?;
                let t = tally.entry(i).or_default();
                t.requests += 1;
                t.ws_upgraded += u64::from(o.upgraded());
                t.ws_404 += u64::from(o.status == 404);
            }
        }
    }
    Ok(())
}

#[derive(Clone)]
struct Row {
    replica: String,
    requests: f64,
    router_miss: f64,
    ws_upgraded: f64,
    ws_router_miss: f64,
    upstream: f64,
}

fn rows_from_metrics(m: &Metrics, bed: &Testbed) -> Vec<Row> {
    bed.replicas()
        .iter()
        .map(|r| {
            let n = r.name.as_str();
            Row {
                replica: r.name.clone(),
                requests: m.sum(
                    "routeskew_http_responses_total",
                    &[("replica", n), ("source", "passive")],
                ),
                router_miss: m.sum(
                    "routeskew_http_responses_total",
                    &[
                        ("replica", n),
                        ("source", "passive"),
                        ("class", "router_miss"),
                    ],
                ),
                ws_upgraded: m.sum(
                    "routeskew_ws_upgrades_total",
                    &[
                        ("replica", n),
                        ("source", "passive"),
                        ("outcome", "upgraded"),
                    ],
                ),
                ws_router_miss: m.sum(
                    "routeskew_ws_upgrades_total",
                    &[
                        ("replica", n),
                        ("source", "passive"),
                        ("outcome", "router_miss"),
                    ],
                ),
                upstream: m.sum(
                    "routeskew_upstream_connect_failures_total",
                    &[("replica", n)],
                ),
            }
        })
        .collect()
}

/// What changed from `before` to `after` (same replicas, same order): one phase's traffic.
fn rows_since(after: &[Row], before: &[Row]) -> Vec<Row> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| Row {
            replica: a.replica.clone(),
            requests: a.requests - b.requests,
            router_miss: a.router_miss - b.router_miss,
            ws_upgraded: a.ws_upgraded - b.ws_upgraded,
            ws_router_miss: a.ws_router_miss - b.ws_router_miss,
            upstream: a.upstream - b.upstream,
        })
        .collect()
}

fn rows_from_clients(tally: &Tally, bed: &Testbed) -> Vec<Row> {
    bed.replicas()
        .iter()
        .map(|r| {
            let t = tally.get(&r.index).cloned().unwrap_or_default();
            Row {
                replica: r.name.clone(),
                requests: t.requests as f64,
                router_miss: (t.traefik_404 + t.ws_404) as f64,
                ws_upgraded: t.ws_upgraded as f64,
                ws_router_miss: t.ws_404 as f64,
                upstream: t.bad_gateway as f64,
            }
        })
        .collect()
}

fn print_table(title: &str, rows: &[Row]) {
    // A replica stands out when it misses routes its siblings serve: skew, not volume.
    let healthy_min = rows
        .iter()
        .map(|r| r.router_miss)
        .fold(f64::INFINITY, f64::min);
    println!("\n{title}");
    println!(
        "{:<12} {:>9} {:>12} {:>14} {:>12} {:>15} {:>18}",
        "replica",
        "requests",
        "router_miss",
        "router-miss %",
        "ws upgraded",
        "ws router_miss",
        "upstream failures"
    );
    println!("{}", "-".repeat(98));
    for r in rows {
        let pct = if r.requests > 0.0 {
            100.0 * r.router_miss / r.requests
        } else {
            0.0
        };
        let mark = if r.router_miss > healthy_min && r.router_miss > 0.0 {
            "  <== BROKEN: answers router misses its siblings route"
        } else {
            ""
        };
        println!(
            "{:<12} {:>9} {:>12} {:>13.1}% {:>12} {:>15} {:>18}{mark}",
            r.replica, r.requests, r.router_miss, pct, r.ws_upgraded, r.ws_router_miss, r.upstream
        );
    }
}

/// The current totals: from the agent's /metrics, or (`--no-agent`) from the clients.
async fn rows(agent: Option<&Agent>, tally: &Tally, bed: &Testbed) -> Result<Vec<Row>> {
    Ok(match agent {
        Some(a) => rows_from_metrics(&a.scrape().await?, bed),
        None => rows_from_clients(tally, bed),
    })
}

fn source(agent: Option<&Agent>) -> &'static str {
    match agent {
        Some(_) => "routeskew, from the agent's /metrics",
        None => "what the clients saw (--no-agent)",
    }
}

async fn show(agent: Option<&Agent>, tally: &Tally, bed: &Testbed) {
    match rows(agent, tally, bed).await {
        Ok(r) => print_table(&format!("{}: all traffic so far", source(agent)), &r),
        Err(e) => println!("scrape failed: {e:#}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    routeskew_testbed::paths::require_root()?;

    println!("starting 3 Traefik replicas (one missing a router) and the backend ...");
    let mut bed = Testbed::start(TestbedConfig {
        tls: true,
        ..TestbedConfig::default()
    })
    .await?;
    let sc = bed.scenario().clone();
    for r in bed.replicas() {
        println!(
            "  {:<10} pid {:<7} web http://{}  websecure https://{}  api http://{}  cgroup {}{}",
            r.name,
            r.pid,
            r.web_addr,
            r.websecure_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            r.api_addr,
            r.cgroup_path.display(),
            if r.broken {
                format!(
                    "  (started WITHOUT the router for {})",
                    sc.missing_on_broken().join(", ")
                )
            } else {
                String::new()
            }
        );
    }
    println!("  backend    http://{}", bed.backend_addr());

    let mut agent = if args.no_agent {
        None
    } else {
        println!("starting the agent ...");
        let a = Agent::start(AgentConfig::for_testbed(&bed)).await?;
        println!("  {}", a.command);
        Some(a)
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut rr = bed.round_robin();
    let mut rr_tls = RoundRobin::new(
        bed.replicas()
            .iter()
            .filter_map(|r| r.websecure_addr)
            .collect(),
    );
    let mut tally = Tally::new();
    let mut round = 0u64;
    let start = rows(agent.as_ref(), &tally, &bed).await?;
    println!(
        "sending mixed plaintext traffic (web) round-robin for {} s ...",
        args.burst
    );
    let burst_end = Instant::now() + Duration::from_secs(args.burst);
    while Instant::now() < burst_end {
        one_round(&mut rr, &sc, round, &mut tally).await?;
        round += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_plain = rows(agent.as_ref(), &tally, &bed).await?;
    print_table(
        &format!("{}: plaintext (web)", source(agent.as_ref())),
        &rows_since(&after_plain, &start),
    );

    println!(
        "\nsending HTTPS and wss traffic (websecure, HTTP/1.1) round-robin for {} s ...",
        args.burst
    );
    let burst_end = Instant::now() + Duration::from_secs(args.burst);
    while Instant::now() < burst_end {
        tls_round(&mut rr_tls, &sc, &mut tally).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_tls = rows(agent.as_ref(), &tally, &bed).await?;
    let tls_rows = rows_since(&after_tls, &after_plain);
    print_table(
        &format!(
            "{}: TLS (websecure; seen inside Traefik, past the decryption)",
            source(agent.as_ref())
        ),
        &tls_rows,
    );
    if agent.is_some() && tls_rows.iter().all(|r| r.requests == 0.0) {
        println!(
            "  the agent saw none of the TLS traffic: its uprobes are not attached \
             (see routeskew_targets{{state=\"failed\"}} and its log)"
        );
    }

    if let Some(a) = &agent {
        let broken = bed
            .broken()
            .map(|r| r.web_addr.to_string())
            .unwrap_or_default();
        let broken_tls = bed
            .broken()
            .and_then(|r| r.websecure_addr)
            .map(|a| a.port())
            .unwrap_or_default();
        println!("\nmetrics: {}", a.metrics_url());
        println!("try:");
        println!(
            "  curl -s {} | grep -E 'routeskew_(http_responses|ws_upgrades)_total' | grep -v ' 0$'",
            a.metrics_url()
        );
        println!("  curl -si -H 'Host: {}' http://{broken}/", sc.missing_host);
        println!(
            "  curl -sik --resolve {h}:{broken_tls}:127.0.0.1 https://{h}:{broken_tls}/",
            h = sc.missing_host
        );
    }
    if args.seconds == 0 {
        println!("\nkeeping everything up with light traffic (plaintext and TLS); Ctrl-C to stop");
    } else {
        println!(
            "\nkeeping everything up with light traffic for {} s",
            args.seconds
        );
    }

    let end =
        (args.seconds > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(args.seconds));
    let mut light = tokio::time::interval(Duration::from_millis(500));
    let mut refresh = tokio::time::interval(Duration::from_secs(5));
    refresh.tick().await;
    loop {
        let until_end = async {
            match end {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { println!("\ninterrupted"); break; }
            _ = term.recv() => { println!("\nterminated"); break; }
            _ = until_end => break,
            _ = light.tick() => {
                if let Err(e) = one_round(&mut rr, &sc, round, &mut tally).await {
                    println!("traffic error: {e:#}");
                }
                // TLS rounds start curl processes: every fourth tick.
                if round.is_multiple_of(4) {
                    if let Err(e) = tls_round(&mut rr_tls, &sc, &mut tally).await {
                        println!("TLS traffic error: {e:#}");
                    }
                }
                round += 1;
            }
            _ = refresh.tick() => {
                if let Some(a) = agent.as_mut() {
                    if !a.running() {
                        println!("the agent exited:\n{}", a.log_tail());
                        break;
                    }
                }
                show(agent.as_ref(), &tally, &bed).await;
            }
        }
    }
    show(agent.as_ref(), &tally, &bed).await;
    println!("\ncleaning up ...");
    if let Some(mut a) = agent.take() {
        a.stop();
    }
    bed.stop()?;
    println!("done: every replica, the backend, the agent and their cgroups are gone");
    Ok(())
}
