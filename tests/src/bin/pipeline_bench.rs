//! `pipeline_bench`: what routeskew's userspace pipeline costs per kernel event.
//!
//! Feeds a synthetic but realistic event stream through the real [`Pipeline::handle`]
//! (flows → classify → aggregate → prometheus-client counters), built from the golden
//! Traefik 3.7.15 captures in `userspace/tests/fixtures/`: three replicas, keep-alive client
//! connections that each carry a run of requests and then close, for each request the client
//! request read → the upstream request written on a pooled backend connection → (optionally)
//! the backend's response read → the client response written, with a few router misses on
//! one replica, backend 404s, unknown hosts and WebSocket upgrades that close later (some
//! within the early-close window).
//!
//! Events are generated in batches of the agent's size (1024) outside the timed region and
//! fed right after, so that, as in the agent, the bytes were just written (warm in cache) and
//! generation never counts. `Pipeline::tick` runs once per simulated second, as the agent's
//! housekeeping does, and is timed.
//!
//! Reports the best of several wall-clock runs in ns/event and, when `valgrind` is
//! installed, instructions/event under callgrind (counting only the feeding function and
//! what it calls), which is stable across runs and machines. Prints markdown lines for
//! BENCHMARKS.md on stdout; progress goes to stderr.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use routeskew::agent::AgentMetrics;
use routeskew::event::Event;
use routeskew::metrics::BuildInfo;
use routeskew::pipeline::{Pipeline, PipelineConfig};

// Beside the binary rather than in `src/bin/`, where cargo would take it for a binary.
#[path = "pipeline_bench/events.rs"]
mod events;

use events::{targets, Gen, BATCH, KNOWN_HOSTS, S};

fn pipeline(upstream_responses: bool) -> (Pipeline, AgentMetrics) {
    let metrics = AgentMetrics::register(BuildInfo {
        version: "bench".into(),
        kernel: "bench".into(),
    });
    let mut p = Pipeline::new(
        PipelineConfig {
            known_hosts: KNOWN_HOSTS.iter().map(|h| h.to_string()).collect(),
            upstream_responses,
            ..PipelineConfig::default()
        },
        metrics.contract.clone(),
        metrics.pipeline.clone(),
    );
    p.set_targets(targets());
    (p, metrics)
}

/// The timed (and, under callgrind, the counted) work: one batch through the pipeline,
/// with the agent's once-a-second housekeeping.
#[inline(never)]
fn routeskew_bench_feed(p: &mut Pipeline, events: &[Event], next_tick: &mut u64) {
    // As the agent does: a batch at a time, housekeeping between batches when it is due.
    let mut start = 0;
    for (i, ev) in events.iter().enumerate() {
        if ev.ts_ns >= *next_tick {
            p.handle_batch(black_box(&events[start..=i]));
            start = i + 1;
            p.tick(ev.ts_ns);
            *next_tick = ev.ts_ns + S;
        }
    }
    p.handle_batch(black_box(&events[start..]));
}

/// The warm-up's feeding, under another name so that callgrind does not count it. Its body
/// must differ from [`routeskew_bench_feed`]'s (housekeeping once per batch here): the
/// compiler merges identical functions into one symbol.
#[inline(never)]
fn routeskew_bench_warmup(p: &mut Pipeline, events: &[Event], next_tick: &mut u64) {
    p.handle_batch(black_box(events));
    if let Some(last) = events.last() {
        if last.ts_ns >= *next_tick {
            p.tick(last.ts_ns);
            *next_tick = last.ts_ns + S;
        }
    }
}

struct RunResult {
    events: u64,
    requests: u64,
    elapsed: Duration,
}

/// One run: a fresh pipeline and generator; `warmup` events first (untimed), then `events`.
fn run(upstream_responses: bool, warmup: usize, events: usize) -> (RunResult, AgentMetrics) {
    let (mut p, metrics) = pipeline(upstream_responses);
    let mut gen = Gen::new(upstream_responses);
    let mut batch = Vec::with_capacity(BATCH + 16);
    let mut next_tick = 0;
    let mut done = 0;
    while done < warmup {
        gen.batch(&mut batch, BATCH);
        routeskew_bench_warmup(&mut p, &batch, &mut next_tick);
        done += batch.len();
    }
    let requests_before = gen.requests;
    let mut elapsed = Duration::ZERO;
    let mut fed = 0;
    while fed < events {
        gen.batch(&mut batch, BATCH.min(events - fed));
        let t = Instant::now();
        routeskew_bench_feed(&mut p, &batch, &mut next_tick);
        elapsed += t.elapsed();
        fed += batch.len();
    }
    (
        RunResult {
            events: fed as u64,
            requests: gen.requests - requests_before,
            elapsed,
        },
        metrics,
    )
}

