//! The routing scenario every replica is configured from: hosts, paths and which hosts
//! the broken replica lacks. Tests name things through it instead of repeating literals.

use std::time::Duration;

/// Backend paths (see `tests/backend/main.go`).
pub mod path {
    /// 200 with a small text body.
    pub const ROOT: &str = "/";
    /// The backend's own `http.NotFound`: a legitimate 404 that must not count as a
    /// router miss even though its body is Traefik's.
    pub const NOTFOUND: &str = "/notfound";
    /// A custom JSON 404.
    pub const MISSING: &str = "/missing";
    /// WebSocket echo endpoint.
    pub const WS: &str = "/ws";
    /// Answers after 3 s unless cancelled: Traefik's responseHeaderTimeout turns it into 504.
    pub const SLOW: &str = "/slow";
    /// 200 with `Transfer-Encoding: chunked`.
    pub const CHUNKED: &str = "/chunked";
}

/// Which upstream a router sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The Go backend.
    Backend,
    /// The backend through a servers transport with a short response-header timeout.
    BackendShortTimeout,
    /// A loopback port that refuses connections (Traefik: 502).
    Refused,
    /// A load balancer without servers (Traefik: 503 "no available server").
    NoServer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Traefik router and service name (without the `@file` provider suffix).
    pub name: String,
    pub host: String,
    pub upstream: Upstream,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    /// Routed everywhere; the ordinary traffic.
    pub app_host: String,
    /// Routed everywhere except on the broken replica, and also the WebSocket host there,
    /// as in the incident (one host whose HTTP and WebSocket requests both miss).
    pub missing_host: String,
    /// A WebSocket host routed everywhere: upgrades must succeed on every replica.
    pub ws_host: String,
    /// Routed everywhere; used with [`path::NOTFOUND`] and [`path::MISSING`].
    pub notfound_host: String,
    /// Routed everywhere to a refusing port.
    pub refused_host: String,
    /// Routed everywhere through a short response-header timeout (504 on [`path::SLOW`]).
    pub slow_host: String,
    /// Routed everywhere to a service without servers (503).
    pub unavailable_host: String,
    /// Traefik's `responseHeaderTimeout` for `slow_host`.
    pub slow_timeout: Duration,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            app_host: "app.test".into(),
            missing_host: "missing.test".into(),
            ws_host: "ws.test".into(),
            notfound_host: "notfound.test".into(),
            refused_host: "refused.test".into(),
            slow_host: "slow.test".into(),
            unavailable_host: "unavailable.test".into(),
            slow_timeout: Duration::from_secs(1),
        }
    }
}

impl Scenario {
    /// Every route of a healthy replica.
    pub fn routes(&self) -> Vec<Route> {
        let r = |name: &str, host: &String, upstream| Route {
            name: name.into(),
            host: host.clone(),
            upstream,
        };
        vec![
            r("app", &self.app_host, Upstream::Backend),
            r("missing", &self.missing_host, Upstream::Backend),
            r("ws", &self.ws_host, Upstream::Backend),
            r("notfound", &self.notfound_host, Upstream::Backend),
            r("refused", &self.refused_host, Upstream::Refused),
            r("slow", &self.slow_host, Upstream::BackendShortTimeout),
            r("unavailable", &self.unavailable_host, Upstream::NoServer),
        ]
    }

    /// Hosts whose routers the broken replica lacks.
    pub fn missing_on_broken(&self) -> Vec<String> {
        vec![self.missing_host.clone()]
    }

    /// Every host the scenario uses (what the agent is told to label).
    pub fn hosts(&self) -> Vec<String> {
        self.routes().into_iter().map(|r| r.host).collect()
    }

    /// Routes a replica is configured with.
    pub fn routes_for(&self, broken: bool) -> Vec<Route> {
        let missing = self.missing_on_broken();
        self.routes()
            .into_iter()
            .filter(|r| !(broken && missing.contains(&r.host)))
            .collect()
    }
}
