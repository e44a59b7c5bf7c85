//! The markdown block each transport's rounds become (for BENCHMARKS.md).

use std::process::Command;
use std::time::Duration;

use crate::args::{agent_flags, Args, Transport};
use crate::measure::Round;
use crate::stats::{median, quartiles};
use crate::wrk::{ticks_to_duration, MachineCpu};

pub(crate) fn per_request_us(t: Duration, requests: u64) -> String {
    if requests == 0 {
        return "-".into();
    }
    format!("{:.2}", t.as_secs_f64() * 1e6 / requests as f64)
}

/// Kernel program cost per request over all rounds (`--bpf-stats`): the runs with the
/// agent capturing and, with `--toggle`, those with nothing captured.
pub(crate) fn kernel_table(rounds: &[Round], transport: Transport) -> String {
    let with = kernel_rows(
        rounds
            .iter()
            .filter_map(|r| Some((r.with?.requests, &r.agent.as_ref()?.kernel))),
        transport,
    );
    let Some(with) = with else {
        return "\nKernel program statistics: none collected.\n".into();
    };
    let mut md = format!("\nKernel programs during the runs with the agent (BPF_ENABLE_STATS on, which adds a little to each run):\n\n{with}");
    if let Some(without) = kernel_rows(
        rounds
            .iter()
            .map(|r| (r.without.requests, &r.kernel_without)),
        transport,
    ) {
        md.push_str(&format!(
            "\nThe same programs during the runs with Traefik outside the watched cgroup (hooks attached, nothing captured):\n\n{without}"
        ));
    }
    md
}

/// A table of runs/request, ns/run and µs/request per program, or None without data.
pub(crate) fn kernel_rows<'a>(
    runs: impl Iterator<Item = (u64, &'a Vec<(String, u64, Duration)>)>,
    transport: Transport,
) -> Option<String> {
    let mut requests = 0u64;
    let mut per_prog: Vec<(String, u64, Duration)> = Vec::new();
    for (served, kernel) in runs {
        if kernel.is_empty() {
            continue;
        }
        requests += served;
        for (name, runs, time) in kernel {
            match per_prog.iter_mut().find(|(n, _, _)| n == name) {
                Some(e) => {
                    e.1 += runs;
                    e.2 += *time;
                }
                None => per_prog.push((name.clone(), *runs, *time)),
            }
        }
    }
    if requests == 0 || per_prog.is_empty() {
        return None;
    }
    if transport == Transport::Tls {
        // Uprobes first: they are what this run measures.
        per_prog.sort_by_key(|(name, _, _)| !name.starts_with("rs_go_tls"));
    }
    let mut md = String::from(
        "| program | runs/request | ns/run | µs/request |\n| --- | ---: | ---: | ---: |\n",
    );
    let mut total = Duration::ZERO;
    for (name, runs, time) in &per_prog {
        total += *time;
        md.push_str(&format!(
            "| {name} | {:.2} | {:.0} | {} |\n",
            *runs as f64 / requests as f64,
            time.as_nanos() as f64 / (*runs).max(1) as f64,
            per_request_us(*time, requests),
        ));
    }
    md.push_str(&format!(
        "| all | | | {} |\n",
        per_request_us(total, requests)
    ));
    Some(md)
}

pub(crate) fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The machine and tool versions, printed with every result block.
pub(crate) struct Setting {
    pub(crate) date: String,
    pub(crate) kernel: String,
    pub(crate) nproc: usize,
    pub(crate) traefik_version: String,
    pub(crate) wrk_version: String,
}

