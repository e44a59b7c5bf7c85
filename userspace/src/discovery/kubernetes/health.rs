//! Whether the API server is reachable, seen from every request the client makes.
//!
//! The runtime watchers only report failures: a watch that reconnects after an outage
//! yields nothing until an object changes, so "no error lately" would be a guess. A layer
//! in the client's service stack sees each request's outcome instead, including the
//! watchers' silent reconnects.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Clone)]
struct State {
    up: bool,
    since: Instant,
    last_error: Option<String>,
}

/// Reachability of the API server, shared by the client layer and the discovery.
pub(super) struct ApiHealth {
    state: Mutex<State>,
    /// `routeskew_discovery_api_up`.
    api_up: Gauge,
}

impl ApiHealth {
    /// Up until a request fails: readiness waits for the first list anyway.
    pub(super) fn new(api_up: Gauge) -> Self {
        api_up.set(1);
        ApiHealth {
            state: Mutex::new(State {
                up: true,
                since: Instant::now(),
                last_error: None,
            }),
            api_up,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The server answered; a 5xx is an API server that cannot serve (e.g. etcd down).
    pub(super) fn answered(&self, status: http::StatusCode) {
        if status.is_server_error() {
            self.failed(format!("API server answered {status}"));
            return;
        }
        let mut s = self.lock();
        if !s.up {
            tracing::info!(down_for = ?s.since.elapsed(), "kubernetes API reachable again");
            s.up = true;
            s.since = Instant::now();
            self.api_up.set(1);
        }
    }

    pub(super) fn failed(&self, error: String) {
        let mut s = self.lock();
        if s.up {
            tracing::warn!(error = %error, "kubernetes API unreachable; keeping the last known state");
            s.up = false;
            s.since = Instant::now();
            self.api_up.set(0);
        }
        s.last_error = Some(error);
    }

    pub(super) fn is_up(&self) -> bool {
        self.lock().up
    }

    /// "" while up, otherwise what the `/readyz` body should say.
    pub(super) fn outage(&self) -> String {
        let s = self.lock();
        if s.up {
            return String::new();
        }
        format!(
            "kubernetes API unreachable for {}s ({}); serving the last known state",
            s.since.elapsed().as_secs(),
            s.last_error.as_deref().unwrap_or("no answer")
        )
    }
}

/// Wraps the client's service so that [`ApiHealth`] sees every outcome.
#[derive(Clone)]
pub(super) struct ObserveLayer {
    pub health: Arc<ApiHealth>,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            health: self.health.clone(),
        }
    }
}

#[derive(Clone)]
pub(super) struct Observe<S> {
    inner: S,
    health: Arc<ApiHealth>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, Req, Body> tower::Service<Req> for Observe<S>
where
    S: tower::Service<Req, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        let health = self.health.clone();
        Box::pin(async move {
            let result = fut.await;
            match &result {
                Ok(resp) => health.answered(resp.status()),
                Err(e) => health.failed(e.to_string()),
            }
            result
        })
    }
}
