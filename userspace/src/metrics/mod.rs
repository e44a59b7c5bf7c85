//! The exposition: the registry every stage registers its own metrics in, the external
//! contract's families (DESIGN.md: the metrics users build dashboards and alerts on),
//! readiness, and the HTTP endpoint serving them.
//!
//! Each stage owns a struct of its health metrics with a `register(&mut Registry)` (the
//! pipeline's `PipelineMetrics`, the sensor's `SensorMetrics`, discovery's
//! `DiscoveryMetrics`); the agent registers them all once at start-up. The contract
//! families live here because several stages fill them.

mod server;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    pub version: String,
    pub kernel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub replica: String,
    pub namespace: String,
    pub host: String,
    pub class: &'static str,
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WsLabels {
    pub replica: String,
    pub namespace: String,
    pub host: String,
    pub outcome: &'static str,
    pub source: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HostLabels {
    pub replica: String,
    pub namespace: String,
    pub host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub replica: String,
    pub namespace: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProbeLabels {
    pub replica: String,
    pub namespace: String,
    pub host: String,
    pub check: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProbeCheckLabels {
    pub replica: String,
    pub namespace: String,
    pub check: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub kernel: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn probe_duration_histogram() -> Histogram {
    // 5 ms … ~10 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// The families of the external contract, shared by the stages that fill them (cheap to
/// clone: every family is a handle).
#[derive(Clone)]
pub struct Contract {
    /// Filled by the pipeline's aggregator.
    pub http_responses: Family<HttpLabels, Counter>,
    pub ws_upgrades: Family<WsLabels, Counter>,
    pub ws_early_closes: Family<HostLabels, Counter>,
    pub upstream_connect_failures: Family<UpstreamLabels, Counter>,
    /// Filled by the pipeline's aggregator from the prober's probe reports.
    pub sensor_blind_probes: Family<ReplicaLabels, Counter>,
    /// Filled by the prober.
    pub probe_success: Family<ProbeLabels, Gauge>,
    pub probe_duration: HistogramFamily<ProbeCheckLabels>,
    /// Filled by the replica API poller.
    pub replica_routers: Family<ReplicaLabels, Gauge>,
    /// Filled by the agent from discovery and attach results.
    targets: Family<StateLabels, Gauge>,
}

impl Contract {
    pub fn register(registry: &mut Registry, build: BuildInfo) -> Self {
        let c = Contract {
            http_responses: Family::default(),
            ws_upgrades: Family::default(),
            ws_early_closes: Family::default(),
            upstream_connect_failures: Family::default(),
            sensor_blind_probes: Family::default(),
            probe_success: Family::default(),
            probe_duration: Family::new_with_constructor(probe_duration_histogram),
            replica_routers: Family::default(),
            targets: Family::default(),
        };
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "http_responses",
            "Responses Traefik replicas wrote to clients, by class",
            c.http_responses.clone(),
        );
        registry.register(
            "ws_upgrades",
            "WebSocket upgrade requests by outcome",
            c.ws_upgrades.clone(),
        );
        registry.register(
            "ws_early_closes",
            "Upgraded WebSocket connections closed within the early-close window",
            c.ws_early_closes.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Failed connections from replicas to upstream servers, by reason",
            c.upstream_connect_failures.clone(),
        );
        registry.register(
            "probe_success",
            "Whether the last active probe of the replica succeeded (1) or not (0)",
            c.probe_success.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "Duration of active probes",
            c.probe_duration.clone(),
        );
        registry.register(
            "replica_routers",
            "Enabled routers reported by the replica's API",
            c.replica_routers.clone(),
        );
        registry.register(
            "sensor_blind_probes",
            "Probe exchanges the sensor did not report",
            c.sensor_blind_probes.clone(),
        );
        registry.register(
            "targets",
            "Watched replicas by state (failed: not resolvable, or running a binary the TLS uprobes could not be put on)",
            c.targets.clone(),
        );
        registry.register("build_info", "Build information", build_info.clone());
        build_info
            .get_or_create(&BuildLabels {
                version: build.version,
                kernel: build.kernel,
            })
            .set(1);
        for state in ["attached", "failed"] {
            let _ = c.targets.get_or_create(&StateLabels { state });
        }
        c
    }

    pub fn set_targets(&self, attached: i64, failed: i64) {
        self.targets
            .get_or_create(&StateLabels { state: "attached" })
            .set(attached);
        self.targets
            .get_or_create(&StateLabels { state: "failed" })
            .set(failed);
    }
}

pub use server::{
    encode, router, sample_names, serve, Exposition, Readiness, ServerMetrics, SCRAPE_CONCURRENCY,
};

#[cfg(test)]
mod tests;