pub(crate) fn setting(traefik: &std::path::Path) -> Setting {
    let wrk_version = Command::new("wrk")
        .arg("-v")
        .output()
        .ok()
        .map(|o| {
            let t = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            t.lines()
                .next()
                .unwrap_or("")
                .split(" Copyright")
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into());
    Setting {
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        traefik_version: command_output(traefik.to_str().unwrap_or("traefik"), &["version"])
            .lines()
            .find_map(|l| l.strip_prefix("Version:").map(|v| v.trim().to_string()))
            .unwrap_or_else(|| "unknown".into()),
        wrk_version,
    }
}

/// The machine's busy CPU per request served, with against without, as a throughput-like
/// ratio (without/with: above 1 means the captured runs were cheaper).
pub(crate) fn machine_cpu_line(rounds: &[Round], nproc: usize) -> String {
    let us = |c: MachineCpu, requests: u64| {
        ticks_to_duration(c.busy_ticks).as_secs_f64() * 1e6 / requests.max(1) as f64
    };
    let mut ratios = Vec::new();
    let (mut without, mut with) = (MachineCpu::default(), MachineCpu::default());
    let (mut served_without, mut served_with) = (0u64, 0u64);
    let mut wall = (0.0f64, 0.0f64);
    for r in rounds {
        let Some(w) = r.with else { continue };
        if r.without.cpu.busy_ticks == 0 || w.cpu.busy_ticks == 0 {
            continue;
        }
        ratios.push(us(r.without.cpu, r.without.requests) / us(w.cpu, w.requests));
        without.add(r.without.cpu);
        with.add(w.cpu);
        served_without += r.without.requests;
        served_with += w.requests;
        wall.0 += r.without.requests as f64 / r.without.rps.max(1.0);
        wall.1 += w.requests as f64 / w.rps.max(1.0);
    }
    if ratios.is_empty() {
        return String::new();
    }
    let steal = |c: MachineCpu, secs: f64| {
        100.0 * ticks_to_duration(c.steal_ticks).as_secs_f64() / (secs * nproc as f64).max(1e-9)
    };
    let (q1, q3) = quartiles(ratios.clone());
    format!(
        "Machine CPU per request (all processes, `/proc/stat` busy time over the wrk runs): {:.1} µs without, {:.1} µs with; without/with **{:.3}** over all runs, per-round median {:.3} (quartiles {q1:.3} to {q3:.3}). CPU stolen by the hypervisor: {:.1} % without, {:.1} % with.\n",
        us(without, served_without),
        us(with, served_with),
        us(without, served_without) / us(with, served_with),
        median(ratios),
        steal(without, wall.0),
        steal(with, wall.1),
    )
}

/// A round in which the agent counted fewer than this share of wrk's requests measured
/// a blind agent (not yet attached, or lost), not its cost: it is reported and left out
/// of the ratios.
const MIN_COVERAGE: f64 = 0.99;

/// Whether round `r` is void (see [`MIN_COVERAGE`]). Runs where the agent is not meant
/// to count (`--hooks-only`, `--toggle`) never are.
pub(crate) fn is_void(a: &Args, r: &Round) -> bool {
    if a.hooks_only || a.toggle {
        return false;
    }
    match (r.with, &r.agent) {
        (Some(w), Some(v)) => v.counted < MIN_COVERAGE * w.requests as f64,
        _ => false,
    }
}

/// One markdown block for BENCHMARKS.md.
pub(crate) fn report(
    a: &Args,
    transport: Transport,
    rounds: &[Round],
    host: &str,
    env: &Setting,
) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "### routeskew overhead on Traefik {}, {} ({})\n\n",
        env.traefik_version,
        transport.title(),
        env.date
    ));
    let transport_flag = match a.transports.as_slice() {
        [Transport::Plain] => " --transport plain",
        [Transport::Tls] => " --transport tls",
        _ => "",
    };
    md.push_str(&format!(
        "Command: `cargo xtask bench --rounds {} --duration {}{}{transport_flag}{}` (wrk `-t{} -c{} -d{}s --latency`, keep-alive, `Host: {host}` → backend `/`, {} s warm-up)\n\n",
        a.rounds,
        a.duration,
        if a.bpf_stats { " --bpf-stats" } else { "" },
        agent_flags(a),
        a.threads,
        a.connections,
        a.duration,
        a.warmup
    ));
    if a.toggle {
        md.push_str("One agent ran throughout; \"without\" is Traefik moved out of the cgroup the agent watches (hooks attached, nothing captured), \"with\" is Traefik back in it.\n\n");
    }
    if a.hooks_only {
        md.push_str("\"With\" is the agent watching an empty cgroup: its hooks attached, nothing captured.\n\n");
    }
    md.push_str(&format!(
        "Machine: {} CPUs ({}), kernel {}; {}; load generator, Traefik, backend and agent share the machine.\n\n",
        env.nproc,
        cpu_model(),
        env.kernel,
        env.wrk_version
    ));
    md.push_str("| round | without: req/s | without: p99 ms | with: req/s | with: p99 ms | ratio (with/without) | agent counted / wrk requests | lost events | agent CPU µs/request |\n");
    md.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let mut ratios = Vec::new();
    let mut voided = 0;
    for (i, r) in rounds.iter().enumerate() {
        let void = is_void(a, r);
        voided += usize::from(void);
        let (wr, wp, ratio, cov, lost, cpu) = match r.with {
            Some(w) => {
                let ratio = w.rps / r.without.rps;
                if !void {
                    ratios.push(ratio);
                }
                let (cov, lost, cpu) = r
                    .agent
                    .as_ref()
                    .map(|v| {
                        (
                            format!("{:.0} / {}", v.counted, w.requests),
                            format!("{:.0}", v.lost),
                            per_request_us(v.cpu, w.requests),
                        )
                    })
                    .unwrap_or_default();
                (
                    format!("{:.0}", w.rps),
                    format!("{:.2}", w.p99_ms),
                    if void {
                        format!("void ({ratio:.3})")
                    } else {
                        format!("{ratio:.3}")
                    },
                    cov,
                    lost,
                    cpu,
                )
            }
            None => Default::default(),
        };
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {wr} | {wp} | {ratio} | {cov} | {lost} | {cpu} |\n",
            i + 1,
            r.without.rps,
            r.without.p99_ms,
        ));
    }
    // The rest of the report is about the rounds that measured a counting agent.
    let all = rounds;
    let kept: Vec<Round> = rounds.iter().filter(|r| !is_void(a, r)).cloned().collect();
    let rounds = kept.as_slice();
    let med_without_p99 = median(rounds.iter().map(|r| r.without.p99_ms).collect());
    let with_p99: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.with.map(|w| w.p99_ms))
        .collect();
    md.push_str("\nwrk counts the requests answered within its run; those in flight at its end are still served and seen by the agent, so the agent's count can exceed wrk's slightly.\n\n");
    if voided > 0 {
        md.push_str(&format!(
            "**{voided} of {} rounds void:** the agent counted fewer than {:.0} % of wrk's requests (a blind agent measures nothing); left out of everything below.\n\n",
            all.len(),
            MIN_COVERAGE * 100.0
        ));
    }
    if ratios.is_empty() {
        md.push_str(&format!(
            "Median p99 without the agent: {med_without_p99:.2} ms (no agent runs).\n"
        ));
    } else {
        md.push_str(&format!(
            "Median throughput ratio with/without: **{:.3}** ({:+.1} %). Median p99: {med_without_p99:.2} ms without, {:.2} ms with.\n",
            median(ratios.clone()),
            (median(ratios.clone()) - 1.0) * 100.0,
            median(with_p99)
        ));
        let (q1, q3) = quartiles(ratios.clone());
        let total =
            |side: fn(&Round) -> Option<u64>| -> u64 { rounds.iter().filter_map(side).sum() };
        let served_with = total(|r| r.with.map(|w| w.requests));
        let served_without = total(|r| r.with.map(|_| r.without.requests));
        md.push_str(&format!(
            "Spread of the {} per-round ratios: quartiles {q1:.3} to {q3:.3}. All requests served with / without: {:.3}.\n",
            ratios.len(),
            served_with as f64 / served_without.max(1) as f64
        ));
        md.push_str(&machine_cpu_line(rounds, env.nproc));
    }
    if a.bpf_stats {
        md.push_str(&kernel_table(rounds, transport));
    }
    let errors: u64 = all
        .iter()
        .map(|r| r.without.errors + r.with.map(|w| w.errors).unwrap_or(0))
        .sum();
    if errors > 0 {
        md.push_str(&format!(
            "\n**Warning:** {errors} failed requests (non-2xx/3xx or socket errors) across runs.\n"
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::AgentView;
    use crate::wrk::WrkResult;

    fn round(requests: u64, counted: f64) -> Round {
        let run = WrkResult {
            rps: 1000.0,
            p99_ms: 1.0,
            requests,
            errors: 0,
            cpu: MachineCpu::default(),
        };
        Round {
            without: run,
            with: Some(run),
            agent: Some(AgentView {
                counted,
                lost: 0.0,
                cpu: Duration::ZERO,
                kernel: Vec::new(),
            }),
            kernel_without: Vec::new(),
        }
    }

    #[test]
    fn rounds_the_agent_did_not_count_are_void() {
        let a = crate::args::parse_args_from(std::iter::empty()).expect("defaults");
        assert!(!is_void(&a, &round(100_000, 100_025.0)));
        assert!(!is_void(&a, &round(100_000, 99_000.0)));
        assert!(is_void(&a, &round(100_000, 98_999.0)));
        assert!(is_void(&a, &round(102_821, 0.0)));
        let hooks_only = crate::args::parse_args_from(["--hooks-only".to_string()].into_iter())
            .expect("hooks-only");
        assert!(!is_void(&hooks_only, &round(100_000, 0.0)));
    }
}
