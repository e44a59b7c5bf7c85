//! The soak's command line.

use std::time::Duration;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Args {
    /// How long traffic runs.
    pub(crate) duration: Duration,
    /// Time between quiescent comparisons (one row of the report each).
    pub(crate) report_every: Duration,
    /// Time between replica restarts (one replica at a time, in turn).
    pub(crate) restart_every: Duration,
    /// How long a restarted replica stays down.
    pub(crate) downtime: Duration,
    /// Pause between two visits of the plaintext traffic task.
    pub(crate) pace: Duration,
    /// How long the agent may take to catch up with the ground truth at a comparison.
    pub(crate) settle_timeout: Duration,
    /// A restarted replica rejoins the rotation as soon as Traefik serves, before the
    /// agent watches its new process (as behind a Service).
    pub(crate) rejoin_at_once: bool,
    /// Extra agent arguments (`--agent-arg=--sensor=bytes`).
    pub(crate) agent_args: Vec<String>,
}

const USAGE: &str = "usage: soak [--minutes N (30)] [--report-every SECS (60)] \
[--restart-every SECS (a quarter of the run, 30 to 150)] [--downtime SECS (3)] \
[--pace-ms MS (4)] [--settle-timeout SECS (20)] [--rejoin-at-once] [--agent-arg=ARG ...]";

/// A quarter of the run, at least 30 s and at most 150 s: a 2-minute run restarts
/// replicas every 30 s, a 30-minute run every 150 s (12 restarts).
fn default_restart_every(duration: Duration) -> Duration {
    (duration / 4).clamp(Duration::from_secs(30), Duration::from_secs(150))
}

pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut minutes = 30u64;
    let mut report_every = 60u64;
    let mut restart_every = None;
    let mut downtime = 3u64;
    let mut pace_ms = 4u64;
    let mut settle = 20u64;
    let mut agent_args = Vec::new();
    let mut rejoin_at_once = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--agent-arg=") {
            agent_args.push(v.to_string());
            continue;
        }
        let mut num = |what: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{what} needs a value"))?
                .parse()
                .with_context(|| format!("{what} takes a whole number"))
        };
        match a.as_str() {
            "--minutes" => minutes = num("--minutes")?,
            "--report-every" => report_every = num("--report-every")?,
            "--restart-every" => restart_every = Some(num("--restart-every")?),
            "--downtime" => downtime = num("--downtime")?,
            "--pace-ms" => pace_ms = num("--pace-ms")?,
            "--settle-timeout" => settle = num("--settle-timeout")?,
            "--rejoin-at-once" => rejoin_at_once = true,
            "--agent-arg" => agent_args.push(it.next().context("--agent-arg needs a value")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if minutes == 0 || report_every == 0 {
        bail!("--minutes and --report-every must be positive");
    }
    let duration = Duration::from_secs(minutes * 60);
    Ok(Args {
        duration,
        report_every: Duration::from_secs(report_every),
        restart_every: restart_every
            .map(Duration::from_secs)
            .unwrap_or_else(|| default_restart_every(duration)),
        downtime: Duration::from_secs(downtime),
        pace: Duration::from_millis(pace_ms),
        settle_timeout: Duration::from_secs(settle),
        rejoin_at_once,
        agent_args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_restart_interval() {
        let a = args(&[]).unwrap();
        assert_eq!(a.duration, Duration::from_secs(1800));
        assert_eq!(a.report_every, Duration::from_secs(60));
        assert_eq!(a.restart_every, Duration::from_secs(150));
        let a = args(&["--minutes", "2", "--report-every", "20"]).unwrap();
        assert_eq!(a.restart_every, Duration::from_secs(30));
        assert_eq!(a.report_every, Duration::from_secs(20));
        let a = args(&["--minutes", "8"]).unwrap();
        assert_eq!(a.restart_every, Duration::from_secs(120));
        assert!(!a.rejoin_at_once);
        assert!(args(&["--rejoin-at-once"]).unwrap().rejoin_at_once);
    }

    #[test]
    fn agent_args_and_errors() {
        let a = args(&["--agent-arg=--sensor=bytes", "--agent-arg", "--no-tls"]).unwrap();
        assert_eq!(a.agent_args, vec!["--sensor=bytes", "--no-tls"]);
        assert!(args(&["--minutes"]).is_err());
        assert!(args(&["--minutes", "x"]).is_err());
        assert!(args(&["--minutes", "0"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
