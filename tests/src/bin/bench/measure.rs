//! The measurements: wrk without and with the agent, and the agent's own account of each
//! run (what it counted, lost and spent, and its kernel programs' run time).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use routeskew_testbed::{Agent, AgentConfig, Testbed};

use crate::args::Args;
use crate::wrk::{run_wrk, ticks_to_duration, WrkResult};

#[derive(Clone)]
pub(crate) struct Round {
    pub(crate) without: WrkResult,
    pub(crate) with: Option<WrkResult>,
    /// The agent's own account of its run.
    pub(crate) agent: Option<AgentView>,
    /// `--toggle --bpf-stats`: the agent's kernel programs during the run without.
    pub(crate) kernel_without: Vec<(String, u64, Duration)>,
}

/// What the agent reported about one run.
#[derive(Debug, Clone)]
pub(crate) struct AgentView {
    /// Responses it counted for the benchmark host.
    pub(crate) counted: f64,
    /// Events the kernel could not hand over (ring buffer full).
    pub(crate) lost: f64,
    /// CPU time of the agent process (user + system) during the wrk run.
    pub(crate) cpu: Duration,
    /// Per kernel program: (runs, run time) during the wrk run, with `--bpf-stats`.
    pub(crate) kernel: Vec<(String, u64, Duration)>,
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub(crate) fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after `)`.
    let ticks: u64 = [11, 12]
        .iter()
        .map(|&i| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    Ok(ticks_to_duration(ticks))
}

/// Ids of the BPF programs process `pid` holds (program and link fds name them in their
/// fdinfo). Other sensors on a shared machine load programs of the same names; only the
/// benchmarked agent's are counted.
pub(crate) fn program_ids_of(pid: u32) -> std::collections::HashSet<u32> {
    let mut ids = std::collections::HashSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        ids.extend(text.lines().filter_map(|l| {
            l.strip_prefix("prog_id:")
                .and_then(|v| v.trim().parse::<u32>().ok())
        }));
    }
    ids
}

/// Accumulated runs and run time of the agent's kernel programs (names start with `rs_`),
/// those of process `pid` only.
/// With `--bpf-stats`, the kernel programs of agent `pid` so far; else nothing.
pub(crate) fn kernel_stats(a: &Args, pid: u32) -> Vec<(String, u64, Duration)> {
    if a.bpf_stats {
        kernel_program_stats(pid)
    } else {
        Vec::new()
    }
}

pub(crate) fn kernel_program_stats(pid: u32) -> Vec<(String, u64, Duration)> {
    let ours = program_ids_of(pid);
    let mut out: Vec<(String, u64, Duration)> = Vec::new();
    for info in aya::programs::loaded_programs().flatten() {
        let Some(name) = info.name_as_str() else {
            continue;
        };
        if !name.starts_with("rs_") || !ours.contains(&info.id()) {
            continue;
        }
        match out.iter_mut().find(|(n, _, _)| n == name) {
            Some(e) => {
                e.1 += info.run_count();
                e.2 += info.run_time();
            }
            None => out.push((name.to_string(), info.run_count(), info.run_time())),
        }
    }
    out
}

pub(crate) fn kernel_delta(
    before: &[(String, u64, Duration)],
    after: &[(String, u64, Duration)],
) -> Vec<(String, u64, Duration)> {
    after
        .iter()
        .map(|(name, runs, time)| {
            let (r0, t0) = before
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, r, t)| (*r, *t))
                .unwrap_or_default();
            (
                name.clone(),
                runs.saturating_sub(r0),
                time.saturating_sub(t0),
            )
        })
        .filter(|(_, runs, _)| *runs > 0)
        .collect()
}

/// Cumulative counters read from the agent's /metrics.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Totals {
    pub(crate) counted: f64,
    pub(crate) lost: f64,
}

pub(crate) fn agent_totals(m: &routeskew_testbed::Metrics, host: &str) -> Totals {
    Totals {
        counted: m.sum("routeskew_http_responses_total", &[("host", host)]),
        lost: m.sum("routeskew_sensor_lost_events_total", &[]),
    }
}

/// Polls (250 ms apart) without a change before the agent's count is final: 1.5 s, more
/// than the semantic sensor's 1 s fold.
const SETTLED_POLLS: u32 = 6;

pub(crate) async fn measure_with_agent(
    a: &Args,
    bed: &Testbed,
    url: &str,
    host: &str,
) -> Result<(WrkResult, AgentView)> {
    measure_with(a, &a.agent_args, bed, url, host).await
}

