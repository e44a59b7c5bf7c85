//! `cargo xtask bench --rounds R --duration D`: what the agent costs a real Traefik.
//!
//! One Traefik replica in its own cgroup in front of the Go backend; wrk (keep-alive,
//! fixed threads and connections) against it for D seconds, without and with the agent
//! attached, R rounds after a warm-up. The order within a round alternates (without/with,
//! then with/without) so slow drift of the machine does not favour one side. Reports per
//! round, the median of the per-round throughput ratios and p99 latencies, as a markdown
//! block for BENCHMARKS.md.
//!
//! Two runs, chosen with `--transport plain|tls|both` (default both): plaintext HTTP/1.1
//! against the replica's `web` entrypoint (the agent's socket hooks), and HTTP/1.1 over
//! TLS against its `websecure` entrypoint (the Go `crypto/tls` uprobes; the socket hooks
//! only see ciphertext there).
//!
//! With the TLS run comes the cost of one uprobe hit on this machine apart from any BPF
//! program (`uprobe_cost`), which `--bpf-stats` cannot show.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use routeskew_testbed::{paths, Agent, AgentConfig, Testbed, TestbedConfig};

mod toggle;
mod uprobe_cost;

/// Which entrypoint wrk loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `web`: plaintext HTTP/1.1.
    Plain,
    /// `websecure`: HTTP/1.1 over TLS (Debian's wrk is built with OpenSSL).
    Tls,
}

impl Transport {
    fn title(self) -> &'static str {
        match self {
            Transport::Plain => "plaintext HTTP/1.1 (`web` entrypoint)",
            Transport::Tls => "HTTP/1.1 over TLS (`websecure` entrypoint)",
        }
    }
}

/// `--transport` values.
fn parse_transports(v: &str) -> Result<Vec<Transport>> {
    Ok(match v {
        "plain" => vec![Transport::Plain],
        "tls" => vec![Transport::Tls],
        "both" => vec![Transport::Plain, Transport::Tls],
        other => bail!("--transport takes plain, tls or both, not {other:?}"),
    })
}

struct Args {
    transports: Vec<Transport>,
    rounds: u32,
    duration: u32,
    warmup: u32,
    threads: u32,
    connections: u32,
    no_agent: bool,
    /// Also account the kernel programs' run time (BPF_ENABLE_STATS adds two clock reads
    /// per program run, so it is off for the headline ratio).
    bpf_stats: bool,
    /// Extra agent arguments (`--agent-arg=--ring-buffer-bytes=1048576`), to compare
    /// settings.
    agent_args: Vec<String>,
    /// The agent watches an empty cgroup instead of the replica: what the hooks cost every
    /// process on the machine before any capture (the floor of this design).
    hooks_only: bool,
    /// One agent, Traefik moved in and out of its watched cgroup between runs (`toggle`).
    toggle: bool,
}

fn parse_args() -> Result<Args> {
    parse_args_from(std::env::args().skip(1))
}

