//! The bench's command line.

use anyhow::{bail, Context, Result};

/// Which entrypoint wrk loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `web`: plaintext HTTP/1.1.
    Plain,
    /// `websecure`: HTTP/1.1 over TLS (Debian's wrk is built with OpenSSL).
    Tls,
}

impl Transport {
    pub(crate) fn title(self) -> &'static str {
        match self {
            Transport::Plain => "plaintext HTTP/1.1 (`web` entrypoint)",
            Transport::Tls => "HTTP/1.1 over TLS (`websecure` entrypoint)",
        }
    }
}

/// `--transport` values.
pub(crate) fn parse_transports(v: &str) -> Result<Vec<Transport>> {
    Ok(match v {
        "plain" => vec![Transport::Plain],
        "tls" => vec![Transport::Tls],
        "both" => vec![Transport::Plain, Transport::Tls],
        other => bail!("--transport takes plain, tls or both, not {other:?}"),
    })
}

pub(crate) struct Args {
    pub(crate) transports: Vec<Transport>,
    pub(crate) rounds: u32,
    pub(crate) duration: u32,
    pub(crate) warmup: u32,
    pub(crate) threads: u32,
    pub(crate) connections: u32,
    pub(crate) no_agent: bool,
    /// Also account the kernel programs' run time (BPF_ENABLE_STATS adds two clock reads
    /// per program run, so it is off for the headline ratio).
    pub(crate) bpf_stats: bool,
    /// Extra agent arguments (`--agent-arg=--ring-buffer-bytes=1048576`), to compare
    /// settings.
    pub(crate) agent_args: Vec<String>,
    /// A second agent configuration (`--versus-arg=--sensor=bytes`): each round then runs
    /// without an agent, with the first and with the second, in rotating order.
    pub(crate) versus_args: Vec<String>,
    /// The agent watches an empty cgroup instead of the replica: what the hooks cost every
    /// process on the machine before any capture (the floor of this design).
    pub(crate) hooks_only: bool,
    /// One agent, Traefik moved in and out of its watched cgroup between runs (`toggle`).
    pub(crate) toggle: bool,
}

pub(crate) fn parse_args() -> Result<Args> {
    parse_args_from(std::env::args().skip(1))
}

pub(crate) fn parse_args_from(mut it: impl Iterator<Item = String>) -> Result<Args> {
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
        versus_args: Vec::new(),
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
        if let Some(v) = flag.strip_prefix("--versus-arg=") {
            a.versus_args.push(v.to_string());
            continue;
        }
        if flag == "--transport" {
            a.transports = parse_transports(&it.next().context("--transport needs a value")?)?;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            println!("usage: bench [--transport plain|tls|both] [--rounds R] [--duration SECONDS] [--warmup SECONDS] [--threads T] [--connections C] [--no-agent] [--bpf-stats] [--hooks-only | --toggle] [--agent-arg=ARG ...] [--versus-arg=ARG ...]");
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
    if !a.versus_args.is_empty() && (a.toggle || a.no_agent) {
        bail!("--versus-arg compares two agents: not with --toggle or --no-agent");
    }
    if a.toggle && (a.hooks_only || a.no_agent || a.transports != [Transport::Plain]) {
        bail!("--toggle measures the plaintext capture alone: use it with --transport plain, without --hooks-only or --no-agent");
    }
    if a.rounds == 0 || a.duration == 0 || a.threads == 0 || a.connections < a.threads {
        bail!("rounds, duration and threads must be positive and connections >= threads");
    }
    Ok(a)
}

/// `--hooks-only`, `--toggle` and `--agent-arg`s as given, for the command line in the report.
pub(crate) fn agent_flags(a: &Args) -> String {
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
    for v in &a.versus_args {
        flags.push_str(&format!(" --versus-arg={v}"));
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
