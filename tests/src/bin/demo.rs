//! `cargo xtask demo`: three real Traefik replicas, the second missing the router of one
//! host (its HTTP and its WebSocket endpoint, as in the incident), the agent watching them,
//! and client traffic spread over the replicas like a Service does. Prints a per-replica
//! table from the agent's /metrics that points at the broken replica, then keeps
//! everything running with light traffic until Ctrl-C or `--seconds N`.
//!
//! `--no-agent` runs the same test bed and traffic and tabulates what the clients saw
//! (useful to check the test bed where the agent cannot run).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use routeskew_testbed::{
    path, Agent, AgentConfig, Metrics, RoundRobin, Scenario, Testbed, TestbedConfig,
};
use tokio::signal::unix::{signal, SignalKind};

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

/// What the clients saw per replica, for `--no-agent` and as a cross-check.
#[derive(Default, Clone)]
struct ClientTally {
    requests: u64,
    traefik_404: u64,
    ws_upgraded: u64,
    ws_404: u64,
    bad_gateway: u64,
}

/// One round of mixed traffic: what an app whose terminal page fetches a token and opens
/// a WebSocket does, plus ordinary page loads and the odd broken link.
async fn one_round(
    rr: &mut RoundRobin,
    sc: &Scenario,
    round: u64,
    tally: &mut BTreeMap<usize, ClientTally>,
) -> Result<()> {
    for _ in 0..3 {
        let (i, _) = rr.get(&sc.app_host, path::ROOT).await?;
        let t = tally.entry(i).or_default();
        t.requests += 1;
    }
    let (i, r) = rr.get(&sc.missing_host, path::ROOT).await?;
    let t = tally.entry(i).or_default();
    t.requests += 1;
    t.traefik_404 += u64::from(routeskew_testbed::expect::is_traefik_router_miss(&r));
    let (i, o) = rr.upgrade(&sc.missing_host, path::WS).await?;
    let t = tally.entry(i).or_default();
    t.requests += 1;
    t.ws_upgraded += u64::from(o.upgraded());
    t.ws_404 += u64::from(o.status == 404);
    let (i, o) = rr.upgrade(&sc.ws_host, path::WS).await?;
    let t = tally.entry(i).or_default();
    t.requests += 1;
    t.ws_upgraded += u64::from(o.upgraded());
    t.ws_404 += u64::from(o.status == 404);
    if round.is_multiple_of(4) {
        let (i, _) = rr.get(&sc.notfound_host, path::NOTFOUND).await?;
        tally.entry(i).or_default().requests += 1;
    }
    if round.is_multiple_of(10) {
        let (i, r) = rr.get(&sc.refused_host, path::ROOT).await?;
        let t = tally.entry(i).or_default();
        t.requests += 1;
        t.bad_gateway += u64::from(r.status == 502);
    }
    Ok(())
}

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

fn rows_from_clients(tally: &BTreeMap<usize, ClientTally>, bed: &Testbed) -> Vec<Row> {
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

async fn show(agent: Option<&Agent>, tally: &BTreeMap<usize, ClientTally>, bed: &Testbed) {
    match agent {
        Some(a) => match a.scrape().await {
            Ok(m) => print_table(
                "routeskew (from the agent's /metrics)",
                &rows_from_metrics(&m, bed),
            ),
            Err(e) => println!("scrape failed: {e:#}"),
        },
        None => print_table(
            "what the clients saw (--no-agent)",
            &rows_from_clients(tally, bed),
        ),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    routeskew_testbed::paths::require_root()?;

    println!("starting 3 Traefik replicas (one missing a router) and the backend ...");
    let mut bed = Testbed::start(TestbedConfig::default()).await?;
    let sc = bed.scenario().clone();
    for r in bed.replicas() {
        println!(
            "  {:<10} pid {:<7} web http://{}  api http://{}  cgroup {}{}",
            r.name,
            r.pid,
            r.web_addr,
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
    let mut tally = BTreeMap::new();
    let mut round = 0u64;
    println!("sending mixed traffic round-robin for {} s ...", args.burst);
    let burst_end = Instant::now() + Duration::from_secs(args.burst);
    while Instant::now() < burst_end {
        one_round(&mut rr, &sc, round, &mut tally).await?;
        round += 1;
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    show(agent.as_ref(), &tally, &bed).await;

    if let Some(a) = &agent {
        let broken = bed
            .broken()
            .map(|r| r.web_addr.to_string())
            .unwrap_or_default();
        println!("\nmetrics: {}", a.metrics_url());
        println!("try:");
        println!(
            "  curl -s {} | grep -E 'routeskew_(http_responses|ws_upgrades)_total' | grep -v ' 0$'",
            a.metrics_url()
        );
        println!("  curl -si -H 'Host: {}' http://{broken}/", sc.missing_host);
    }
    if args.seconds == 0 {
        println!("\nkeeping everything up with light traffic; Ctrl-C to stop");
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
