//! What each replica endpoint is (plaintext or TLS, Traefik's API or not), found by asking
//! it, retried with a backoff when it does not answer; and which endpoints take probes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use super::check::Answer;
use super::client::{self, Caller, Request, Tls};
use super::inventory::{self, API_BODY_CAP, ROUTERS_PATH};
use super::Prober;
use crate::discovery::{Endpoint, Target, TargetSet};

/// Go's TLS server answers a plaintext request with this in a 400.
const PLAINTEXT_TO_TLS: &[u8] = b"HTTP request to an HTTPS server";

/// What an endpoint turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct EndpointInfo {
    pub(super) tls: bool,
    pub(super) api: bool,
}

#[derive(Debug)]
pub(super) enum EndpointState {
    Known(EndpointInfo),
    /// Neither plaintext nor TLS answered; retried after the backoff.
    Failed {
        backoff: Backoff,
        retry_at: Instant,
    },
}

/// Exponential retry delay for an API that did not answer: reported once, then retried
/// less and less often, never faster than `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Backoff {
    failures: u32,
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            failures: 0,
            base,
            max,
        }
    }

    /// Records a failure; true for the first one of a series (the one worth a log line).
    pub(super) fn fail(&mut self) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.failures == 1
    }

    /// Records a success; true when it ends a series of failures.
    pub(super) fn succeed(&mut self) -> bool {
        let recovered = self.failures > 0;
        self.failures = 0;
        recovered
    }

    /// How long to wait before the next attempt.
    pub(super) fn delay(&self) -> Duration {
        if self.failures == 0 {
            return self.base;
        }
        let factor = 1u32 << self.failures.min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Port names TLS entrypoints conventionally have (Traefik's `websecure`, a container
/// port `https`).
fn looks_like_tls_port(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("websecure") || n.contains("https") || n.contains("tls")
}

impl Prober {
    /// API addresses given by `--api-port`.
    pub(super) fn api_addrs(&self, targets: &TargetSet) -> Vec<SocketAddr> {
        let Some(port) = self.cfg.api_port else {
            return Vec::new();
        };
        targets
            .targets()
            .iter()
            .filter_map(|t| {
                t.endpoints
                    .first()
                    .map(|e| SocketAddr::new(e.addr.ip(), port))
            })
            .collect()
    }

    pub(super) async fn classify_endpoints(&mut self, targets: &TargetSet) {
        let now = Instant::now();
        let mut todo: Vec<SocketAddr> = targets
            .targets()
            .iter()
            .flat_map(|t| t.endpoints.iter().map(|e| e.addr))
            .chain(self.api_addrs(targets))
            .filter(|a| match self.endpoints.get(a) {
                None => true,
                Some(EndpointState::Known(_)) => false,
                Some(EndpointState::Failed { retry_at, .. }) => *retry_at <= now,
            })
            .collect();
        todo.sort();
        todo.dedup();
        if todo.is_empty() {
            return;
        }
        let tls = self.tls.clone();
        let caller = self.housekeeping.clone();
        let timeout = self.cfg.timeout;
        let found: Vec<(SocketAddr, Option<EndpointInfo>)> = stream::iter(todo)
            .map(|addr| {
                let tls = tls.clone();
                let caller = caller.clone();
                async move {
                    (
                        addr,
                        classify_endpoint(addr, tls.as_ref(), &caller, timeout).await,
                    )
                }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        for (addr, info) in found {
            match info {
                Some(info) => {
                    tracing::info!(%addr, tls = info.tls, api = info.api, "replica endpoint");
                    self.endpoints.insert(addr, EndpointState::Known(info));
                }
                None => {
                    let mut backoff = match self.endpoints.remove(&addr) {
                        Some(EndpointState::Failed { backoff, .. }) => backoff,
                        _ => Backoff::new(self.cfg.interval, Duration::from_secs(300)),
                    };
                    if backoff.fail() {
                        tracing::info!(%addr, "replica endpoint does not answer HTTP or TLS; retrying with backoff");
                    }
                    let retry_at = now + backoff.delay();
                    self.endpoints
                        .insert(addr, EndpointState::Failed { backoff, retry_at });
                }
            }
        }
    }

    pub(super) fn info(&self, addr: SocketAddr) -> Option<EndpointInfo> {
        match self.endpoints.get(&addr) {
            Some(EndpointState::Known(i)) => Some(*i),
            _ => None,
        }
    }

    pub(super) fn api_endpoint(&self, t: &Target) -> Option<(SocketAddr, bool)> {
        let addrs: Vec<SocketAddr> = match self.cfg.api_port {
            Some(port) => t
                .endpoints
                .first()
                .map(|e| SocketAddr::new(e.addr.ip(), port))
                .into_iter()
                .collect(),
            None => t.endpoints.iter().map(|e| e.addr).collect(),
        };
        addrs
            .into_iter()
            .find_map(|a| self.info(a).filter(|i| i.api).map(|i| (a, i.tls)))
    }

    /// The endpoints of `t` that take probes.
    /// Where to probe a replica, and whether over TLS. A Traefik entrypoint answers both
    /// plaintext and TLS (with its default certificate), so a handshake says nothing
    /// about which routers are reachable how: the replica's API does (a router's `tls`),
    /// then a port named like a TLS entrypoint, then what the endpoint check found.
    pub(super) fn probe_endpoints(&self, t: &Target) -> Vec<(SocketAddr, bool)> {
        let st = self.replicas.get(&t.replica);
        let name_of = |e: &Endpoint| -> Option<String> {
            e.port_name
                .clone()
                .or_else(|| st.and_then(|s| s.port_names.get(&e.addr.port()).cloned()))
        };
        let mut out = Vec::new();
        for e in &t.endpoints {
            let Some(info) = self.info(e.addr) else {
                continue;
            };
            let name = name_of(e);
            let guessed_tls = info.tls || name.as_deref().is_some_and(looks_like_tls_port);
            if !self.cfg.ports.is_empty() {
                if self.cfg.ports.contains(&e.addr.port()) {
                    out.push((e.addr, guessed_tls));
                }
                continue;
            }
            match (name, st) {
                // The API told which entrypoints carry routers, and over what.
                (Some(name), Some(s)) if !s.router_entry_points.is_empty() => {
                    if s.plain_entry_points.contains(&name) {
                        out.push((e.addr, false));
                    }
                    if s.tls_entry_points.contains(&name) {
                        out.push((e.addr, true));
                    }
                }
                _ if !info.api => out.push((e.addr, guessed_tls)),
                _ => {}
            }
        }
        out
    }
}

/// Plaintext first; TLS when the server says so (Go's 400 to plaintext) or plaintext
/// fails. `None` when neither answers.
async fn classify_endpoint(
    addr: SocketAddr,
    tls: Option<&Tls>,
    caller: &Caller,
    timeout: Duration,
) -> Option<EndpointInfo> {
    let host = addr.to_string();
    let req = |tls| Request {
        addr,
        tls,
        host: &host,
        path: ROUTERS_PATH,
        caller,
    };
    let is_api = |a: &Answer| a.status == 200 && inventory::parse_router_page(&a.body).is_ok();
    let plain = tokio::time::timeout(timeout, client::get(&req(None), API_BODY_CAP)).await;
    match plain {
        Ok(Ok(a))
            if !(a.status == 400
                && a.body
                    .windows(PLAINTEXT_TO_TLS.len())
                    .any(|w| w == PLAINTEXT_TO_TLS)) =>
        {
            return Some(EndpointInfo {
                tls: false,
                api: is_api(&a),
            });
        }
        _ => {}
    }
    let tls = tls?;
    match tokio::time::timeout(timeout, client::get(&req(Some(tls)), API_BODY_CAP)).await {
        Ok(Ok(a)) => Some(EndpointInfo {
            tls: true,
            api: is_api(&a),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_reports_once_and_grows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.delay(), Duration::from_secs(1));
        assert!(b.fail());
        assert!(!b.fail());
        assert!(!b.fail());
        assert_eq!(b.delay(), Duration::from_secs(8));
        for _ in 0..20 {
            b.fail();
        }
        assert_eq!(b.delay(), Duration::from_secs(60));
        assert!(b.succeed());
        assert!(!b.succeed());
        assert_eq!(b.delay(), Duration::from_secs(1));
    }
}
