//! Every metric of the agent in one registry: the contract families and each stage's own,
//! registered once at start-up; and the list of sample names they can produce
//! (`routeskew metrics-list`).

use prometheus_client::registry::Registry;

use crate::discovery::metrics::DiscoveryMetrics;
use crate::metrics::{self, BuildInfo, Contract, ServerMetrics};
use crate::pipeline::metrics::PipelineMetrics;
use crate::sensor::metrics::{SensorMetrics, SensorTotals};

/// Every metric of the agent, registered once at start-up: the contract families and each
/// stage's own.
pub struct AgentMetrics {
    pub registry: Registry,
    pub contract: Contract,
    pub sensor: SensorMetrics,
    pub pipeline: PipelineMetrics,
    pub discovery: DiscoveryMetrics,
    pub server: ServerMetrics,
}

impl AgentMetrics {
    pub fn register(build: BuildInfo) -> Self {
        let mut registry = Registry::with_prefix("routeskew");
        let contract = Contract::register(&mut registry, build);
        let sensor = SensorMetrics::register(&mut registry);
        let pipeline = PipelineMetrics::register(&mut registry);
        let discovery = DiscoveryMetrics::register(&mut registry);
        let server = ServerMetrics::register(&mut registry);
        AgentMetrics {
            registry,
            contract,
            sensor,
            pipeline,
            discovery,
            server,
        }
    }

    /// The exposition `/metrics` serves.
    pub fn encode(&self) -> String {
        metrics::encode(&self.registry)
    }
}

/// Every sample name the agent's `/metrics` can contain, sorted (`routeskew
/// metrics-list`; the deploy checks hold the dashboard and the alert rules to it).
pub fn metric_names() -> std::collections::BTreeSet<String> {
    metrics::sample_names(&exposition_with_every_family())
}

/// The exposition of a fresh [`AgentMetrics`] in which every family has a series.
/// prometheus-client writes a family's `# TYPE` line only once it has one, and the
/// families below get theirs at run time (per replica, program or hook), so each gets a
/// placeholder series here; a metrics unit test checks that no registered family is
/// missing.
pub(crate) fn exposition_with_every_family() -> String {
    use crate::metrics::{
        HostLabels, HttpLabels, ProbeCheckLabels, ProbeLabels, ReplicaLabels, UpstreamLabels,
        WsLabels,
    };

    let mut m = AgentMetrics::register(BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: String::new(),
    });
    let c = &m.contract;
    let replica = || ReplicaLabels {
        replica: String::new(),
        namespace: String::new(),
    };
    let _ = c.http_responses.get_or_create(&HttpLabels {
        replica: String::new(),
        namespace: String::new(),
        host: String::new(),
        class: "ok",
        source: "passive",
    });
    let _ = c.ws_upgrades.get_or_create(&WsLabels {
        replica: String::new(),
        namespace: String::new(),
        host: String::new(),
        outcome: "upgraded",
        source: "passive",
    });
    let _ = c.ws_early_closes.get_or_create(&HostLabels {
        replica: String::new(),
        namespace: String::new(),
        host: String::new(),
    });
    let _ = c.upstream_connect_failures.get_or_create(&UpstreamLabels {
        replica: String::new(),
        namespace: String::new(),
        reason: "refused",
    });
    let _ = c.probe_success.get_or_create(&ProbeLabels {
        replica: String::new(),
        namespace: String::new(),
        host: String::new(),
        check: "http",
    });
    let _ = c.probe_duration.get_or_create(&ProbeCheckLabels {
        replica: String::new(),
        namespace: String::new(),
        check: "http",
    });
    let _ = c.replica_routers.get_or_create(&replica());
    let _ = c.sensor_blind_probes.get_or_create(&replica());
    // The four per-program totals, the skipped runs and the hook gauge.
    m.sensor.set_totals("", SensorTotals::default());
    m.sensor.set_program_misses("", 0);
    m.sensor.set_hook_attached("", false);
    m.sensor.modes.set([crate::sensor::metrics::ModeLabels {
        replica: String::new(),
        namespace: String::new(),
        mode: String::new(),
    }]);
    m.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `routeskew metrics-list` must name every registered family, including those
    /// without a series yet (prometheus-client leaves those out of the exposition).
    #[test]
    fn metric_names_cover_every_registered_family() {
        // prometheus-client has no API that lists a registry's families; its Debug
        // output shows one `Descriptor` per registered metric.
        let registered = format!(
            "{:?}",
            AgentMetrics::register(BuildInfo {
                version: String::new(),
                kernel: String::new(),
            })
            .registry
        )
        .matches("Descriptor {")
        .count();
        assert!(
            registered > 30,
            "counted {registered} registered families: the Debug format changed"
        );
        let exposed = exposition_with_every_family()
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .count();
        assert_eq!(
            exposed, registered,
            "exposition_with_every_family misses a family without series"
        );
        let names = metric_names();
        for name in [
            "routeskew_http_responses_total",
            "routeskew_targets",
            "routeskew_build_info",
            "routeskew_probe_duration_seconds_bucket",
            "routeskew_probe_duration_seconds_count",
            "routeskew_sensor_decode_errors_total",
            "routeskew_sensor_hook_attached",
            "routeskew_sensor_mode",
            "routeskew_pipeline_connections",
            "routeskew_discovery_api_errors_total",
        ] {
            assert!(names.contains(name), "{name} not in {names:#?}");
        }
    }
}
