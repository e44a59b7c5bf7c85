//! `cargo xtask soak [--minutes N] [--report-every SECS]`: the agent against real Traefik
//! for a long while, under mixed traffic, replica restarts and hostile requests.
//!
//! Three Traefik replicas (the second missing the router of one host), each with a
//! plaintext `web` and a TLS `websecure` entrypoint, in front of the Go backend, and the
//! agent watching their cgroups with its default settings (`--agent-arg` adds to them).
//! For the whole run, concurrently:
//!
//! - mixed traffic with ground truth (`traffic`): plaintext HTTP/1.1 keep-alive and
//!   close, WebSocket upgrades, HTTP/1.1, HTTP/2 and `wss` over TLS, router misses,
//!   backend 404s, upstream failures; every answer tallied per replica and host label;
//! - replica restarts (`restart`), one replica at a time, in turn;
//! - hostile requests (`hostile`), a few a second.
//!
//! Every `--report-every` seconds traffic pauses, the agent's passive counters are
//! compared with the ground truth once they settle, and its RSS, CPU and drop counters
//! are sampled (`window`): one row each. The end prints a markdown table and a verdict,
//! and the exit status is non-zero if any comparison mismatched, any event was lost, or
//! the load generator cannot vouch for its ground truth.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use routeskew_testbed::agent::Discovery;
use routeskew_testbed::{paths, Agent, AgentConfig, Metrics, Testbed, TestbedConfig};
use tokio::signal::unix::{signal, SignalKind};

mod args;
mod hostile;
mod report;
mod restart;
mod sample;
mod shared;
mod traffic;
mod truth;
mod window;

use report::{Outcome, Row};
use shared::{Shared, Target};

/// Pause between two visits of the TLS traffic task (each starts a curl).
const TLS_PACE: Duration = Duration::from_millis(40);
/// Pause between two hostile requests.
const HOSTILE_EVERY: Duration = Duration::from_millis(250);

/// `routeskew_sensor_mode` of every replica: `name=mode`.
fn sensor_modes(m: &Metrics) -> String {
    let mut modes: Vec<String> = m
        .select("routeskew_sensor_mode", &[])
        .filter(|s| s.value == 1.0)
        .map(|s| {
            let get = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            format!("{}={}", get("replica"), get("mode"))
        })
        .collect();
    modes.sort();
    modes.join(", ")
}

