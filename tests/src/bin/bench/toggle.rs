//! `--toggle`: one agent for the whole run, and Traefik moved in and out of the cgroup it
//! watches between short wrk runs.
//!
//! On a noisy shared machine the throughput of one second differs from the next by more
//! than the agent's cost, and a round that starts and stops the agent takes several
//! seconds per pair. Moving a process between cgroups takes microseconds, so "captured"
//! and "not captured" alternate second by second. In the "not captured" half the hooks
//! stay attached and see every syscall; what they cost there is the `--hooks-only` figure,
//! measured with agent start and stop, reported apart. Plaintext only: a uprobe traps
//! whichever cgroup its process is in.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use routeskew_testbed::{Agent, Testbed};

use crate::args::Args;
use crate::measure::{
    agent_config, agent_totals, bench_cgroup, kernel_delta, kernel_stats, process_cpu, AgentView,
    Round,
};
use crate::wrk::run_wrk;

fn move_to(cg: &Path, pid: u32) -> Result<()> {
    std::fs::write(cg.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("moving pid {pid} to {}", cg.display()))
}

/// Traefik back in its own cgroup on every exit path, so that the test bed's clean-up
/// finds it there.
struct Home<'a> {
    cgroup: &'a Path,
    pid: u32,
}

impl Drop for Home<'_> {
    fn drop(&mut self) {
        if let Err(e) = move_to(self.cgroup, self.pid) {
            eprintln!("bench: {e:#}");
        }
    }
}

pub(crate) async fn measure(a: &Args, bed: &Testbed, url: &str, host: &str) -> Result<Vec<Round>> {
    let replica = &bed.replicas()[0];
    let parked = bench_cgroup(bed, "bench-parked")?;
    let mut config = agent_config(a, &a.agent_args, bed)?;
    config.discovery =
        routeskew_testbed::agent::Discovery::Cgroups(vec![replica.cgroup_path.clone()]);
    let mut agent = Agent::start(config).await?;
    let _home = Home {
        cgroup: &replica.cgroup_path,
        pid: replica.pid,
    };
    eprintln!("warm-up {} s against {url} (captured) ...", a.warmup);
    if a.warmup > 0 {
        run_wrk(a, url, host, a.warmup)?;
    }
    let mut rounds = Vec::new();
    for i in 0..a.rounds {
        let captured_first = i % 2 == 1;
        let mut with = None;
        let mut view = None;
        if captured_first {
            let (w, v) =
                captured_run(a, &agent, &replica.cgroup_path, replica.pid, url, host).await?;
            with = Some(w);
            view = Some(v);
        }
        move_to(&parked, replica.pid)?;
        let kernel_before = kernel_stats(a, agent.pid());
        let without = run_wrk(a, url, host, a.duration)?;
        let kernel_without = kernel_delta(&kernel_before, &kernel_stats(a, agent.pid()));
        if !captured_first {
            let (w, v) =
                captured_run(a, &agent, &replica.cgroup_path, replica.pid, url, host).await?;
            with = Some(w);
            view = Some(v);
        }
        eprintln!(
            "pair {}: not captured {:.0} req/s; captured {:.0} req/s",
            i + 1,
            without.rps,
            with.map(|w| w.rps).unwrap_or_default()
        );
        rounds.push(Round {
            without,
            with,
            agent: view,
            kernel_without,
        });
    }
    if !agent.running() {
        anyhow::bail!("the agent exited during the run:\n{}", agent.log_tail());
    }
    Ok(rounds)
}

async fn captured_run(
    a: &Args,
    agent: &Agent,
    watched: &Path,
    pid: u32,
    url: &str,
    host: &str,
) -> Result<(crate::wrk::WrkResult, AgentView)> {
    move_to(watched, pid)?;
    let before = agent_totals(&agent.scrape().await?, host);
    let cpu_before = process_cpu(agent.pid())?;
    let kernel_before = kernel_stats(a, agent.pid());
    let result = run_wrk(a, url, host, a.duration)?;
    let kernel = kernel_delta(&kernel_before, &kernel_stats(a, agent.pid()));
    // Whatever is still in the ring arrives within the agent's drain period (20 ms).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = agent_totals(&agent.scrape().await?, host);
    let cpu_after = process_cpu(agent.pid())?;
    Ok((
        result,
        AgentView {
            counted: after.counted - before.counted,
            lost: after.lost - before.lost,
            cpu: cpu_after.saturating_sub(cpu_before),
            kernel,
        },
    ))
}