struct Args {
    events: usize,
    runs: u32,
    callgrind_events: usize,
    callgrind: bool,
    modes: Vec<bool>,
    /// Internal: this process runs under callgrind.
    inner: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        events: 300_000,
        runs: 7,
        callgrind_events: 60_000,
        callgrind: true,
        modes: vec![false, true],
        inner: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => {
                println!(
                    "usage: pipeline_bench [--events N] [--runs R] [--callgrind-events N] [--no-callgrind] [--upstream-responses off|on|both]"
                );
                std::process::exit(0);
            }
            "--no-callgrind" => a.callgrind = false,
            "--inner-callgrind" => a.inner = true,
            "--upstream-responses" => {
                a.modes = match it.next().as_deref() {
                    Some("off") => vec![false],
                    Some("on") => vec![true],
                    Some("both") => vec![false, true],
                    other => bail!("--upstream-responses takes off, on or both, not {other:?}"),
                }
            }
            "--events" | "--runs" | "--callgrind-events" => {
                let v: usize = it
                    .next()
                    .with_context(|| format!("{flag} needs a value"))?
                    .parse()
                    .with_context(|| format!("{flag} takes a number"))?;
                match flag.as_str() {
                    "--events" => a.events = v,
                    "--runs" => a.runs = u32::try_from(v).context("--runs")?,
                    _ => a.callgrind_events = v,
                }
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.events == 0 || a.runs == 0 || a.callgrind_events == 0 {
        bail!("--events, --runs and --callgrind-events must be positive");
    }
    Ok(a)
}

fn mode_name(upstream_responses: bool) -> &'static str {
    // The sensor's default is not to report upstream responses.
    if upstream_responses {
        "with upstream responses"
    } else {
        "without upstream responses (default)"
    }
}

/// Instructions per event of the feeding function and its callees, under callgrind.
fn callgrind(upstream_responses: bool, events: usize) -> Result<Option<f64>> {
    if Command::new("valgrind")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let out_file = dir.path().join("callgrind.out");
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg("--collect-atstart=no")
        .arg("--toggle-collect=*routeskew_bench_feed*")
        .arg(&exe)
        .arg("--inner-callgrind")
        .arg("--upstream-responses")
        .arg(if upstream_responses { "on" } else { "off" })
        .arg("--callgrind-events")
        .arg(events.to_string())
        .stderr(std::process::Stdio::null())
        .output()
        .context("running valgrind")?;
    if !output.status.success() {
        bail!("valgrind exited with {}", output.status);
    }
    // The inner run prints how many events it fed (whole batches, so a few more than asked).
    let fed: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("event count of the run under callgrind")?;
    let text = std::fs::read_to_string(&out_file)
        .with_context(|| format!("reading {}", out_file.display()))?;
    let total: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no instruction total in the callgrind output")?;
    if total == 0 || fed == 0 {
        bail!("callgrind counted nothing: was routeskew_bench_feed inlined or renamed?");
    }
    Ok(Some(total as f64 / fed as f64))
}

fn callgrind_warmup(events: usize) -> usize {
    events / 4
}

fn main() -> Result<()> {
    let a = parse_args()?;
    if a.inner {
        let mode = a.modes[0];
        let (r, _) = run(
            mode,
            callgrind_warmup(a.callgrind_events),
            a.callgrind_events,
        );
        println!("{}", r.events);
        return Ok(());
    }
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    println!("| benchmark | commit | stream | events/request | wall clock | callgrind |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &mode in &a.modes {
        let mut best: Option<RunResult> = None;
        let mut last_metrics = None;
        for i in 0..a.runs {
            let (r, m) = run(mode, a.events / 4, a.events);
            let ns = r.elapsed.as_nanos() as f64 / r.events as f64;
            eprintln!(
                "{}: run {}/{}: {} events ({:.2}/request) in {:?}: {:.0} ns/event",
                mode_name(mode),
                i + 1,
                a.runs,
                r.events,
                r.events as f64 / r.requests as f64,
                r.elapsed,
                ns
            );
            if best.as_ref().is_none_or(|b| {
                r.elapsed.as_nanos() * u128::from(b.events)
                    < b.elapsed.as_nanos() * u128::from(r.events)
            }) {
                best = Some(r);
            }
            last_metrics = Some(m);
        }
        let best = best.context("no run")?;
        if let Some(m) = last_metrics {
            // The counts must be real: a pipeline that dropped everything would be fast.
            let text = m.encode();
            let misses = text
                .lines()
                .filter(|l| l.starts_with("routeskew_http_responses_total{replica=\"traefik-2\",namespace=\"traefik\",host=\"terminal.example.test\",class=\"router_miss\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
            if misses == 0.0 {
                bail!("the pipeline counted no router miss on traefik-2: the benchmark is not measuring the real path");
            }
        }
        let ns = best.elapsed.as_nanos() as f64 / best.events as f64;
        let instr = if a.callgrind {
            eprintln!(
                "{}: callgrind over {} events ...",
                mode_name(mode),
                a.callgrind_events
            );
            match callgrind(mode, a.callgrind_events) {
                Ok(Some(i)) => format!("{i:.0}"),
                Ok(None) => "n/a (no valgrind)".into(),
                Err(e) => {
                    eprintln!("callgrind failed: {e:#}");
                    "n/a".into()
                }
            }
        } else {
            "-".into()
        };
        println!(
            "| pipeline_bench | {commit} | {} | {:.2} events/request | {:.0} ns/event (best of {}) | {} instructions/event |",
            mode_name(mode),
            best.events as f64 / best.requests as f64,
            ns,
            a.runs,
            instr
        );
    }
    Ok(())
}
