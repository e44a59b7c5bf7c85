//! Round-robin mixes: visits that go to whichever replica a shared cursor picks, the way a
//! Service spreads connections.

use super::{upgraded_or_miss, ws_outcome};
use crate::scenario::{path, Scenario};
use crate::Replica;

/// A request of a round-robin mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// `n` GETs on one connection to the next replica.
    Get,
    /// One WebSocket upgrade on a connection to the next replica.
    Upgrade,
}

/// One visit of a round-robin mix: it goes to whichever replica the cursor picks.
#[derive(Debug, Clone)]
pub struct Visit {
    pub host: String,
    pub path: &'static str,
    pub kind: Mix,
    /// Requests on the visit's one connection (1 for an upgrade).
    pub n: usize,
}

impl Visit {
    fn new(host: &str, path: &'static str, kind: Mix) -> Visit {
        Visit {
            host: host.to_string(),
            path,
            kind,
            n: 1,
        }
    }

    /// What `replica` answers this visit with: (status, class, the upgrade's outcome).
    pub fn answer(&self, replica: &Replica) -> (u16, &'static str, Option<&'static str>) {
        let routes = replica.routes(&self.host);
        match self.kind {
            Mix::Get if !routes => (404, "router_miss", None),
            Mix::Get if self.path == path::NOTFOUND => (404, "client_error", None),
            Mix::Get => (200, "ok", None),
            Mix::Upgrade => {
                let (status, class) = upgraded_or_miss(routes);
                (status, class, Some(ws_outcome(status, class)))
            }
        }
    }
}

/// The Prometheus test's mix of `rounds` rounds through one cursor. Requests of
/// different hosts share it, so per-replica counts differ between hosts, and traffic
/// credited to the wrong replica or host shows up as a count mismatch.
pub fn prometheus_mix(sc: &Scenario, rounds: usize) -> Vec<Visit> {
    let mut out = Vec::new();
    for round in 0..rounds {
        out.push(Visit::new(&sc.app_host, path::ROOT, Mix::Get));
        out.push(Visit::new(&sc.missing_host, path::ROOT, Mix::Get));
        if round % 2 == 0 {
            out.push(Visit::new(&sc.missing_host, path::WS, Mix::Upgrade));
        }
        if round % 3 == 0 {
            out.push(Visit::new(&sc.ws_host, path::WS, Mix::Upgrade));
        }
        // The backend's own http.NotFound: Traefik's body, but relayed, so a legitimate
        // 404 on every replica that must not count as a router miss.
        if round % 4 == 1 {
            out.push(Visit::new(&sc.notfound_host, path::NOTFOUND, Mix::Get));
        }
    }
    out
}

/// The demo's plaintext round `round`: what an app whose terminal page fetches a token
/// and opens a WebSocket does, plus ordinary page loads and the odd broken link (each
/// request on a new connection).
pub fn demo_round(sc: &Scenario, round: u64) -> Vec<Visit> {
    let mut out = vec![Visit::new(&sc.app_host, path::ROOT, Mix::Get); 3];
    out.push(Visit::new(&sc.missing_host, path::ROOT, Mix::Get));
    out.push(Visit::new(&sc.missing_host, path::WS, Mix::Upgrade));
    out.push(Visit::new(&sc.ws_host, path::WS, Mix::Upgrade));
    if round.is_multiple_of(4) {
        out.push(Visit::new(&sc.notfound_host, path::NOTFOUND, Mix::Get));
    }
    if round.is_multiple_of(10) {
        out.push(Visit::new(&sc.refused_host, path::ROOT, Mix::Get));
    }
    out
}

/// The demo's TLS round through the `websecure` entrypoints: a page load (three requests
/// on one keep-alive HTTPS connection), a request and a `wss` upgrade for the host the
/// broken replica lacks, and an upgrade that every replica routes.
pub fn demo_tls_round(sc: &Scenario) -> Vec<Visit> {
    vec![
        Visit {
            n: 3,
            ..Visit::new(&sc.app_host, path::ROOT, Mix::Get)
        },
        Visit::new(&sc.missing_host, path::ROOT, Mix::Get),
        Visit::new(&sc.missing_host, path::WS, Mix::Upgrade),
        Visit::new(&sc.ws_host, path::WS, Mix::Upgrade),
    ]
}
