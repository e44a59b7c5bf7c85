//! The exposition: the registry every stage registers its own metrics in, the external
//! contract's families (DESIGN.md: the metrics users build dashboards and alerts on),
//! readiness, and the HTTP endpoint serving them.
//!
//! Each stage owns a struct of its health metrics with a `register(&mut Registry)` (the
//! pipeline's `PipelineMetrics`, the sensor's `SensorMetrics`, discovery's
//! `DiscoveryMetrics`); the agent registers them all once at start-up. The contract
//! families live here because several stages fill them.

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

/// What `/readyz` says: set by the agent once the sensor is attached and discovery ran,
/// and by discovery while the API server is unreachable (cheap to clone).
#[derive(Clone, Default)]
pub struct Readiness(Arc<ReadyState>);

#[derive(Default)]
struct ReadyState {
    ready: AtomicBool,
    reason: Mutex<String>,
    /// Shown under "ready" (e.g. the API server is unreachable and state is stale).
    note: Mutex<String>,
}

fn read(m: &Mutex<String>) -> String {
    m.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn write(m: &Mutex<String>, text: &str) {
    *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = text.to_string();
}

impl Readiness {
    /// Not ready, for `reason`.
    pub fn new(reason: &str) -> Self {
        let r = Readiness::default();
        r.set(false, reason);
        r
    }

    /// `reason` says why not when `ready` is false.
    pub fn set(&self, ready: bool, reason: &str) {
        write(&self.0.reason, reason);
        self.0.ready.store(ready, Ordering::SeqCst);
    }

    /// A degraded-but-ready condition shown in the `/readyz` body ("" for none).
    pub fn set_note(&self, note: &str) {
        write(&self.0.note, note);
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }
}

/// The OpenMetrics text exposition of every metric in `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        // Writing to a String cannot fail; a label encoder could, and then the scrape
        // gets what was written so far rather than nothing.
        tracing::error!(error = %e, "encoding metrics failed");
    }
    out
}

/// What the HTTP endpoints serve: the registry, complete once every stage registered,
/// and readiness.
pub struct Exposition {
    pub registry: Registry,
    pub readiness: Readiness,
}

/// The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
pub fn router(exposition: Arc<Exposition>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(ready_handler))
        .with_state(exposition)
}

async fn metrics_handler(State(e): State<Arc<Exposition>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        encode(&e.registry),
    )
}

async fn ready_handler(State(e): State<Arc<Exposition>>) -> impl IntoResponse {
    let r = &e.readiness.0;
    if e.readiness.is_ready() {
        let note = read(&r.note);
        if note.is_empty() {
            (StatusCode::OK, "ready\n".to_string())
        } else {
            (StatusCode::OK, format!("ready\n{note}\n"))
        }
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", read(&r.reason)),
        )
    }
}

/// Serve the endpoints on `listener` until the task is dropped or the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    exposition: Arc<Exposition>,
) -> std::io::Result<()> {
    axum::serve(listener, router(exposition)).await
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
    use super::*;

    fn setup() -> (Registry, Contract) {
        let mut reg = Registry::with_prefix("routeskew");
        let c = Contract::register(
            &mut reg,
            BuildInfo {
                version: "1.2.3".into(),
                kernel: "6.18.0".into(),
            },
        );
        (reg, c)
    }

    fn replica_labels() -> ReplicaLabels {
        ReplicaLabels {
            replica: "r".into(),
            namespace: "n".into(),
        }
    }

    #[test]
    fn contract_names_types_and_labels() {
        let (reg, m) = setup();
        let _ = m.http_responses.get_or_create(&HttpLabels {
            replica: "r".into(),
            namespace: "n".into(),
            host: "h".into(),
            class: "ok",
            source: "passive",
        });
        let _ = m.ws_upgrades.get_or_create(&WsLabels {
            replica: "r".into(),
            namespace: "n".into(),
            host: "h".into(),
            outcome: "reset",
            source: "probe",
        });
        let _ = m.ws_early_closes.get_or_create(&HostLabels {
            replica: "r".into(),
            namespace: "n".into(),
            host: "h".into(),
        });
        let _ = m.upstream_connect_failures.get_or_create(&UpstreamLabels {
            replica: "r".into(),
            namespace: "n".into(),
            reason: "refused",
        });
        m.probe_success
            .get_or_create(&ProbeLabels {
                replica: "r".into(),
                namespace: "n".into(),
                host: "h".into(),
                check: "websocket",
            })
            .set(1);
        m.probe_duration
            .get_or_create(&ProbeCheckLabels {
                replica: "r".into(),
                namespace: "n".into(),
                check: "http",
            })
            .observe(0.02);
        m.replica_routers.get_or_create(&replica_labels()).set(12);
        m.sensor_blind_probes.get_or_create(&replica_labels()).inc();
        let text = encode(&reg);
        for series in [
            "routeskew_http_responses_total{replica=\"r\",namespace=\"n\",host=\"h\",class=\"ok\",source=\"passive\"} 0\n",
            "routeskew_ws_upgrades_total{replica=\"r\",namespace=\"n\",host=\"h\",outcome=\"reset\",source=\"probe\"} 0\n",
            "routeskew_ws_early_closes_total{replica=\"r\",namespace=\"n\",host=\"h\"} 0\n",
            "routeskew_upstream_connect_failures_total{replica=\"r\",namespace=\"n\",reason=\"refused\"} 0\n",
            "routeskew_probe_success{replica=\"r\",namespace=\"n\",host=\"h\",check=\"websocket\"} 1\n",
            "routeskew_probe_duration_seconds_count{replica=\"r\",namespace=\"n\",check=\"http\"} 1\n",
            "routeskew_replica_routers{replica=\"r\",namespace=\"n\"} 12\n",
            "routeskew_sensor_blind_probes_total{replica=\"r\",namespace=\"n\"} 1\n",
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
            ("routeskew_sensor_blind_probes", "counter"),
            ("routeskew_targets", "gauge"),
            ("routeskew_build_info", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {ty}\n")),
                "{name} {ty} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("routeskew_build_info{version=\"1.2.3\",kernel=\"6.18.0\"} 1\n"));
        assert!(text.contains("routeskew_targets{state=\"attached\"} 0\n"));
    }

    #[test]
    fn targets_gauge() {
        let (reg, m) = setup();
        m.set_targets(3, 1);
        let t = encode(&reg);
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
        let (registry, m) = setup();
        let readiness = Readiness::new("starting");
        let r = readiness.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Exposition {
                registry,
                readiness,
            }),
        ));

        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!(status, 200);
        assert_eq!(body, "ok\n");

        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "not ready: starting\n");
        r.set(false, "sensor not attached");
        assert_eq!(
            get(addr, "/readyz").await.2,
            "not ready: sensor not attached\n"
        );
        r.set(true, "");
        assert_eq!(get(addr, "/readyz").await.0, 200);
        r.set_note("kubernetes API unreachable");
        assert_eq!(
            get(addr, "/readyz").await,
            (
                200,
                "text/plain; charset=utf-8".into(),
                "ready\nkubernetes API unreachable\n".into()
            )
        );
        r.set_note("");
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
}