/// One wrk run with an agent started with `agent_args`.
async fn measure_with(
    a: &Args,
    agent_args: &[String],
    bed: &Testbed,
    url: &str,
    host: &str,
) -> Result<(WrkResult, AgentView)> {
    let mut agent = Agent::start(agent_config(a, agent_args, bed)?).await?;
    let before = agent_totals(&agent.scrape().await?, host);
    let cpu_before = process_cpu(agent.pid())?;
    let kernel_before = kernel_stats(a, agent.pid());
    let result = run_wrk(a, url, host, a.duration);
    let kernel_after = kernel_stats(a, agent.pid());
    // Read again while the agent drains what the kernel handed over during the run.
    let mut cpu_after = process_cpu(agent.pid())?;
    // The agent may still be draining its ring buffer, and the semantic sensor's counts
    // come on its 1 s fold: read once the count has not moved for longer than a fold.
    let mut after = agent_totals(&agent.scrape().await?, host);
    let mut still = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = agent_totals(&agent.scrape().await?, host);
        still = if now.counted == after.counted {
            still + 1
        } else {
            0
        };
        after = now;
        cpu_after = process_cpu(agent.pid())?;
        if still >= SETTLED_POLLS {
            break;
        }
    }
    if !agent.running() {
        bail!("the agent exited during the run:\n{}", agent.log_tail());
    }
    agent.stop();
    let view = AgentView {
        counted: after.counted - before.counted,
        lost: after.lost - before.lost,
        cpu: cpu_after.saturating_sub(cpu_before),
        kernel: kernel_delta(&kernel_before, &kernel_after),
    };
    Ok((result?, view))
}

/// A cgroup of the bench's own in the test bed's tree (removed with the test bed), created
/// on first use.
pub(crate) fn bench_cgroup(bed: &Testbed, name: &str) -> Result<std::path::PathBuf> {
    let path = bed
        .cgroup_root()
        .context("the test bed has no cgroup tree")?
        .join(name);
    if !path.exists() {
        routeskew_testbed::cgroup::create(&path)?;
    }
    Ok(path)
}

/// The test bed's agent, with `--agent-arg`s; with `--hooks-only`, watching an empty cgroup
/// of the test bed's tree instead of the replica.
pub(crate) fn agent_config(a: &Args, agent_args: &[String], bed: &Testbed) -> Result<AgentConfig> {
    let mut config = AgentConfig::for_testbed(bed);
    config.extra_args.extend(agent_args.iter().cloned());
    if a.hooks_only {
        let empty = bench_cgroup(bed, "bench-empty")?;
        config.discovery = routeskew_testbed::agent::Discovery::Cgroups(vec![empty]);
    }
    Ok(config)
}

/// With `--versus-arg`: warm-up, then `a.rounds` rounds of three runs (no agent, the
/// `--agent-arg` agent, the `--versus-arg` agent) in an order that rotates every round, so
/// that none of the three always runs first. Two sets of rounds sharing the runs without.
pub(crate) async fn measure_versus(
    a: &Args,
    bed: &Testbed,
    url: &str,
    host: &str,
) -> Result<(Vec<Round>, Vec<Round>)> {
    eprintln!("warm-up {} s against {url} ...", a.warmup);
    if a.warmup > 0 {
        run_wrk(a, url, host, a.warmup)?;
    }
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for i in 0..a.rounds as usize {
        let (mut without, mut with_a, mut with_b) = (None, None, None);
        for k in 0..3 {
            match (i + k) % 3 {
                0 => without = Some(run_wrk(a, url, host, a.duration)?),
                1 => with_a = Some(measure_with(a, &a.agent_args, bed, url, host).await?),
                _ => with_b = Some(measure_with(a, &a.versus_args, bed, url, host).await?),
            }
        }
        let (Some(without), Some((wa, va)), Some((wb, vb))) = (without, with_a, with_b) else {
            bail!("a round did not run all three");
        };
        eprintln!(
            "round {}: without {:.0} req/s; first {:.0} req/s; second {:.0} req/s",
            i + 1,
            without.rps,
            wa.rps,
            wb.rps
        );
        first.push(Round {
            without,
            with: Some(wa),
            agent: Some(va),
            kernel_without: Vec::new(),
        });
        second.push(Round {
            without,
            with: Some(wb),
            agent: Some(vb),
            kernel_without: Vec::new(),
        });
    }
    Ok((first, second))
}

/// Warm-up, then `a.rounds` alternating (without, with) measurements against `url`.
pub(crate) async fn measure(a: &Args, bed: &Testbed, url: &str, host: &str) -> Result<Vec<Round>> {
    eprintln!("warm-up {} s against {url} ...", a.warmup);
    if a.warmup > 0 {
        run_wrk(a, url, host, a.warmup)?;
    }
    let mut rounds = Vec::new();
    for i in 0..a.rounds {
        let agent_first = !a.no_agent && i % 2 == 1;
        let mut with = None;
        let mut counted = None;
        if agent_first {
            let (w, c) = measure_with_agent(a, bed, url, host).await?;
            with = Some(w);
            counted = Some(c);
        }
        let without = run_wrk(a, url, host, a.duration)?;
        if !a.no_agent && !agent_first {
            let (w, c) = measure_with_agent(a, bed, url, host).await?;
            with = Some(w);
            counted = Some(c);
        }
        eprintln!(
            "round {}: without {:.0} req/s p99 {:.2} ms{}",
            i + 1,
            without.rps,
            without.p99_ms,
            with.map(|w| format!("; with {:.0} req/s p99 {:.2} ms", w.rps, w.p99_ms))
                .unwrap_or_default()
        );
        rounds.push(Round {
            without,
            with,
            agent: counted,
            kernel_without: Vec::new(),
        });
    }
    Ok(rounds)
}
