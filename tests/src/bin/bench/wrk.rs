//! wrk runs: their command line, their output, and the machine's CPU time over each.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use routeskew_testbed::paths;

use crate::args::Args;

#[derive(Debug, Clone, Copy)]
pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    pub(crate) p99_ms: f64,
    pub(crate) requests: u64,
    /// Non-2xx/3xx answers plus socket errors: a run with any is not comparable.
    pub(crate) errors: u64,
    /// What the whole machine spent over the run (`/proc/stat`).
    pub(crate) cpu: MachineCpu,
}

/// CPU time of the whole machine, from the `cpu` line of `/proc/stat` (USER_HZ ticks).
/// Busy is everything but idle, iowait and steal: load generator, Traefik, backend,
/// agent and the kernel's work for all of them. On a saturated machine throughput is
/// CPUs over busy time per request, and busy time per request does not move with the
/// CPU time the hypervisor steals, which throughput does.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MachineCpu {
    pub(crate) busy_ticks: u64,
    pub(crate) steal_ticks: u64,
}

impl MachineCpu {
    pub(crate) fn now() -> Result<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse_proc_stat(&stat).context("no cpu line in /proc/stat")
    }

    pub(crate) fn add(&mut self, other: MachineCpu) {
        self.busy_ticks += other.busy_ticks;
        self.steal_ticks += other.steal_ticks;
    }

    pub(crate) fn since(self, before: MachineCpu) -> MachineCpu {
        MachineCpu {
            busy_ticks: self.busy_ticks.saturating_sub(before.busy_ticks),
            steal_ticks: self.steal_ticks.saturating_sub(before.steal_ticks),
        }
    }
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`; guest time is
/// already part of user time.
pub(crate) fn parse_proc_stat(stat: &str) -> Option<MachineCpu> {
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

pub(crate) fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

/// wrk prints durations as `812.00us`, `1.23ms`, `2.01s`, `1.5m`.
pub(crate) fn parse_duration_ms(s: &str) -> Option<f64> {
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

pub(crate) fn parse_wrk(out: &str) -> Result<WrkResult> {
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

pub(crate) fn run_wrk(a: &Args, url: &str, host: &str, seconds: u32) -> Result<WrkResult> {
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
}