fn parse_args_from(mut it: impl Iterator<Item = String>) -> Result<Args> {
    let mut a = Args {
        transports: vec![Transport::Plain, Transport::Tls],
        rounds: 5,
        duration: 10,
        warmup: 3,
        threads: 2,
        connections: 32,
        no_agent: false,
        bpf_stats: false,
        agent_args: Vec::new(),
        hooks_only: false,
        toggle: false,
    };
    while let Some(flag) = it.next() {
        let switch = match flag.as_str() {
            "--no-agent" => Some(&mut a.no_agent),
            "--bpf-stats" => Some(&mut a.bpf_stats),
            "--toggle" => Some(&mut a.toggle),
            "--hooks-only" => Some(&mut a.hooks_only),
            _ => None,
        };
        if let Some(on) = switch {
            *on = true;
            continue;
        }
        if let Some(v) = flag.strip_prefix("--agent-arg=") {
            a.agent_args.push(v.to_string());
            continue;
        }
        if flag == "--transport" {
            a.transports = parse_transports(&it.next().context("--transport needs a value")?)?;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("usage: bench [--transport plain|tls|both] [--rounds R] [--duration SECONDS] [--warmup SECONDS] [--threads T] [--connections C] [--no-agent] [--bpf-stats] [--hooks-only | --toggle] [--agent-arg=ARG ...]");
            std::process::exit(0);
        }
        let v: u32 = it
            .next()
            .with_context(|| format!("{flag} needs a value"))?
            .parse()
            .with_context(|| format!("{flag} takes a number"))?;
        match flag.as_str() {
            "--rounds" => a.rounds = v,
            "--duration" => a.duration = v,
            "--warmup" => a.warmup = v,
            "--threads" => a.threads = v,
            "--connections" => a.connections = v,
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.toggle && (a.hooks_only || a.no_agent || a.transports != [Transport::Plain]) {
        bail!("--toggle measures the plaintext capture alone: use it with --transport plain, without --hooks-only or --no-agent");
    }
    if a.rounds == 0 || a.duration == 0 || a.threads == 0 || a.connections < a.threads {
        bail!("rounds, duration and threads must be positive and connections >= threads");
    }
    Ok(a)
}

#[derive(Debug, Clone, Copy)]
struct WrkResult {
    rps: f64,
    p99_ms: f64,
    requests: u64,
    /// Non-2xx/3xx answers plus socket errors: a run with any is not comparable.
    errors: u64,
    /// What the whole machine spent over the run (`/proc/stat`).
    cpu: MachineCpu,
}

/// CPU time of the whole machine, from the `cpu` line of `/proc/stat` (USER_HZ ticks).
/// Busy is everything but idle, iowait and steal: load generator, Traefik, backend,
/// agent and the kernel's work for all of them. On a saturated machine throughput is
/// CPUs over busy time per request, and busy time per request does not move with the
/// CPU time the hypervisor steals, which throughput does.
#[derive(Debug, Clone, Copy, Default)]
struct MachineCpu {
    busy_ticks: u64,
    steal_ticks: u64,
}

impl MachineCpu {
    fn now() -> Result<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_proc_stat(&stat).context("no cpu line in /proc/stat")
    }

    fn add(&mut self, other: MachineCpu) {
        self.busy_ticks += other.busy_ticks;
        self.steal_ticks += other.steal_ticks;
    }

    fn since(self, before: MachineCpu) -> MachineCpu {
        MachineCpu {
            busy_ticks: self.busy_ticks.saturating_sub(before.busy_ticks),
            steal_ticks: self.steal_ticks.saturating_sub(before.steal_ticks),
        }
    }
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`; guest time is
/// already part of user time.
fn parse_proc_stat(stat: &str) -> Option<MachineCpu> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(MachineCpu {
        busy_ticks: at(0) + at(1) + at(2) + at(5) + at(6),
        steal_ticks: at(7),
    })
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

/// wrk prints durations as `812.00us`, `1.23ms`, `2.01s`, `1.5m`.
fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        "h" => v * 3_600_000.0,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut rps = None;
    let mut p99 = None;
    let mut requests = None;
    let mut errors = 0u64;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = parse_duration_ms(v);
        } else if t.contains("requests in") {
            requests = t.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(WrkResult {
        rps: rps.context("wrk output has no Requests/sec")?,
        p99_ms: p99.context("wrk output has no 99% latency (was --latency given?)")?,
        requests: requests.context("wrk output has no request count")?,
        errors,
        cpu: MachineCpu::default(),
    })
}

fn run_wrk(a: &Args, url: &str, host: &str, seconds: u32) -> Result<WrkResult> {
    let wrk =
        paths::which("wrk").context("wrk not found (apt-get install wrk, or cargo xtask setup)")?;
    let cpu_before = MachineCpu::now()?;
    let out = Command::new(wrk)
        .args([
            format!("-t{}", a.threads),
            format!("-c{}", a.connections),
            format!("-d{seconds}s"),
            "--latency".into(),
            "-H".into(),
            format!("Host: {host}"),
            url.into(),
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let cpu = MachineCpu::now()?.since(cpu_before);
    let mut result = parse_wrk(&text).with_context(|| format!("parsing wrk output:\n{text}"))?;
    result.cpu = cpu;
    Ok(result)
}

fn per_request_us(t: Duration, requests: u64) -> String {
    if requests == 0 {
        return "-".into();
    }
    format!("{:.2}", t.as_secs_f64() * 1e6 / requests as f64)
}

/// Kernel program cost per request over all rounds (`--bpf-stats`): the runs with the
/// agent capturing and, with `--toggle`, those with nothing captured.
fn kernel_table(rounds: &[Round], transport: Transport) -> String {
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
fn kernel_rows<'a>(
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// First and third quartiles (linear interpolation between the closest ranks).
fn quartiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let pos = q * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    (at(0.25), at(0.75))
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn cpu_model() -> String {
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

struct Round {
    without: WrkResult,
    with: Option<WrkResult>,
    /// The agent's own account of its run.
    agent: Option<AgentView>,
    /// `--toggle --bpf-stats`: the agent's kernel programs during the run without.
    kernel_without: Vec<(String, u64, Duration)>,
}

/// What the agent reported about one run.
#[derive(Debug, Clone)]
struct AgentView {
    /// Responses it counted for the benchmark host.
    counted: f64,
    /// Events the kernel could not hand over (ring buffer full).
    lost: f64,
    /// CPU time of the agent process (user + system) during the wrk run.
    cpu: Duration,
    /// Per kernel program: (runs, run time) during the wrk run, with `--bpf-stats`.
    kernel: Vec<(String, u64, Duration)>,
}

/// CPU time (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Result<Duration> {
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
fn program_ids_of(pid: u32) -> std::collections::HashSet<u32> {
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
fn kernel_stats(a: &Args, pid: u32) -> Vec<(String, u64, Duration)> {
    if a.bpf_stats {
        kernel_program_stats(pid)
    } else {
        Vec::new()
    }
}

fn kernel_program_stats(pid: u32) -> Vec<(String, u64, Duration)> {
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

fn kernel_delta(
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
struct Totals {
    counted: f64,
    lost: f64,
}

fn agent_totals(m: &routeskew_testbed::Metrics, host: &str) -> Totals {
    Totals {
        counted: m.sum("routeskew_http_responses_total", &[("host", host)]),
        lost: m.sum("routeskew_sensor_lost_events_total", &[]),
    }
}

async fn measure_with_agent(
    a: &Args,
    bed: &Testbed,
    url: &str,
    host: &str,
) -> Result<(WrkResult, AgentView)> {
    let mut agent = Agent::start(agent_config(a, bed)?).await?;
    let before = agent_totals(&agent.scrape().await?, host);
    let cpu_before = process_cpu(agent.pid())?;
    let kernel_before = kernel_stats(a, agent.pid());
    let result = run_wrk(a, url, host, a.duration);
    let kernel_after = kernel_stats(a, agent.pid());
    // Read again while the agent drains what the kernel handed over during the run.
    let mut cpu_after = process_cpu(agent.pid())?;
    // The agent may still be draining its ring buffer: read once the count stops moving.
    let mut after = agent_totals(&agent.scrape().await?, host);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = agent_totals(&agent.scrape().await?, host);
        let settled = now.counted == after.counted;
        after = now;
        cpu_after = process_cpu(agent.pid())?;
        if settled {
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
fn bench_cgroup(bed: &Testbed, name: &str) -> Result<std::path::PathBuf> {
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
fn agent_config(a: &Args, bed: &Testbed) -> Result<AgentConfig> {
    let mut config = AgentConfig::for_testbed(bed);
    config.extra_args.extend(a.agent_args.iter().cloned());
    if a.hooks_only {
        let empty = bench_cgroup(bed, "bench-empty")?;
        config.discovery = routeskew_testbed::agent::Discovery::Cgroups(vec![empty]);
    }
    Ok(config)
}

/// The machine and tool versions, printed with every result block.
struct Setting {
    date: String,
    kernel: String,
    nproc: usize,
    traefik_version: String,
    wrk_version: String,
}

fn setting(traefik: &std::path::Path) -> Setting {
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

/// Warm-up, then `a.rounds` alternating (without, with) measurements against `url`.
async fn measure(a: &Args, bed: &Testbed, url: &str, host: &str) -> Result<Vec<Round>> {
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

/// `--hooks-only`, `--toggle` and `--agent-arg`s as given, for the command line in the report.
fn agent_flags(a: &Args) -> String {
    let mut flags = String::new();
    if a.hooks_only {
        flags.push_str(" --hooks-only");
    }
    if a.toggle {
        flags.push_str(" --toggle");
    }
    for v in &a.agent_args {
        flags.push_str(&format!(" --agent-arg={v}"));
    }
    flags
}

/// The machine's busy CPU per request served, with against without, as a throughput-like
/// ratio (without/with: above 1 means the captured runs were cheaper).
fn machine_cpu_line(rounds: &[Round], nproc: usize) -> String {
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

/// One markdown block for BENCHMARKS.md.
fn report(a: &Args, transport: Transport, rounds: &[Round], host: &str, env: &Setting) -> String {
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
    for (i, r) in rounds.iter().enumerate() {
        let (wr, wp, ratio, cov, lost, cpu) = match r.with {
            Some(w) => {
                let ratio = w.rps / r.without.rps;
                ratios.push(ratio);
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
                    format!("{ratio:.3}"),
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
    let med_without_p99 = median(rounds.iter().map(|r| r.without.p99_ms).collect());
    let with_p99: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.with.map(|w| w.p99_ms))
        .collect();
    md.push_str("\nwrk counts the requests answered within its run; those in flight at its end are still served and seen by the agent, so the agent's count can exceed wrk's slightly.\n\n");
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
    let errors: u64 = rounds
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = parse_args()?;
    paths::require_root()?;
    // Statistics stay on while this descriptor is open.
    let _stats = if a.bpf_stats {
        Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("enabling BPF run-time statistics")?,
        )
    } else {
        None
    };
    let traefik = paths::traefik_binary()?;
    let agent_bin = if a.no_agent {
        None
    } else {
        Some(paths::agent_binary()?)
    };

    let bed = Testbed::start(TestbedConfig {
        replicas: 1,
        broken_replica: None,
        // wrk's requests would fill the disk with access-log lines and cost Traefik time
        // that is not the agent's.
        access_log: false,
        traefik_log_level: "ERROR".into(),
        // A `websecure` entrypoint only when it is loaded: the plaintext-only run stays
        // the configuration earlier results were measured with.
        tls: a.transports.contains(&Transport::Tls),
        ..TestbedConfig::default()
    })
    .await?;
    let replica = &bed.replicas()[0];
    let host = bed.scenario().app_host.clone();
    eprintln!(
        "bench: {} (pid {}, cgroup {}), Host: {host}; agent: {}",
        replica.name,
        replica.pid,
        replica.cgroup_path.display(),
        agent_bin
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none (--no-agent)".into())
    );
    let env = setting(&traefik);
    let mut blocks = Vec::new();
    for &t in &a.transports {
        let url = match t {
            Transport::Plain => format!("http://{}/", replica.web_addr),
            Transport::Tls => format!(
                "https://{}/",
                replica
                    .websecure_addr
                    .context("the replica has no websecure entrypoint")?
            ),
        };
        eprintln!("== {} at {url}", t.title());
        let rounds = if a.toggle {
            toggle::measure(&a, &bed, &url, &host).await?
        } else {
            measure(&a, &bed, &url, &host).await?
        };
        blocks.push(report(&a, t, &rounds, &host, &env));
    }
    drop(bed);
    if a.transports.contains(&Transport::Tls) {
        eprintln!("== cost of one uprobe hit");
        match uprobe_cost::measure() {
            Ok(cost) => blocks.push(uprobe_cost::report(&cost)),
            // The throughput results stand without it; say why it is missing.
            Err(e) => blocks.push(format!(
                "### Cost of one uprobe hit

not measured: {e:#}
"
            )),
        }
    }
    println!("{}", blocks.join("\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:8080/\n  2 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.10ms  612.31us  20.57ms   88.15%\n    Req/Sec    14.91k     1.13k   17.35k    71.00%\n  Latency Distribution\n     50%    0.98ms\n     75%    1.30ms\n     90%    1.75ms\n     99%    3.21ms\n  296708 requests in 10.00s, 42.16MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  29666.09\nTransfer/sec:      4.22MB\n";
        let r = parse_wrk(out).expect("parse");
        assert!((r.rps - 29666.09).abs() < 1e-6);
        assert!((r.p99_ms - 3.21).abs() < 1e-9);
        assert_eq!(r.requests, 296_708);
        assert_eq!(r.errors, 7);
        assert_eq!(parse_duration_ms("812.00us"), Some(0.812));
        assert_eq!(parse_duration_ms("2.00s"), Some(2000.0));
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn machine_cpu_from_proc_stat() {
        let stat = "cpu  100 5 50 9000 7 3 2 11 0 0\ncpu0 50 2 25 4500 3 1 1 5 0 0\nintr 1\n";
        let c = parse_proc_stat(stat).expect("cpu line");
        assert_eq!(c.busy_ticks, 100 + 5 + 50 + 3 + 2);
        assert_eq!(c.steal_ticks, 11);
        let later = MachineCpu {
            busy_ticks: c.busy_ticks + 40,
            steal_ticks: c.steal_ticks + 1,
        };
        assert_eq!(later.since(c).busy_ticks, 40);
        assert_eq!(c.since(later).busy_ticks, 0);
        assert!(parse_proc_stat("intr 1\n").is_none());
    }

    #[test]
    fn transport_choice() {
        assert_eq!(
            parse_transports("both").expect("both"),
            [Transport::Plain, Transport::Tls]
        );
        assert_eq!(parse_transports("tls").expect("tls"), [Transport::Tls]);
        assert_eq!(
            parse_transports("plain").expect("plain"),
            [Transport::Plain]
        );
        assert!(parse_transports("h2").is_err());
    }

    fn args(v: &[&str]) -> Result<Args> {
        parse_args_from(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn comparison_modes() {
        let a = args(&[
            "--transport",
            "plain",
            "--toggle",
            "--agent-arg=--ring-buffer-bytes=1048576",
        ])
        .expect("toggle");
        assert!(a.toggle && !a.hooks_only);
        assert_eq!(a.agent_args, ["--ring-buffer-bytes=1048576"]);
        assert_eq!(
            agent_flags(&a),
            " --toggle --agent-arg=--ring-buffer-bytes=1048576"
        );
        // Uprobes trap whatever cgroup their process is in: toggling cannot switch them off.
        assert!(args(&["--toggle"]).is_err());
        assert!(args(&["--transport", "plain", "--toggle", "--hooks-only"]).is_err());
        assert!(args(&["--hooks-only"]).expect("hooks-only").hooks_only);
        assert!(args(&["--rounds", "0"]).is_err());
    }

    #[test]
    fn quartiles_interpolate() {
        assert_eq!(quartiles(vec![4.0, 1.0, 3.0, 2.0, 5.0]), (2.0, 4.0));
        assert_eq!(quartiles(vec![1.0, 2.0]), (1.25, 1.75));
        assert!(quartiles(Vec::new()).0.is_nan());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
