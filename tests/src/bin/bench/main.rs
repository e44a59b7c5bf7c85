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
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use anyhow::{Context, Result};
use routeskew_testbed::{paths, Testbed, TestbedConfig};

mod args;
mod measure;
mod report;
mod stats;
mod toggle;
mod uprobe_cost;
mod wrk;

use args::{parse_args, Transport};

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
    let env = report::setting(&traefik);
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
        if !a.versus_args.is_empty() {
            let (first, second) = measure::measure_versus(&a, &bed, &url, &host).await?;
            blocks.push(format!(
                "#### First agent: `{}`\n\n{}",
                a.agent_args.join(" "),
                report::report(&a, t, &first, &host, &env)
            ));
            blocks.push(format!(
                "#### Second agent, alternated in the same rounds: `{}`\n\n{}",
                a.versus_args.join(" "),
                report::report(&a, t, &second, &host, &env)
            ));
            continue;
        }
        let rounds = if a.toggle {
            toggle::measure(&a, &bed, &url, &host).await?
        } else {
            measure::measure(&a, &bed, &url, &host).await?
        };
        blocks.push(report::report(&a, t, &rounds, &host, &env));
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
