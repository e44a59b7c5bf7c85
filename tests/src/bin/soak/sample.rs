//! What the agent process costs and drops: RSS and its high-water mark, CPU seconds
//! (from /proc), and every loss, drop, shed, eviction and refusal counter it exports.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use routeskew_testbed::Metrics;

/// One reading of the agent process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ProcSample {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
    /// utime + stime, in clock ticks.
    pub(crate) cpu_ticks: u64,
}

/// `VmRSS` and `VmHWM` (kB) of a `/proc/<pid>/status` text.
pub(crate) fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` text; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis.
pub(crate) fn parse_stat(text: &str) -> Option<u64> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) fn read(pid: u32) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let (rss_kib, hwm_kib) = parse_status(&status).context("VmRSS/VmHWM")?;
    let cpu_ticks = parse_stat(&stat).context("utime/stime")?;
    Ok(ProcSample {
        rss_kib,
        hwm_kib,
        cpu_ticks,
    })
}

pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// CPU use over a window, as a percentage of one CPU.
pub(crate) fn cpu_percent(ticks: u64, ticks_per_second: u64, wall_seconds: f64) -> f64 {
    if wall_seconds <= 0.0 {
        return 0.0;
    }
    100.0 * ticks as f64 / ticks_per_second as f64 / wall_seconds
}

/// Name parts of the agent's counters of things lost or turned away.
const DROP_MARKERS: [&str; 5] = ["_lost_", "_dropped_", "_shed_", "_evicted_", "_refused_"];

/// Every counter sample whose name says something was lost or turned away, summed
/// over its labels, by sample name.
pub(crate) fn drop_counters(m: &Metrics) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in &m.samples {
        let counter = s.name.ends_with("_total");
        if counter && DROP_MARKERS.iter().any(|d| s.name.contains(d)) {
            *out.entry(s.name.clone()).or_insert(0.0) += s.value;
        }
    }
    out
}

/// `routeskew_sensor_lost_events_total` over every program.
pub(crate) fn lost_events(m: &Metrics) -> u64 {
    m.sum("routeskew_sensor_lost_events_total", &[]) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_texts() {
        let status =
            "Name:\trouteskew\nVmPeak:\t  900 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(parse_status(status), Some((40960, 51234)));
        assert_eq!(parse_status("Name: x\n"), None);
        let stat = "4242 (route skew) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 567 0 0 20 0 9 0";
        assert_eq!(parse_stat(stat), Some(1234 + 567));
        assert_eq!(parse_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn cpu_percent_of_one_cpu() {
        assert_eq!(cpu_percent(150, 100, 60.0), 2.5);
        assert_eq!(cpu_percent(150, 100, 0.0), 0.0);
    }

    #[test]
    fn finds_every_drop_counter() {
        let m = Metrics::parse(
            "routeskew_sensor_lost_events_total{program=\"a\"} 2\n\
             routeskew_sensor_lost_events_total{program=\"b\"} 3\n\
             routeskew_pipeline_evicted_hosts_total 7\n\
             routeskew_scrapes_refused_total 0\n\
             routeskew_http_responses_total{replica=\"r\"} 9\n\
             routeskew_pipeline_dropped_things 4\n\
             # EOF\n",
        )
        .unwrap();
        let d = drop_counters(&m);
        assert_eq!(d.len(), 3);
        assert_eq!(d["routeskew_sensor_lost_events_total"], 5.0);
        assert_eq!(d["routeskew_pipeline_evicted_hosts_total"], 7.0);
        assert_eq!(d["routeskew_scrapes_refused_total"], 0.0);
        assert_eq!(lost_events(&m), 5);
    }
}
