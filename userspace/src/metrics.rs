//! The exported metrics (the external contract in DESIGN.md) and the HTTP endpoint serving
//! them.
//!
//! Everything is registered once in [`Metrics::new`]; stages update the families through the
//! accessors. Counters that the kernel reports as running totals go through
//! [`Metrics::set_sensor_totals`], which turns totals into increments so that the exported
//! counters never go backwards, even when the kernel side restarts from zero.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::classify::{HttpClass, Source, WsOutcome};
use crate::event::UpstreamFailureReason;
use crate::http::ParseError;

/// Running totals one kernel program reports (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SensorTotals {
    pub emitted: u64,
    pub lost: u64,
    pub read_failures: u64,
    pub map_full: u64,
}

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
pub struct ProgramLabels {
    pub program: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HookLabels {
    pub hook: String,
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LegLabels {
    pub leg: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn probe_duration_histogram() -> Histogram {
    // 5 ms … ~10 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

/// Health of the post-sensor pipeline: everything it dropped or could not read.
pub struct PipelineMetrics {
    /// Input events by kind (`data`, `closed`, `upstream_failure`).
    pub events: Family<KindLabels, Counter>,
    /// Captures that could not be parsed, by [`ParseError::kind`].
    pub parse_errors: Family<KindLabels, Counter>,
    /// Heads that did not end inside the capture.
    pub truncated_heads: Counter,
    /// Responses without a request to pair with (`client`, `upstream`).
    pub unmatched_responses: Family<LegLabels, Counter>,
    /// Requests whose connection closed before a response (`client`, `upstream`).
    pub unanswered_requests: Family<LegLabels, Counter>,
    /// Tracked connections dropped (`capacity`, `idle`).
    pub evicted_connections: Family<ReasonLabels, Counter>,
    /// Requests not tracked because a connection had too many in flight.
    pub pending_overflow: Counter,
    /// Data events not parsed (`after_upgrade`, `continuation`, `h2_desync`).
    pub skipped_data: Family<ReasonLabels, Counter>,
    /// Connection-level oddities (`reused_without_close`, `untracked_close`,
    /// `unseen_upgrade`, `interim_response`, `upstream_log_full`).
    pub connection_anomalies: Family<KindLabels, Counter>,
    /// Events whose process/cgroup is not a known replica.
    pub unknown_origin_events: Counter,
    /// Observations that could not be attributed to a replica (`unknown_origin`).
    pub dropped_observations: Family<ReasonLabels, Counter>,
    /// Router-miss signature on a request Traefik had forwarded upstream (counted as
    /// client_error, not router_miss).
    pub signature_with_upstream: Counter,
    /// Router-miss decided on the headers because the body was not captured.
    pub signature_without_body: Counter,
    /// Client requests with a present but invalid Host.
    pub invalid_hosts: Counter,
    /// HTTP/2 streams that could not be classified, by [`crate::h2::Reason`].
    pub h2_unclassified: Family<ReasonLabels, Counter>,
    /// Connections currently tracked.
    pub connections: Gauge,
    /// Replicas whose series were removed after they left the target set.
    pub removed_replicas: Counter,
}

impl PipelineMetrics {
    fn register(reg: &mut Registry) -> Self {
        let m = PipelineMetrics {
            events: Family::default(),
            parse_errors: Family::default(),
            truncated_heads: Counter::default(),
            unmatched_responses: Family::default(),
            unanswered_requests: Family::default(),
            evicted_connections: Family::default(),
            pending_overflow: Counter::default(),
            skipped_data: Family::default(),
            connection_anomalies: Family::default(),
            unknown_origin_events: Counter::default(),
            dropped_observations: Family::default(),
            signature_with_upstream: Counter::default(),
            signature_without_body: Counter::default(),
            invalid_hosts: Counter::default(),
            h2_unclassified: Family::default(),
            connections: Gauge::default(),
            removed_replicas: Counter::default(),
        };
        // Create every known series at zero so that rates work from the first increment.
        for kind in ["data", "closed", "upstream_failure"] {
            let _ = m.events.get_or_create(&KindLabels { kind });
        }
        for e in ParseError::ALL {
            let _ = m.parse_errors.get_or_create(&KindLabels { kind: e.kind() });
        }
        for leg in ["client", "upstream"] {
            let _ = m.unmatched_responses.get_or_create(&LegLabels { leg });
            let _ = m.unanswered_requests.get_or_create(&LegLabels { leg });
        }
        for reason in ["capacity", "idle"] {
            let _ = m
                .evicted_connections
                .get_or_create(&ReasonLabels { reason });
        }
        for r in crate::h2::Reason::ALL {
            let _ = m
                .h2_unclassified
                .get_or_create(&ReasonLabels { reason: r.as_str() });
        }
        for reason in ["after_upgrade", "continuation", "h2_desync"] {
            let _ = m.skipped_data.get_or_create(&ReasonLabels { reason });
        }
        for kind in [
            "reused_without_close",
            "untracked_close",
            "unseen_upgrade",
            "interim_response",
            "upstream_log_full",
        ] {
            let _ = m.connection_anomalies.get_or_create(&KindLabels { kind });
        }
        let _ = m.dropped_observations.get_or_create(&ReasonLabels {
            reason: "unknown_origin",
        });

        let r = reg.sub_registry_with_prefix("pipeline");
        r.register(
            "events",
            "Events received from the sensor, by kind",
            m.events.clone(),
        );
        r.register(
            "parse_errors",
            "Captured data that could not be parsed as HTTP/1.x, by kind",
            m.parse_errors.clone(),
        );
        r.register(
            "truncated_heads",
            "Message heads cut short by the capture or the syscall",
            m.truncated_heads.clone(),
        );
        r.register(
            "unmatched_responses",
            "Responses with no request to pair with",
            m.unmatched_responses.clone(),
        );
        r.register(
            "unanswered_requests",
            "Requests whose connection closed before a response",
            m.unanswered_requests.clone(),
        );
        r.register(
            "evicted_connections",
            "Tracked connections dropped to bound memory",
            m.evicted_connections.clone(),
        );
        r.register(
            "pending_overflow",
            "Requests not tracked because too many were in flight on their connection",
            m.pending_overflow.clone(),
        );
        r.register(
            "skipped_data",
            "Data events not parsed as a new message",
            m.skipped_data.clone(),
        );
        r.register(
            "connection_anomalies",
            "Connection-level inconsistencies between kernel events",
            m.connection_anomalies.clone(),
        );
        r.register(
            "unknown_origin_events",
            "Events from processes that are not a known replica",
            m.unknown_origin_events.clone(),
        );
        r.register(
            "dropped_observations",
            "Observations that could not be attributed to a replica",
            m.dropped_observations.clone(),
        );
        r.register("signature_with_upstream", "Router-miss 404 signatures for requests Traefik had forwarded upstream (counted as client_error)", m.signature_with_upstream.clone());
        r.register(
            "signature_without_body",
            "Router-miss 404s decided on the headers because the body was not captured",
            m.signature_without_body.clone(),
        );
        r.register(
            "invalid_hosts",
            "Client requests with an invalid Host header",
            m.invalid_hosts.clone(),
        );
        r.register(
            "h2_unclassified",
            "HTTP/2 streams not classified (decoder out of sync, limits), by reason",
            m.h2_unclassified.clone(),
        );
        r.register(
            "connections",
            "Connections currently tracked",
            m.connections.clone(),
        );
        r.register(
            "removed_replicas",
            "Replicas whose series were removed after leaving the target set",
            m.removed_replicas.clone(),
        );
        m
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

/// Health of Kubernetes discovery.
pub struct DiscoveryMetrics {
    /// 1 while the last request to the API server got an answer, 0 while it is unreachable.
    pub api_up: Gauge,
    /// Watch and list failures, by resource (`pods`, `ingresses`, `ingressroutes`, `discovery`).
    pub api_errors: Family<ResourceLabels, Counter>,
    /// Hosts learnt from Ingress/IngressRoute objects and flags, in use as `host` labels.
    pub known_hosts: Gauge,
    /// Host names dropped by the label bound or invalid.
    pub dropped_hosts: Gauge,
    /// IngressRoute rules that could not be parsed (hosts not taken from them).
    pub unparsable_rules: Gauge,
}

impl DiscoveryMetrics {
    fn register(reg: &mut Registry) -> Self {
        let m = DiscoveryMetrics {
            api_up: Gauge::default(),
            api_errors: Family::default(),
            known_hosts: Gauge::default(),
            dropped_hosts: Gauge::default(),
            unparsable_rules: Gauge::default(),
        };
        for resource in ["pods", "ingresses", "ingressroutes", "discovery"] {
            let _ = m.api_errors.get_or_create(&ResourceLabels { resource });
        }
        let r = reg.sub_registry_with_prefix("discovery");
        r.register(
            "api_up",
            "Whether the Kubernetes API server answered the last request (1) or is unreachable (0)",
            m.api_up.clone(),
        );
        r.register(
            "api_errors",
            "Failed Kubernetes list/watch requests, by resource",
            m.api_errors.clone(),
        );
        r.register(
            "known_hosts",
            "Hosts with their own host label (flags, Ingress and IngressRoute rules)",
            m.known_hosts.clone(),
        );
        r.register(
            "dropped_hosts",
            "Host names from Kubernetes objects not used as labels (invalid or over the limit)",
            m.dropped_hosts.clone(),
        );
        r.register(
            "unparsable_rules",
            "IngressRoute match rules that could not be parsed",
            m.unparsable_rules.clone(),
        );
        m
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

pub struct Metrics {
    registry: Registry,
    http_responses: Family<HttpLabels, Counter>,
    ws_upgrades: Family<WsLabels, Counter>,
    ws_early_closes: Family<HostLabels, Counter>,
    upstream_connect_failures: Family<UpstreamLabels, Counter>,
    probe_success: Family<ProbeLabels, Gauge>,
    probe_duration: HistogramFamily<ProbeCheckLabels>,
    replica_routers: Family<ReplicaLabels, Gauge>,
    sensor_events: Family<ProgramLabels, Counter>,
    sensor_lost_events: Family<ProgramLabels, Counter>,
    sensor_read_failures: Family<ProgramLabels, Counter>,
    sensor_map_full: Family<ProgramLabels, Counter>,
    sensor_program_misses: Family<ProgramLabels, Counter>,
    sensor_decode_errors: Counter,
    sensor_hooks: Family<HookLabels, Gauge>,
    sensor_blind_probes: Family<ReplicaLabels, Counter>,
    targets: Family<StateLabels, Gauge>,
    pipeline: PipelineMetrics,
    discovery: DiscoveryMetrics,
    /// Last totals seen per program.
    sensor_last: Mutex<HashMap<String, SensorTotals>>,
    decode_errors_last: Mutex<u64>,
    /// Last skipped-run totals seen per kernel program.
    misses_last: Mutex<HashMap<String, u64>>,
    ready: AtomicBool,
    ready_reason: Mutex<String>,
    /// Shown under "ready" (e.g. the API server is unreachable and state is stale).
    ready_note: Mutex<String>,
}

impl Metrics {
    pub fn new(build: BuildInfo) -> Self {
        let mut registry = Registry::with_prefix("routeskew");
        let http_responses = Family::<HttpLabels, Counter>::default();
        let ws_upgrades = Family::<WsLabels, Counter>::default();
        let ws_early_closes = Family::<HostLabels, Counter>::default();
        let upstream_connect_failures = Family::<UpstreamLabels, Counter>::default();
        let probe_success = Family::<ProbeLabels, Gauge>::default();
        let probe_duration: HistogramFamily<ProbeCheckLabels> =
            Family::new_with_constructor(probe_duration_histogram);
        let replica_routers = Family::<ReplicaLabels, Gauge>::default();
        let sensor_events = Family::<ProgramLabels, Counter>::default();
        let sensor_lost_events = Family::<ProgramLabels, Counter>::default();
        let sensor_read_failures = Family::<ProgramLabels, Counter>::default();
        let sensor_map_full = Family::<ProgramLabels, Counter>::default();
        let sensor_program_misses = Family::<ProgramLabels, Counter>::default();
        let sensor_decode_errors = Counter::default();
        let sensor_hooks = Family::<HookLabels, Gauge>::default();
        let sensor_blind_probes = Family::<ReplicaLabels, Counter>::default();
        let targets = Family::<StateLabels, Gauge>::default();
        let build_info = Family::<BuildLabels, Gauge>::default();

        registry.register(
            "http_responses",
            "Responses Traefik replicas wrote to clients, by class",
            http_responses.clone(),
        );
        registry.register(
            "ws_upgrades",
            "WebSocket upgrade requests by outcome",
            ws_upgrades.clone(),
        );
        registry.register(
            "ws_early_closes",
            "Upgraded WebSocket connections closed within the early-close window",
            ws_early_closes.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Failed connections from replicas to upstream servers, by reason",
            upstream_connect_failures.clone(),
        );
        registry.register(
            "probe_success",
            "Whether the last active probe of the replica succeeded (1) or not (0)",
            probe_success.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "Duration of active probes",
            probe_duration.clone(),
        );
        registry.register(
            "replica_routers",
            "Enabled routers reported by the replica's API",
            replica_routers.clone(),
        );
        registry.register(
            "sensor_events",
            "Events emitted by each kernel program",
            sensor_events.clone(),
        );
        registry.register(
            "sensor_lost_events",
            "Events each kernel program could not deliver",
            sensor_lost_events.clone(),
        );
        registry.register(
            "sensor_read_failures",
            "User-memory reads a kernel program could not make (page not present)",
            sensor_read_failures.clone(),
        );
        registry.register(
            "sensor_map_full",
            "State-map inserts a kernel program could not make",
            sensor_map_full.clone(),
        );
        registry.register(
            "sensor_program_misses",
            "Runs of each kernel program the kernel skipped because another BPF program was running on the CPU (their events are lost)",
            sensor_program_misses.clone(),
        );
        registry.register(
            "sensor_decode_errors",
            "Kernel records the agent could not decode",
            sensor_decode_errors.clone(),
        );
        registry.register(
            "sensor_hook_attached",
            "Whether each kernel hook is attached (1) or unavailable on this kernel (0)",
            sensor_hooks.clone(),
        );
        registry.register(
            "sensor_blind_probes",
            "Probe exchanges the sensor did not report",
            sensor_blind_probes.clone(),
        );
        registry.register(
            "targets",
            "Watched replicas by state (failed: not resolvable, or running a binary the TLS uprobes could not be put on)",
            targets.clone(),
        );
        registry.register("build_info", "Build information", build_info.clone());
        let pipeline = PipelineMetrics::register(&mut registry);
        let discovery = DiscoveryMetrics::register(&mut registry);

        build_info
            .get_or_create(&BuildLabels {
                version: build.version,
                kernel: build.kernel,
            })
            .set(1);
        for state in ["attached", "failed"] {
            let _ = targets.get_or_create(&StateLabels { state });
        }

        Metrics {
            registry,
            http_responses,
            ws_upgrades,
            ws_early_closes,
            upstream_connect_failures,
            probe_success,
            probe_duration,
            replica_routers,
            sensor_events,
            sensor_lost_events,
            sensor_read_failures,
            sensor_map_full,
            sensor_program_misses,
            sensor_decode_errors,
            sensor_hooks,
            sensor_blind_probes,
            targets,
            pipeline,
            discovery,
            sensor_last: Mutex::new(HashMap::new()),
            decode_errors_last: Mutex::new(0),
            misses_last: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            ready_reason: Mutex::new("starting".to_string()),
            ready_note: Mutex::new(String::new()),
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a label encoder could, and then the scrape
            // gets what was written so far rather than nothing.
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    pub fn set_targets(&self, attached: i64, failed: i64) {
        self.targets
            .get_or_create(&StateLabels { state: "attached" })
            .set(attached);
        self.targets
            .get_or_create(&StateLabels { state: "failed" })
            .set(failed);
    }

    /// Record the running totals a kernel program reports. A total lower than the previous
    /// one means the program's counters restarted; the new total is then all new.
    pub fn set_sensor_totals(&self, program: &str, totals: SensorTotals) {
        let mut last = self
            .sensor_last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = last.get(program).copied().unwrap_or_default();
        let labels = ProgramLabels {
            program: program.to_string(),
        };
        for (family, new, old) in [
            (&self.sensor_events, totals.emitted, prev.emitted),
            (&self.sensor_lost_events, totals.lost, prev.lost),
            (
                &self.sensor_read_failures,
                totals.read_failures,
                prev.read_failures,
            ),
            (&self.sensor_map_full, totals.map_full, prev.map_full),
        ] {
            family.get_or_create(&labels).inc_by(total_delta(new, old));
        }
        last.insert(program.to_string(), totals);
    }

    /// Record a kernel program's running count of skipped runs (the kernel's own count,
    /// which restarts when the program is reloaded).
    pub fn set_program_misses(&self, program: &str, total: u64) {
        let mut last = self
            .misses_last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = last.get(program).copied().unwrap_or_default();
        let labels = ProgramLabels {
            program: program.to_string(),
        };
        self.sensor_program_misses
            .get_or_create(&labels)
            .inc_by(total_delta(total, prev));
        last.insert(program.to_string(), total);
    }

    /// The sensor's running count of undecodable records.
    pub fn set_decode_errors(&self, total: u64) {
        let mut last = self
            .decode_errors_last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.sensor_decode_errors.inc_by(total_delta(total, *last));
        *last = total;
    }

    pub fn set_hook_attached(&self, hook: &str, attached: bool) {
        self.sensor_hooks
            .get_or_create(&HookLabels {
                hook: hook.to_string(),
            })
            .set(i64::from(attached));
    }

    /// The agent sets this once the sensor is attached and discovery ran; `reason` says why
    /// not when `ready` is false.
    pub fn set_ready(&self, ready: bool, reason: &str) {
        *self
            .ready_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason.to_string();
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// A degraded-but-ready condition shown in the `/readyz` body ("" for none).
    pub fn set_ready_note(&self, note: &str) {
        *self
            .ready_note
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = note.to_string();
    }

    fn ready_note(&self) -> String {
        self.ready_note
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn ready_reason(&self) -> String {
        self.ready_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn http_responses(&self) -> &Family<HttpLabels, Counter> {
        &self.http_responses
    }

    pub fn ws_upgrades(&self) -> &Family<WsLabels, Counter> {
        &self.ws_upgrades
    }

    pub fn ws_early_closes(&self) -> &Family<HostLabels, Counter> {
        &self.ws_early_closes
    }

    pub fn upstream_connect_failures(&self) -> &Family<UpstreamLabels, Counter> {
        &self.upstream_connect_failures
    }

    /// Filled by the prober.
    pub fn probe_success(&self) -> &Family<ProbeLabels, Gauge> {
        &self.probe_success
    }

    /// Filled by the prober.
    pub fn probe_duration(&self) -> &Family<ProbeCheckLabels, Histogram, fn() -> Histogram> {
        &self.probe_duration
    }

    /// Filled by the replica API poller.
    pub fn replica_routers(&self) -> &Family<ReplicaLabels, Gauge> {
        &self.replica_routers
    }

    /// Filled by the prober's sensor self-test.
    pub fn sensor_blind_probes(&self) -> &Family<ReplicaLabels, Counter> {
        &self.sensor_blind_probes
    }

    pub fn pipeline(&self) -> &PipelineMetrics {
        &self.pipeline
    }

    pub fn discovery(&self) -> &DiscoveryMetrics {
        &self.discovery
    }

    pub fn http_labels(
        replica: &str,
        namespace: &str,
        host: &str,
        class: HttpClass,
        source: Source,
    ) -> HttpLabels {
        HttpLabels {
            replica: replica.to_string(),
            namespace: namespace.to_string(),
            host: host.to_string(),
            class: class.as_str(),
            source: source.as_str(),
        }
    }

    pub fn ws_labels(
        replica: &str,
        namespace: &str,
        host: &str,
        outcome: WsOutcome,
        source: Source,
    ) -> WsLabels {
        WsLabels {
            replica: replica.to_string(),
            namespace: namespace.to_string(),
            host: host.to_string(),
            outcome: outcome.as_str(),
            source: source.as_str(),
        }
    }

    pub fn upstream_labels(
        replica: &str,
        namespace: &str,
        reason: UpstreamFailureReason,
    ) -> UpstreamLabels {
        UpstreamLabels {
            replica: replica.to_string(),
            namespace: namespace.to_string(),
            reason: reason.as_str(),
        }
    }
}

/// The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(ready_handler))
        .with_state(metrics)
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        m.encode(),
    )
}

async fn ready_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        let note = m.ready_note();
        if note.is_empty() {
            (StatusCode::OK, "ready\n".to_string())
        } else {
            (StatusCode::OK, format!("ready\n{note}\n"))
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", m.ready_reason()),
        )
    }
}

/// Serve the endpoints on `listener` until the task is dropped or the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics)).await
}

/// The sample names an OpenMetrics exposition can hold, from its `# TYPE <name> <type>`
/// lines: a counter's `<name>_total`, a histogram's `_bucket`, `_sum` and `_count`, an info
/// metric's `<name>_info`, a gauge's (and any other type's) bare name. Read from the
/// descriptors, not the samples, so a family's names do not depend on which of its
/// samples happen to be present; counters' optional `_created` samples are not listed
/// (the agent writes none).
pub fn sample_names(exposition: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in exposition.lines() {
        let Some(descriptor) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = descriptor.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
            "summary" => &["", "_sum", "_count"],
            "info" => &["_info"],
            // gauge, stateset, unknown: samples carry the family's name.
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
    }
    names
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(BuildInfo {
            version: "1.2.3".into(),
            kernel: "6.18.0".into(),
        })
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn contract_names_types_and_labels() {
        let m = metrics();
        // Families without series are not exposed; give each one a series.
        let _ = m.http_responses().get_or_create(&Metrics::http_labels(
            "r",
            "n",
            "h",
            HttpClass::Ok,
            Source::Passive,
        ));
        let _ = m.ws_upgrades().get_or_create(&Metrics::ws_labels(
            "r",
            "n",
            "h",
            WsOutcome::Reset,
            Source::Probe,
        ));
        let _ = m.ws_early_closes().get_or_create(&HostLabels {
            replica: "r".into(),
            namespace: "n".into(),
            host: "h".into(),
        });
        let _ = m
            .upstream_connect_failures()
            .get_or_create(&Metrics::upstream_labels(
                "r",
                "n",
                UpstreamFailureReason::Refused,
            ));
        m.probe_success()
            .get_or_create(&ProbeLabels {
                replica: "r".into(),
                namespace: "n".into(),
                host: "h".into(),
                check: "websocket",
            })
            .set(1);
        m.probe_duration()
            .get_or_create(&ProbeCheckLabels {
                replica: "r".into(),
                namespace: "n".into(),
                check: "http",
            })
            .observe(0.02);
        m.replica_routers()
            .get_or_create(&ReplicaLabels {
                replica: "r".into(),
                namespace: "n".into(),
            })
            .set(12);
        m.sensor_blind_probes()
            .get_or_create(&ReplicaLabels {
                replica: "r".into(),
                namespace: "n".into(),
            })
            .inc();
        m.set_sensor_totals("p", totals(1, 0));
        let text = m.encode();
        for series in [
            "routeskew_http_responses_total{replica=\"r\",namespace=\"n\",host=\"h\",class=\"ok\",source=\"passive\"} 0\n",
            "routeskew_ws_upgrades_total{replica=\"r\",namespace=\"n\",host=\"h\",outcome=\"reset\",source=\"probe\"} 0\n",
            "routeskew_ws_early_closes_total{replica=\"r\",namespace=\"n\",host=\"h\"} 0\n",
            "routeskew_upstream_connect_failures_total{replica=\"r\",namespace=\"n\",reason=\"refused\"} 0\n",
            "routeskew_probe_success{replica=\"r\",namespace=\"n\",host=\"h\",check=\"websocket\"} 1\n",
            "routeskew_probe_duration_seconds_count{replica=\"r\",namespace=\"n\",check=\"http\"} 1\n",
            "routeskew_replica_routers{replica=\"r\",namespace=\"n\"} 12\n",
            "routeskew_sensor_blind_probes_total{replica=\"r\",namespace=\"n\"} 1\n",
            "routeskew_sensor_events_total{program=\"p\"} 1\n",
            "routeskew_sensor_lost_events_total{program=\"p\"} 0\n",
        ] {
            assert!(text.contains(series), "{series} missing in:\n{text}");
        }
        for (name, ty) in [
            ("routeskew_http_responses", "counter"),
            ("routeskew_ws_upgrades", "counter"),
            ("routeskew_ws_early_closes", "counter"),
            ("routeskew_upstream_connect_failures", "counter"),
            ("routeskew_probe_success", "gauge"),
            ("routeskew_probe_duration_seconds", "histogram"),
            ("routeskew_replica_routers", "gauge"),
            ("routeskew_sensor_events", "counter"),
            ("routeskew_sensor_lost_events", "counter"),
            ("routeskew_sensor_blind_probes", "counter"),
            ("routeskew_targets", "gauge"),
            ("routeskew_build_info", "gauge"),
            ("routeskew_pipeline_parse_errors", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {ty}\n")),
                "{name} {ty} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("routeskew_build_info{version=\"1.2.3\",kernel=\"6.18.0\"} 1\n"));
        assert!(text.contains("routeskew_targets{state=\"attached\"} 0\n"));
        assert!(text.contains("routeskew_pipeline_parse_errors_total{kind=\"not_http\"} 0\n"));
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
        let m = metrics();
        m.set_sensor_totals("sys_read", totals(10, 1));
        m.set_sensor_totals("sys_read", totals(25, 1));
        m.set_sensor_totals("sys_write", totals(3, 0));
        let t = m.encode();
        assert_eq!(
            line(&t, "routeskew_sensor_events_total{program=\"sys_read\"}"),
            Some("routeskew_sensor_events_total{program=\"sys_read\"} 25")
        );
        // The kernel side restarted: 4 new events, not -21.
        m.set_sensor_totals("sys_read", totals(4, 0));
        m.set_sensor_totals("sys_read", totals(6, 2));
        let t = m.encode();
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
        let m = metrics();
        let series = "routeskew_sensor_program_misses_total{program=\"inet_sock_set_state\"}";
        m.set_program_misses("inet_sock_set_state", 0);
        assert_eq!(line(&m.encode(), series), Some(&*format!("{series} 0")));
        m.set_program_misses("inet_sock_set_state", 2);
        m.set_program_misses("inet_sock_set_state", 5);
        assert_eq!(line(&m.encode(), series), Some(&*format!("{series} 5")));
        // Reloaded program: its count starts again, and all of it is new.
        m.set_program_misses("inet_sock_set_state", 1);
        assert_eq!(line(&m.encode(), series), Some(&*format!("{series} 6")));
    }

    #[test]
    fn targets_gauge() {
        let m = metrics();
        m.set_targets(3, 1);
        let t = m.encode();
        assert!(t.contains("routeskew_targets{state=\"attached\"} 3\n"));
        assert!(t.contains("routeskew_targets{state=\"failed\"} 1\n"));
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let status: u16 = text[9..12].parse().unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let ct = head
            .lines()
            .find_map(|l| l.strip_prefix("content-type: "))
            .unwrap_or_default()
            .to_string();
        (status, ct, body.to_string())
    }

    #[tokio::test]
    async fn serves_endpoints() {
        let m = Arc::new(metrics());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, m.clone()));

        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok\n");

        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "not ready: starting\n");
        m.set_ready(false, "sensor not attached");
        assert_eq!(
            get(addr, "/readyz").await.2,
            "not ready: sensor not attached\n"
        );
        m.set_ready(true, "");
        assert_eq!(get(addr, "/readyz").await.0, 200);
        m.set_ready_note("kubernetes API unreachable");
        assert_eq!(
            get(addr, "/readyz").await,
            (
                200,
                "text/plain; charset=utf-8".into(),
                "ready\nkubernetes API unreachable\n".into()
            )
        );
        m.set_ready_note("");
        assert_eq!(get(addr, "/readyz").await.2, "ready\n");

        m.set_targets(2, 0);
        let (status, ct, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
        assert!(body.contains("routeskew_targets{state=\"attached\"} 2\n"));
        assert_eq!(get(addr, "/nope").await.0, 404);
        server.abort();
    }

    #[test]
    fn sample_names_follow_the_type_lines() {
        let text = "# HELP a_requests Requests.\n\
                    # TYPE a_requests counter\n\
                    a_requests_total{x=\"1\"} 3\n\
                    # TYPE a_seconds histogram\n\
                    # UNIT a_seconds seconds\n\
                    # TYPE a_up gauge\n\
                    a_up 1\n\
                    # TYPE a_build info\n\
                    # TYPE a_q summary\n\
                    # TYPE a_odd\n\
                    a_not_typed 2\n\
                    # EOF\n";
        let want: std::collections::BTreeSet<String> = [
            "a_requests_total",
            "a_seconds_bucket",
            "a_seconds_sum",
            "a_seconds_count",
            "a_up",
            "a_build_info",
            "a_q",
            "a_q_sum",
            "a_q_count",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(sample_names(text), want);
        assert!(sample_names("").is_empty());
    }

    /// `routeskew metrics-list` must name every registered family, including those
    /// without a series yet (prometheus-client leaves those out of the exposition).
    #[test]
    fn metric_names_cover_every_registered_family() {
        // prometheus-client has no API that lists a registry's families; its Debug
        // output shows one `Descriptor` per registered metric.
        let registered = format!("{:?}", metrics().registry)
            .matches("Descriptor {")
            .count();
        assert!(
            registered > 30,
            "counted {registered} registered families: the Debug format changed"
        );
        let exposed = crate::agent::exposition_with_every_family()
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .count();
        assert_eq!(
            exposed, registered,
            "agent::exposition_with_every_family misses a family without series"
        );
        let names = crate::agent::metric_names();
        for name in [
            "routeskew_http_responses_total",
            "routeskew_targets",
            "routeskew_build_info",
            "routeskew_probe_duration_seconds_bucket",
            "routeskew_probe_duration_seconds_count",
            "routeskew_sensor_decode_errors_total",
            "routeskew_sensor_hook_attached",
            "routeskew_pipeline_connections",
            "routeskew_discovery_api_errors_total",
        ] {
            assert!(names.contains(name), "{name} not in {names:#?}");
        }
    }
}
