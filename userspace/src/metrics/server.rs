//! Readiness and the HTTP endpoint serving the exposition: `/metrics` (OpenMetrics),
//! `/healthz`, `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use super::OPENMETRICS_CONTENT_TYPE;

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

/// Scrapes encoded at the same time, at most: a burst of scrapes waits its turn instead
/// of taking every thread the agent has.
pub const SCRAPE_CONCURRENCY: usize = 4;
/// How long a scrape waits for its turn before it is refused (503, counted).
const SCRAPE_WAIT: Duration = Duration::from_secs(2);

/// The metrics endpoint's own metric: scrapes it refused.
#[derive(Clone, Default)]
pub struct ServerMetrics {
    refused: Counter,
}

impl ServerMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = ServerMetrics::default();
        reg.register(
            "scrapes_refused",
            "Scrapes of /metrics refused (503) because the agent was already encoding its limit of concurrent scrapes for longer than the wait",
            m.refused.clone(),
        );
        m
    }
}

/// What the HTTP endpoints serve: the registry, complete once every stage registered,
/// and readiness.
pub struct Exposition {
    registry: Registry,
    readiness: Readiness,
    scrapes: Semaphore,
    metrics: ServerMetrics,
    /// The verdicts' JSON document, as last published.
    verdicts: Mutex<String>,
}

impl Exposition {
    pub fn new(registry: Registry, readiness: Readiness, metrics: ServerMetrics) -> Self {
        Exposition {
            registry,
            readiness,
            scrapes: Semaphore::new(SCRAPE_CONCURRENCY),
            metrics,
            verdicts: Mutex::new(r#"{"generated_at":0,"replicas":[]}"#.to_string()),
        }
    }

    /// Replaces the document `/api/v1/replicas` serves.
    pub fn set_verdicts(&self, json: String) {
        write(&self.verdicts, &json);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, `/api/v1/replicas`.
pub fn router(exposition: Arc<Exposition>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/replicas", get(verdicts_handler))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(ready_handler))
        .with_state(exposition)
}

/// Encodes on the blocking pool, so that a large exposition does not hold up the run
/// loop sharing the agent's runtime thread.
async fn metrics_handler(State(e): State<Arc<Exposition>>) -> Response {
    let Ok(Ok(permit)) = tokio::time::timeout(SCRAPE_WAIT, e.scrapes.acquire()).await else {
        e.metrics.refused.inc();
        tracing::debug!("scrape refused: too many concurrent scrapes");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent scrapes\n",
        )
            .into_response();
    };
    let exposition = Arc::clone(&e);
    let span = tracing::Span::current();
    let body = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        encode(&exposition.registry)
    })
    .await;
    drop(permit);
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response()
        }
    }
}

/// The routeless verdicts of the replicas this agent watches (see [`crate::verdict`]).
async fn verdicts_handler(State(e): State<Arc<Exposition>>) -> Response {
    let body = read(&e.verdicts);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
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