/// The run itself; `rows` and `outcome` fill as it goes, so an interrupted run still
/// reports what it measured.
async fn soak(
    a: &args::Args,
    bed: &mut Testbed,
    agent: &mut Agent,
    rows: &mut Vec<Row>,
    outcome: &mut Outcome,
) -> Result<()> {
    let targets = bed
        .replicas()
        .iter()
        .map(Target::from_replica)
        .collect::<Option<Vec<_>>>()
        .context("every replica needs a websecure entrypoint")?;
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    let shared = Arc::new(Shared::new(targets, bed.scenario().clone()));
    println!("sensor modes: {}", sensor_modes(&agent.scrape().await?));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    println!(
        "traffic for {} min, a comparison every {} s, a restart every {} s (down {} s), hostile seed {seed}",
        a.duration.as_secs() / 60,
        a.report_every.as_secs(),
        a.restart_every.as_secs(),
        a.downtime.as_secs()
    );
    let mut windows = window::Windows::new(agent, names.clone(), a.settle_timeout)?;
    let tasks = [
        tokio::spawn(traffic::plain(shared.clone(), a.pace)),
        tokio::spawn(traffic::secure(shared.clone(), TLS_PACE)),
        tokio::spawn(hostile::run(shared.clone(), HOSTILE_EVERY, seed)),
    ];
    let end = windows.started + a.duration;
    let mut next_report = windows.started + a.report_every;
    let mut next_restart = windows.started + a.restart_every;
    let mut restarts = 0u32;
    let mut pick_ups: Vec<f64> = Vec::new();
    let result: Result<()> = async {
        loop {
            let wake = next_report.min(next_restart).min(end);
            tokio::time::sleep_until(wake.into()).await;
            let now = Instant::now();
            if !agent.running() {
                outcome.agent_died = true;
                anyhow::bail!("the agent died:\n{}", agent.log_tail());
            }
            if now >= end {
                return Ok(());
            }
            if now >= next_restart {
                let index = restarts as usize % names.len();
                let r = restart::restart(bed, agent, &shared, index, a.downtime, a.rejoin_at_once)
                    .await?;
                restarts += 1;
                println!(
                    "restart {restarts}: {} pid {} -> {}, out of rotation {:.1} s, \
                     agent watching the new process {:.2} s after it served",
                    r.name,
                    r.old_pid,
                    r.new_pid,
                    r.out_of_rotation.as_secs_f64(),
                    r.pick_up.as_secs_f64()
                );
                pick_ups.push(r.pick_up.as_secs_f64());
                next_restart += a.restart_every;
            }
            if now >= next_report {
                rows.push(windows.compare(agent, &shared, restarts).await?);
                next_report += a.report_every;
            }
        }
    }
    .await;
    // The last comparison, after every visit has ended.
    shared.stop();
    for t in tasks {
        let _ = t.await;
    }
    if result.is_ok() {
        rows.push(windows.compare(agent, &shared, restarts).await?);
    }
    let m = agent.scrape().await?;
    println!("sensor modes at the end: {}", sensor_modes(&m));
    let truth = shared.truth().clone();
    println!(
        "ground truth: {} answered requests ({} unexpected, {} client errors); hostile: {} sent, \
         {} answered by Traefik's handlers (in the ground truth), {} by Go's server itself \
         (tolerated); {} connections refused while down, {} accepted",
        truth.counts.sent,
        truth.counts.unexpected,
        truth.counts.client_errors,
        truth.counts.hostile,
        truth.counts.hostile_routed,
        truth.counts.hostile_rejected,
        truth.counts.refused_down,
        truth.counts.accepted_down
    );
    if !pick_ups.is_empty() {
        let max = pick_ups.iter().copied().fold(0.0, f64::max);
        let mean = pick_ups.iter().sum::<f64>() / pick_ups.len() as f64;
        println!(
            "restarts: {}, the agent watched each new process {mean:.2} s (mean) / {max:.2} s (max) \
             after it served{}",
            pick_ups.len(),
            if a.rejoin_at_once {
                " (replicas rejoined at once)"
            } else {
                " (replicas rejoined after that)"
            }
        );
    }
    let tolerated: u64 = truth.tolerated.values().sum();
    let got = window::observed(&m, &names);
    // Beyond what the ground truth itself has on those keys.
    let counted_other: u64 = got
        .http
        .iter()
        .filter(|(k, _)| truth.tolerated.contains_key(*k))
        .map(|(k, v)| v.saturating_sub(truth.http.get(k).copied().unwrap_or(0)))
        .sum();
    println!(
        "answers the agent may count or not (hostile ones Go's server wrote itself, {}; API answers \
         to readiness checks of restarted replicas, {}): {tolerated}; the agent counted {counted_other}",
        truth.counts.hostile_rejected, truth.counts.api_answers
    );
    outcome.unexpected = truth.counts.unexpected;
    outcome.client_errors = truth.counts.client_errors;
    outcome.accepted_down = truth.counts.accepted_down;
    outcome.drops = windows.drops.clone();
    result
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = args::parse(std::env::args().skip(1))?;
    paths::require_root()?;
    let agent_bin = paths::agent_binary()?;
    println!(
        "starting 3 Traefik replicas (one missing a router, web + websecure) and the backend ..."
    );
    let mut bed = Testbed::start(TestbedConfig {
        tls: true,
        // Half a million requests would fill the disk with access-log lines.
        access_log: false,
        ..TestbedConfig::default()
    })
    .await?;
    println!("starting the agent ...");
    // Pinned to the test bed's cgroups: a Traefik another test starts on this machine
    // during a long run would otherwise join the watched set (the first 30-minute run
    // met one: three foreign replicas named like ours for 8 s).
    let cgroups = bed
        .replicas()
        .iter()
        .map(|r| r.cgroup_path.clone())
        .collect();
    let mut agent = Agent::start(AgentConfig {
        binary: Some(agent_bin),
        discovery: Discovery::Cgroups(cgroups),
        extra_args: a.agent_args.clone(),
        ..AgentConfig::for_testbed(&bed)
    })
    .await?;
    println!("  {}", agent.command);
    let mut rows = Vec::new();
    let mut outcome = Outcome::default();
    let mut term = signal(SignalKind::terminate())?;
    let result = tokio::select! {
        r = soak(&a, &mut bed, &mut agent, &mut rows, &mut outcome) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    };
    if !agent.running() {
        outcome.agent_died = true;
    }
    let failed_log =
        (result.is_err() || rows.iter().any(|r| r.mismatches > 0)).then(|| agent.log_tail());
    agent.stop();
    let cleanup = bed.stop();

    println!(
        "\n## routeskew soak: {:.0} minutes, 3 Traefik replicas, mixed traffic, restarts, hostile requests\n",
        a.duration.as_secs_f64() / 60.0
    );
    print!("{}", report::markdown(&rows));
    let drops: Vec<String> = outcome
        .drops
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "\ndrop counters at the last comparison: {}",
        drops.join(", ")
    );
    let (passed, line) = report::verdict(&rows, &outcome);
    println!("\n{line}");
    if let Some(log) = failed_log {
        eprintln!("agent log (tail):\n{log}");
    }
    cleanup.context("cleaning up the test bed")?;
    result?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}
