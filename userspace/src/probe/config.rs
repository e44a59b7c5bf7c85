//! What the prober is told: the interval, limits, hosts and checks, and the deadline it
//! implies for the sensor's copy of a probe.

use std::time::Duration;

use crate::config::WsPath;

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Hosts probed per round, every replica the same ones; past it, rounds rotate through
    /// the known hosts (each host is probed every `ceil(hosts / this)` rounds).
    pub hosts_per_round: usize,
    /// Hosts to probe (the agent's known hosts).
    pub hosts: Vec<String>,
    pub http_path: String,
    pub ws_paths: Vec<WsPath>,
    /// Statuses besides 101 that make a WebSocket check succeed (an auth redirect).
    pub ws_accept: Vec<u16>,
    /// When set, only endpoints on these ports are probed.
    pub ports: Vec<u16>,
    /// When set, the replica's API is on this port (no detection).
    pub api_port: Option<u16>,
    /// How long series of a vanished replica stay.
    pub series_grace: Duration,
    /// For the User-Agent.
    pub version: String,
}

impl ProbeConfig {
    /// How long the pipeline waits for the kernel's copy of a probe before declaring the
    /// sensor blind to it: long enough for the ring-buffer poll, short enough that a
    /// blind sensor shows within two probe intervals.
    pub fn sensor_deadline(&self) -> Duration {
        (self.interval / 2).clamp(Duration::from_millis(250), Duration::from_secs(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::test_support::cfg;

    #[test]
    fn sensor_deadline_fits_two_intervals() {
        assert_eq!(cfg(1000).sensor_deadline(), Duration::from_millis(500));
        assert_eq!(cfg(10_000).sensor_deadline(), Duration::from_secs(2));
        assert_eq!(cfg(100).sensor_deadline(), Duration::from_millis(250));
        // Worst case: the next probe starts 1.1 intervals after the sensor went blind,
        // and the deadline follows its answer.
        for ms in [1000u64, 2000, 10_000, 60_000] {
            let c = cfg(ms);
            assert!(c.interval.mul_f64(1.1) + c.sensor_deadline() < 2 * c.interval);
        }
    }
}
