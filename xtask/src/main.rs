//! `cargo xtask <task>`: everything that needs more than plain cargo.
//!
//! Every task installs what it needs when it is missing (root on Debian/Ubuntu) and says
//! what it is doing, so the README's two commands work on a fresh machine.

mod deploy;
mod ebpf;
mod prereqs;
mod run;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "routeskew build, test, demo, benchmark and soak tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (eBPF toolchain, bpf-linker, Traefik and its release
    /// matrix, Prometheus, Go, wrk, kubectl).
    Setup,
    /// Build the kernel programs (installs the eBPF toolchain when missing).
    BuildEbpf,
    /// Build the kernel programs and the agent (release).
    Build,
    /// Build everything and run every test tier: unit, kernel, end-to-end.
    Test {
        /// Only the unprivileged unit tests.
        #[arg(long)]
        unit_only: bool,
        /// Extra arguments for the privileged test run (a test name filter, ...).
        #[arg(last = true)]
        filter: Vec<String>,
    },
    /// Three real Traefik replicas, one missing a router, and the agent finding it.
    Demo {
        /// Keep /metrics up this many seconds instead of until Ctrl-C (0 = until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        seconds: u64,
    },
    /// Throughput and latency of real Traefik under wrk with and without the agent.
    Bench {
        /// Rounds of (without, with) measurements.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        duration: u32,
        /// Also report the kernel programs' run time per request (BPF statistics add a
        /// little cost of their own, so the headline ratio is measured without them).
        #[arg(long)]
        bpf_stats: bool,
        /// Which entrypoint to load: `plain` (HTTP/1.1 on `web`), `tls` (HTTP/1.1 over TLS
        /// on `websecure`, the Go crypto/tls uprobes) or `both`, one after the other.
        #[arg(long, value_enum, default_value_t = run::Transport::Both)]
        transport: run::Transport,
        /// Attach the agent's hooks but watch an empty cgroup: the cost every process on
        /// the machine pays before anything is captured.
        #[arg(long)]
        hooks_only: bool,
        /// One agent for the whole run; Traefik moves in and out of the cgroup it watches
        /// between runs, so captured and not captured alternate every few seconds
        /// (plaintext only; the hooks stay attached in both halves).
        #[arg(long, conflicts_with = "hooks_only")]
        toggle: bool,
        /// An extra argument for the agent (repeatable), e.g.
        /// `--agent-arg=--ring-buffer-bytes=1048576`.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
        /// An argument of a second agent (repeatable), run in the same rounds as the
        /// first, e.g. `--agent-arg=--sensor=semantic --versus-arg=--sensor=bytes`.
        #[arg(long = "versus-arg", allow_hyphen_values = true)]
        versus_args: Vec<String>,
    },
    /// A long run (not in CI): real Traefik under mixed traffic, replica restarts and
    /// hostile requests; the agent's RSS, CPU, lost events and every counter against the
    /// load generator's ground truth, compared at quiescent points (see BENCHMARKS.md).
    Soak {
        /// How long traffic runs.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Seconds between comparisons (one row of the report each).
        #[arg(long, default_value_t = 60)]
        report_every: u64,
        /// A restarted replica rejoins the traffic as soon as Traefik serves, before the
        /// agent watches its new process (as behind a Service).
        #[arg(long)]
        rejoin_at_once: bool,
        /// An extra argument for the agent (repeatable), e.g. `--agent-arg=--sensor=bytes`.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// cargo fmt --check and clippy -D warnings on the workspace.
    Lint,
    /// The deploy tier alone: render the kustomizations, promtool check/test the rules,
    /// check the PrometheusRule, dashboard, DaemonSet and RBAC.
    DeployCheck,
    /// Regenerate the PrometheusRule from deploy/rules/routeskew.rules.yml.
    GenRules,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => {
            ebpf::ensure_toolchain()?;
            prereqs::ensure_all()?;
            prereqs::ensure_traefik_releases()?;
            prereqs::ensure_deploy_tools()
        }
        Task::BuildEbpf => ebpf::build().map(|_| ()),
        Task::Build => run::build_all().map(|_| ()),
        Task::Test { unit_only, filter } => run::test(unit_only, &filter),
        Task::Demo { seconds } => run::demo(seconds),
        Task::Bench {
            rounds,
            duration,
            bpf_stats,
            transport,
            hooks_only,
            toggle,
            agent_args,
            versus_args,
        } => run::bench(
            rounds,
            duration,
            bpf_stats,
            transport,
            run::BenchMode { hooks_only, toggle },
            &agent_args,
            &versus_args,
        ),
        Task::Soak {
            minutes,
            report_every,
            rejoin_at_once,
            agent_args,
        } => run::soak(minutes, report_every, rejoin_at_once, &agent_args),
        Task::Lint => run::lint(),
        Task::DeployCheck => run::deploy_check(),
        Task::GenRules => deploy::gen_rules(),
    }
}
