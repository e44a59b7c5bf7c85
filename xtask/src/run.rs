//! The composite tasks: build, test, demo, bench, soak, lint.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{deploy, ebpf, prereqs};

/// Paths the privileged programs are pointed at.
struct Built {
    object: PathBuf,
    agent: PathBuf,
    traefik: PathBuf,
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(prereqs::workspace_root());
    cmd
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    step(what);
    let status = cmd.status().with_context(|| format!("starting: {what}"))?;
    if !status.success() {
        bail!("failed ({status}): {what}");
    }
    Ok(())
}

/// Passed/failed/ignored totals over every `cargo test` run of a task.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Reads a libtest summary: `test result: ok. 70 passed; 0 failed; 0 ignored; ...`.
    fn add_summary(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs a `cargo test`, echoing its output while adding its summaries to `tally`.
fn run_tests(mut cmd: Command, what: &str, tally: &mut Tally) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    step(what);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting: {what}"))?;
    let stdout = child.stdout.take().context("test stdout")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        tally.add_summary(&line);
        writeln!(out, "{line}")?;
    }
    drop(out);
    let status = child.wait()?;
    if !status.success() {
        bail!("failed ({status}): {what}");
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| prereqs::workspace_root().join("target"))
}

fn require_root(task: &str) -> Result<()> {
    if !prereqs::is_root() {
        bail!(
            "`cargo xtask {task}` loads eBPF programs and creates cgroups: run it as root \
             (the unprivileged unit tests alone: `cargo xtask test --unit-only`)"
        );
    }
    Ok(())
}

/// Kernel object + agent (+ Traefik when `with_traefik`), in the given cargo profile.
fn build(release: bool, with_traefik: bool) -> Result<Built> {
    let object = ebpf::build()?;
    let mut cmd = cargo();
    cmd.args(["build", "-p", "routeskew", "--bin", "routeskew"]);
    if release {
        cmd.arg("--release");
    }
    run(
        cmd,
        "cargo build -p routeskew (agent, with the kernel object embedded)",
    )?;
    let agent = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("routeskew");
    let traefik = if with_traefik {
        prereqs::ensure_all()?
    } else {
        PathBuf::new()
    };
    Ok(Built {
        object,
        agent,
        traefik,
    })
}

fn with_env(cmd: &mut Command, built: &Built) {
    cmd.env("ROUTESKEW_AGENT", &built.agent)
        .env("ROUTESKEW_EBPF_OBJECT", &built.object)
        .env("ROUTESKEW_TRAEFIK", &built.traefik);
}

pub(crate) fn build_all() -> Result<()> {
    let built = build(true, false)?;
    eprintln!(
        "agent: {}\nkernel object: {}",
        built.agent.display(),
        built.object.display()
    );
    Ok(())
}

pub(crate) fn lint() -> Result<()> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    run(fmt, "cargo fmt --check")?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--exclude",
        "routeskew-probes",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy, "cargo clippy -D warnings (all host crates)")?;
    ebpf::clippy()
}

/// Makes the unit tier's check of the kernel object (`sensor::names`) fail, instead of
/// skip, when the agent was built without one.
const REQUIRE_EBPF: &str = "ROUTESKEW_REQUIRE_EBPF";

/// Makes the semantic sensor's tests on the Traefik release matrix fail, instead of skip,
/// when a release binary is missing.
const REQUIRE_TRAEFIK_RELEASES: &str = "ROUTESKEW_REQUIRE_TRAEFIK_RELEASES";

/// The one ignored test of the unprivileged crates, run by the privileged tier.
const KUBE_PRIVILEGED_TEST: &str = "agent_runs_with_kubernetes_discovery";

