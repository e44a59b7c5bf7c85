//! What the kernel counts per program (events emitted and lost, failed reads, full maps;
//! the runs it skipped; run counts and times for measurements) and the reader's decode
//! errors, read on demand and published into [`SensorMetrics`].

use std::{io, os::fd::AsFd};

use aya::maps::PerCpuArray;
use routeskew_common::{Program, ProgramCounters};

use super::{
    gotls, map_err,
    metrics::{SensorMetrics, SensorTotals},
    names::MAP_COUNTERS,
    prog_info, Sensor, SensorError,
};

/// Counters of one kernel program, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramTotals {
    pub program: &'static str,
    pub emitted: u64,
    pub lost: u64,
    pub read_failures: u64,
    pub map_full: u64,
    pub anomalies: u64,
}

impl ProgramTotals {
    /// The four counts, as the metrics take them.
    fn counts(&self) -> SensorTotals {
        SensorTotals {
            emitted: self.emitted,
            lost: self.lost,
            read_failures: self.read_failures,
            map_full: self.map_full,
            anomalies: self.anomalies,
        }
    }
}

impl Sensor {
    /// Per-program counters summed over CPUs.
    pub fn totals(&self) -> Result<Vec<ProgramTotals>, SensorError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(SensorError::MapMissing { name: MAP_COUNTERS })?;
        let counters =
            PerCpuArray::<_, ProgramCounters>::try_from(map).map_err(map_err(MAP_COUNTERS))?;
        let mut out = Vec::with_capacity(Program::COUNT as usize);
        for p in Program::ALL {
            let per_cpu = counters
                .get(&(p as u32), 0)
                .map_err(map_err(MAP_COUNTERS))?;
            let mut t = ProgramTotals {
                program: p.name(),
                emitted: 0,
                lost: 0,
                read_failures: 0,
                map_full: 0,
                anomalies: 0,
            };
            for c in per_cpu.iter() {
                t.emitted += c.emitted;
                t.lost += c.lost;
                t.read_failures += c.read_failures;
                t.map_full += c.map_full;
                t.anomalies += c.anomalies;
            }
            out.push(t);
        }
        Ok(out)
    }

    /// Per loaded program (named without the object's `rs_` prefix), the runs the kernel
    /// skipped because another BPF program was running on the CPU (their events are
    /// lost). Programs whose counters cannot be read are left out.
    pub fn program_misses(&self) -> Vec<(String, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let fd = p.fd().ok()?;
                let misses = prog_info::recursion_misses(fd.as_fd()).ok()?;
                Some((name.strip_prefix("rs_").unwrap_or(name).to_string(), misses))
            })
            .collect()
    }

    /// Records the reader could not decode (counted, never fatal).
    pub fn decode_errors(&self) -> u64 {
        self.reader.decode_errors()
    }

    /// Publishes the kernel's per-program totals, the reader's decode errors and the
    /// skipped runs into `metrics`. Nothing is published when the totals cannot be read.
    pub fn publish_counters(&self, metrics: &mut SensorMetrics) -> Result<(), SensorError> {
        for t in self.totals()? {
            metrics.set_totals(t.program, t.counts());
        }
        metrics.set_decode_errors(self.decode_errors());
        metrics.set_drain_lag(self.reader.take_max_lag());
        for (program, misses) in self.program_misses() {
            metrics.set_program_misses(&program, misses);
        }
        // Hooks attached since the start (byte capture for a fallback replica) included.
        for hook in &self.hooks {
            metrics.set_hook_attached(&hook.name, hook.attached);
        }
        metrics.set_data_path(self.path.as_str());
        Ok(())
    }

    /// Run counts and run times of the TLS uprobes (for measuring their cost).
    pub fn tls_run_stats(&mut self) -> Vec<gotls::RunStats> {
        gotls::run_stats(&mut self.ebpf)
    }
}

/// Makes the kernel count every BPF program's runs and run time until the returned fd is
/// closed (`kernel.bpf_stats_enabled` for the caller's lifetime); for measurements.
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, io::Error> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| io::Error::other(e.to_string()))
}
