//! The sensor's own health metrics (`routeskew_sensor_*` but the blind-probe count, which
//! the pipeline keeps with the replica's series).
//!
//! The kernel reports running totals (per program, summed over CPUs); [`SensorMetrics`]
//! turns them into increments so that the exported counters never go backwards, even
//! when the kernel side restarts from zero (a reloaded program).

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Running totals one kernel program reports (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SensorTotals {
    pub emitted: u64,
    pub lost: u64,
    pub read_failures: u64,
    pub map_full: u64,
    pub anomalies: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HookLabels {
    pub hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataPathLabels {
    pub path: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabels {
    pub replica: String,
    pub namespace: String,
    /// `semantic` or `bytes`.
    pub mode: String,
}

/// `routeskew_sensor_mode{replica,namespace,mode}`: 1 for the mode each watched replica
/// is seen with. A handle on the family, for the agent's scans.
#[derive(Clone, Default)]
pub struct SensorModes(Family<ModeLabels, Gauge>);

impl SensorModes {
    /// Exactly these (replica, namespace, mode) rows at 1; every other row goes.
    pub fn set(&self, rows: impl IntoIterator<Item = ModeLabels>) {
        self.0.clear();
        for row in rows {
            self.0.get_or_create(&row).set(1);
        }
    }
}

/// Increment that takes a counter from `old` to `new`; a smaller `new` means the source
/// restarted from zero, so all of it is new.
fn total_delta(new: u64, old: u64) -> u64 {
    if new >= old {
        new - old
    } else {
        new
    }
}

pub struct SensorMetrics {
    events: Family<ProgramLabels, Counter>,
    lost_events: Family<ProgramLabels, Counter>,
    read_failures: Family<ProgramLabels, Counter>,
    map_full: Family<ProgramLabels, Counter>,
    anomalies: Family<ProgramLabels, Counter>,
    program_misses: Family<ProgramLabels, Counter>,
    decode_errors: Counter,
    drain_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    hooks: Family<HookLabels, Gauge>,
    /// 1 for the data path byte capture uses now (`off` while none is attached).
    data_path: Family<DataPathLabels, Gauge>,
    pub modes: SensorModes,
    /// Last totals seen per program.
    totals_last: HashMap<String, SensorTotals>,
    /// Last skipped-run totals seen per kernel program.
    misses_last: HashMap<String, u64>,
    decode_errors_last: u64,
}

impl SensorMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = SensorMetrics {
            events: Family::default(),
            lost_events: Family::default(),
            read_failures: Family::default(),
            map_full: Family::default(),
            anomalies: Family::default(),
            program_misses: Family::default(),
            decode_errors: Counter::default(),
            drain_lag: Gauge::default(),
            hooks: Family::default(),
            data_path: Family::default(),
            modes: SensorModes::default(),
            totals_last: HashMap::new(),
            misses_last: HashMap::new(),
            decode_errors_last: 0,
        };
        let r = reg.sub_registry_with_prefix("sensor");
        r.register(
            "events",
            "Events emitted by each kernel program",
            m.events.clone(),
        );
        r.register(
            "lost_events",
            "Events each kernel program could not deliver",
            m.lost_events.clone(),
        );
        r.register(
            "read_failures",
            "User-memory reads a kernel program could not make (page not present)",
            m.read_failures.clone(),
        );
        r.register(
            "map_full",
            "State-map inserts a kernel program could not make",
            m.map_full.clone(),
        );
        r.register(
            "anomalies",
            "Inputs a kernel program refused instead of guessing (a probe in a binary with no verified plan, an impossible status code, a caller outside the binary's code)",
            m.anomalies.clone(),
        );
        r.register(
            "program_misses",
            "Runs of each kernel program the kernel skipped because another BPF program was running on the CPU (their events are lost)",
            m.program_misses.clone(),
        );
        r.register(
            "decode_errors",
            "Kernel records the agent could not decode",
            m.decode_errors.clone(),
        );
        r.register(
            "drain_lag_seconds",
            "Age of the oldest kernel record the agent drained from the ring buffer, largest over the last second (0 when none arrived): how far the reader runs behind the kernel",
            m.drain_lag.clone(),
        );
        r.register(
            "mode",
            "How each watched replica's responses are seen: semantic (Go net/http's own state, counted in the kernel) or bytes (socket and TLS byte capture)",
            m.modes.0.clone(),
        );
        r.register(
            "hook_attached",
            "Whether each kernel hook is attached (1) or unavailable on this kernel (0)",
            m.hooks.clone(),
        );
        r.register(
            "data_path",
            "The socket data hooks byte capture runs on (1): every path but off is global, its programs run for the socket I/O of every process on the node and filter by cgroup",
            m.data_path.clone(),
        );
        for path in crate::sensor::DataPath::ALL {
            m.data_path
                .get_or_create(&DataPathLabels {
                    path: path.as_str(),
                })
                .set(0);
        }
        m
    }

    /// Record the running totals a kernel program reports. A total lower than the previous
    /// one means the program's counters restarted; the new total is then all new.
    pub fn set_totals(&mut self, program: &str, totals: SensorTotals) {
        let prev = self.totals_last.get(program).copied().unwrap_or_default();
        let labels = ProgramLabels {
            program: program.to_string(),
        };
        for (family, new, old) in [
            (&self.events, totals.emitted, prev.emitted),
            (&self.lost_events, totals.lost, prev.lost),
            (
                &self.read_failures,
                totals.read_failures,
                prev.read_failures,
            ),
            (&self.map_full, totals.map_full, prev.map_full),
            (&self.anomalies, totals.anomalies, prev.anomalies),
        ] {
            family.get_or_create(&labels).inc_by(total_delta(new, old));
        }
        self.totals_last.insert(program.to_string(), totals);
    }

    /// Record a kernel program's running count of skipped runs (the kernel's own count,
    /// which restarts when the program is reloaded).
    pub fn set_program_misses(&mut self, program: &str, total: u64) {
        let prev = self.misses_last.get(program).copied().unwrap_or_default();
        let labels = ProgramLabels {
            program: program.to_string(),
        };
        self.program_misses
            .get_or_create(&labels)
            .inc_by(total_delta(total, prev));
        self.misses_last.insert(program.to_string(), total);
    }

    /// The sensor's running count of undecodable records.
    pub fn set_decode_errors(&mut self, total: u64) {
        self.decode_errors
            .inc_by(total_delta(total, self.decode_errors_last));
        self.decode_errors_last = total;
    }

    /// The reader's largest drain lag over the last interval.
    pub fn set_drain_lag(&self, lag: std::time::Duration) {
        self.drain_lag.set(lag.as_secs_f64());
    }

    /// `path` at 1, every other data path at 0.
    pub fn set_data_path(&self, path: &'static str) {
        for p in crate::sensor::DataPath::ALL {
            self.data_path
                .get_or_create(&DataPathLabels { path: p.as_str() })
                .set(i64::from(p.as_str() == path));
        }
    }

    pub fn set_hook_attached(&self, hook: &str, attached: bool) {
        self.hooks
            .get_or_create(&HookLabels {
                hook: hook.to_string(),
            })
            .set(i64::from(attached));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Registry, SensorMetrics) {
        let mut reg = Registry::with_prefix("routeskew");
        let m = SensorMetrics::register(&mut reg);
        (reg, m)
    }

    use crate::metrics::encode;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    fn totals(emitted: u64, lost: u64) -> SensorTotals {
        SensorTotals {
            emitted,
            lost,
            ..SensorTotals::default()
        }
    }

    #[test]
    fn sensor_totals_never_go_backwards() {
        let (reg, mut m) = setup();
        m.set_totals("sys_read", totals(10, 1));
        m.set_totals("sys_read", totals(25, 1));
        m.set_totals("sys_write", totals(3, 0));
        let t = encode(&reg);
        assert_eq!(
            line(&t, "routeskew_sensor_events_total{program=\"sys_read\"}"),
            Some("routeskew_sensor_events_total{program=\"sys_read\"} 25")
        );
        // The kernel side restarted: 4 new events, not -21.
        m.set_totals("sys_read", totals(4, 0));
        m.set_totals("sys_read", totals(6, 2));
        let t = encode(&reg);
        assert_eq!(
            line(&t, "routeskew_sensor_events_total{program=\"sys_read\"}"),
            Some("routeskew_sensor_events_total{program=\"sys_read\"} 31")
        );
        assert_eq!(
            line(
                &t,
                "routeskew_sensor_lost_events_total{program=\"sys_read\"}"
            ),
            Some("routeskew_sensor_lost_events_total{program=\"sys_read\"} 3")
        );
        assert_eq!(
            line(&t, "routeskew_sensor_events_total{program=\"sys_write\"}"),
            Some("routeskew_sensor_events_total{program=\"sys_write\"} 3")
        );
    }

    #[test]
    fn program_misses_follow_the_kernel_total_across_reloads() {
        let (reg, mut m) = setup();
        let series = "routeskew_sensor_program_misses_total{program=\"inet_sock_set_state\"}";
        m.set_program_misses("inet_sock_set_state", 0);
        assert_eq!(line(&encode(&reg), series), Some(&*format!("{series} 0")));
        m.set_program_misses("inet_sock_set_state", 2);
        m.set_program_misses("inet_sock_set_state", 5);
        assert_eq!(line(&encode(&reg), series), Some(&*format!("{series} 5")));
        // Reloaded program: its count starts again, and all of it is new.
        m.set_program_misses("inet_sock_set_state", 1);
        assert_eq!(line(&encode(&reg), series), Some(&*format!("{series} 6")));
    }

    #[test]
    fn the_data_path_is_one_series_at_one() {
        let (reg, m) = setup();
        let at = |text: &str, path: &str| {
            let series = format!("routeskew_sensor_data_path{{path=\"{path}\"}}");
            line(text, &series).map(|l| l[series.len()..].trim().to_string())
        };
        let t = encode(&reg);
        for p in ["sock_tracepoints", "raw_sys_exit", "classic", "off"] {
            assert_eq!(at(&t, p).as_deref(), Some("0"), "{p} exists at zero");
        }
        m.set_data_path("off");
        m.set_data_path("sock_tracepoints");
        let t = encode(&reg);
        assert_eq!(at(&t, "sock_tracepoints").as_deref(), Some("1"));
        assert_eq!(at(&t, "off").as_deref(), Some("0"));
    }
}