pub(crate) fn test(unit_only: bool, filter: &[String]) -> Result<()> {
    let mut tally = Tally::default();
    let result = test_tiers(unit_only, filter, &mut tally);
    // One closing line over every tier, so a reader (or CI) does not take the last
    // runner's summary (often an empty doc-test run) for the whole.
    println!(
        "routeskew: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    result
}

fn test_tiers(unit_only: bool, filter: &[String], tally: &mut Tally) -> Result<()> {
    lint()?;
    // The unit tests check every program and map name the agent uses against the kernel
    // object embedded in it: build the object first, and let its absence fail them.
    ebpf::build()?;
    let mut unit = cargo();
    unit.arg("test").env(REQUIRE_EBPF, "1");
    // The Go binary resolution tests read the real Traefik release binary and build Go
    // programs: install both first when this run may (root, full run); without them
    // those tests say they were skipped.
    if !unit_only && prereqs::is_root() {
        unit.env("ROUTESKEW_TRAEFIK", prereqs::ensure_all()?);
        // The semantic sensor resolves one release per supported Go version.
        prereqs::ensure_traefik_releases()?;
        unit.env(REQUIRE_TRAEFIK_RELEASES, "1");
    }
    if !unit_only {
        // Ignored (it needs root) but run by the privileged tier below: left out here so
        // the closing line does not call it skipped.
        unit.args(["--", "--skip", KUBE_PRIVILEGED_TEST]);
    }
    run_tests(unit, "unit tests (unprivileged): cargo test", tally)?;
    deploy_tier(tally)?;
    if unit_only {
        return Ok(());
    }
    require_root("test")?;
    let built = build(false, true)?;
    let mut privileged = cargo();
    privileged.args(["test", "-p", "routeskew-testbed", "--"]);
    // Every privileged test starts real Traefik replicas and loads the sensor: on a small
    // machine they are more reliable one at a time.
    privileged.arg("--test-threads=1");
    privileged.args(filter);
    with_env(&mut privileged, &built);
    run_tests(
        privileged,
        "kernel and end-to-end tests (root, real Traefik): cargo test -p routeskew-testbed",
        tally,
    )?;
    // The agent in Kubernetes mode against the in-process API server (ignored in the
    // unprivileged tier: it loads the sensor and creates a cgroup).
    let mut kube = cargo();
    kube.args([
        "test",
        "-p",
        "routeskew",
        "--test",
        "kube_discovery",
        "--",
        "--ignored",
        "--exact",
        KUBE_PRIVILEGED_TEST,
        "--test-threads=1",
    ]);
    with_env(&mut kube, &built);
    run_tests(
        kube,
        "kubernetes discovery end-to-end (root): cargo test -p routeskew --test kube_discovery -- --ignored",
        tally,
    )
}

/// Manifests, rules and dashboard (unprivileged): each check counts as one test.
fn deploy_tier(tally: &mut Tally) -> Result<()> {
    step("deploy: kubectl kustomize, promtool check/test rules, manifest and dashboard checks");
    prereqs::ensure_deploy_tools()?;
    let outcome = deploy::check_all();
    tally.passed += outcome.passed;
    tally.failed += outcome.failed;
    println!(
        "deploy checks: {} passed; {} failed",
        outcome.passed, outcome.failed
    );
    if outcome.failed > 0 {
        bail!("{} deploy checks failed", outcome.failed);
    }
    Ok(())
}

pub(crate) fn deploy_check() -> Result<()> {
    let mut tally = Tally::default();
    let result = deploy_tier(&mut tally);
    println!(
        "routeskew: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    result
}

/// `cargo run` of one of the test bed's programs, pointed at the built artefacts.
fn testbed_program(bin: &str, release: bool, args: &[String], built: &Built) -> Command {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "routeskew-testbed", "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    cmd.arg("--").args(args);
    with_env(&mut cmd, built);
    cmd
}

pub(crate) fn demo(seconds: u64) -> Result<()> {
    require_root("demo")?;
    let built = build(false, true)?;
    let args = if seconds > 0 {
        vec!["--seconds".to_string(), seconds.to_string()]
    } else {
        Vec::new()
    };
    run(
        testbed_program("demo", false, &args, &built),
        "demo: three Traefik replicas, one missing a router, and the agent",
    )
}

/// `cargo xtask bench --transport`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Transport {
    Plain,
    Tls,
    Both,
}

/// What `cargo xtask bench` compares (see the bench binary's `--hooks-only`, `--toggle`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BenchMode {
    pub hooks_only: bool,
    pub toggle: bool,
}

pub(crate) fn bench(
    rounds: u32,
    duration: u32,
    bpf_stats: bool,
    transport: Transport,
    mode: BenchMode,
    agent_args: &[String],
    versus_args: &[String],
) -> Result<()> {
    require_root("bench")?;
    let built = build(true, true)?;
    // callgrind gives the pipeline's instructions per event, a number the machine's
    // noise does not move.
    prereqs::ensure_debian_packages(&[("valgrind", "valgrind")])?;
    let mut args = vec![
        "--rounds".to_string(),
        rounds.to_string(),
        "--duration".to_string(),
        duration.to_string(),
    ];
    if bpf_stats {
        args.push("--bpf-stats".to_string());
    }
    if mode.hooks_only {
        args.push("--hooks-only".to_string());
    }
    if mode.toggle {
        args.push("--toggle".to_string());
    }
    args.extend(agent_args.iter().map(|v| format!("--agent-arg={v}")));
    args.extend(versus_args.iter().map(|v| format!("--versus-arg={v}")));
    let transport = match transport {
        Transport::Plain => "plain",
        Transport::Tls => "tls",
        Transport::Both => "both",
    };
    args.extend(["--transport".to_string(), transport.to_string()]);
    run(
        testbed_program("bench", true, &args, &built),
        "bench: Traefik under wrk (plaintext and/or TLS), without and with the agent",
    )?;
    run(
        testbed_program("pipeline_bench", true, &[], &built),
        "pipeline_bench: userspace cost per event (canned events from the golden fixtures)",
    )
}

pub(crate) fn soak(
    minutes: u64,
    report_every: u64,
    rejoin_at_once: bool,
    agent_args: &[String],
) -> Result<()> {
    require_root("soak")?;
    let built = build(true, true)?;
    let mut args = vec![
        "--minutes".to_string(),
        minutes.to_string(),
        "--report-every".to_string(),
        report_every.to_string(),
    ];
    if rejoin_at_once {
        args.push("--rejoin-at-once".to_string());
    }
    args.extend(agent_args.iter().map(|v| format!("--agent-arg={v}")));
    run(
        testbed_program("soak", true, &args, &built),
        "soak: three Traefik replicas under mixed traffic, restarts and hostile requests, with the agent",
    )
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_reads_libtest_summaries() {
        let mut t = Tally::default();
        t.add_summary("test result: ok. 70 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.02s");
        t.add_summary(
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_summary("running 4 tests");
        t.add_summary("test foo ... ok");
        assert_eq!((t.passed, t.failed, t.ignored), (73, 1, 2));
    }
}
