//! `routeskew` binary: parses flags, sets up logging, runs the agent.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::io::IsTerminal;

use anyhow::Context;
use clap::Parser;
use routeskew::config::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).context("invalid --log filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Run(args) => {
            // One thread: the agent shares the node with the replicas it watches, and the
            // reader and pipeline are cheap enough to take turns.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(routeskew::agent::run(args))?;
        }
        Command::Status(args) => {
            use std::io::Write;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let (report, raw) =
                runtime.block_on(routeskew::verdict::status::fetch(&args.url, args.timeout))?;
            let mut out = std::io::stdout().lock();
            if args.json {
                out.write_all(&raw).context("writing the verdicts")?;
                writeln!(out).context("writing the verdicts")?;
            } else if report.replicas.is_empty() {
                writeln!(
                    out,
                    "no verdicts yet: the agent has probed no replica (is the prober on?)"
                )
                .context("writing the verdicts")?;
            } else {
                out.write_all(report.table().as_bytes())
                    .context("writing the verdicts")?;
            }
        }
        Command::MetricsList => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for name in routeskew::agent::metric_names() {
                writeln!(out, "{name}").context("writing the metric names")?;
            }
        }
    }
    Ok(())
}
