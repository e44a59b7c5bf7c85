//! The router inventory a replica's Traefik API reports (`/api/http/routers`, paged
//! through `X-Next-Page`), compared between the local replicas, and the entrypoint names
//! of its ports (`/api/entrypoints`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

/// Routers asked for per page (Traefik's maximum page size is not capped; 100 is its
/// default).
pub const PER_PAGE: u32 = 100;
/// Pages followed at most: 100 000 routers is far beyond any real configuration.
pub const MAX_PAGES: u32 = 1000;

#[derive(Debug, Clone, Deserialize)]
struct RouterJson {
    name: Option<String>,
    provider: Option<String>,
    status: Option<String>,
    #[serde(default, rename = "entryPoints")]
    entry_points: Vec<String>,
    /// Present (often as `{}`) on routers that only match TLS connections.
    #[serde(default)]
    tls: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
struct EntryPointJson {
    name: Option<String>,
    address: Option<String>,
}

/// One page of routers, reduced to what the inventory needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterPage {
    /// Enabled routers that are not Traefik's own (`@internal`).
    pub enabled: BTreeSet<String>,
    /// Entrypoints those routers listen on.
    pub entry_points: BTreeSet<String>,
    /// Entrypoints with a TLS router: requests there must come over TLS to reach it.
    pub tls_entry_points: BTreeSet<String>,
    /// Entrypoints with a router for plaintext requests.
    pub plain_entry_points: BTreeSet<String>,
}

impl RouterPage {
    /// Adds the routers of the next page.
    pub fn extend(&mut self, other: RouterPage) {
        self.enabled.extend(other.enabled);
        self.entry_points.extend(other.entry_points);
        self.tls_entry_points.extend(other.tls_entry_points);
        self.plain_entry_points.extend(other.plain_entry_points);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected router list: {0}")]
pub struct ParseError(String);

fn is_internal(name: &str, provider: Option<&str>) -> bool {
    provider == Some("internal") || name.ends_with("@internal")
}

pub fn parse_router_page(body: &[u8]) -> Result<RouterPage, ParseError> {
    let routers: Vec<RouterJson> =
        serde_json::from_slice(body).map_err(|e| ParseError(e.to_string()))?;
    let mut page = RouterPage::default();
    for r in routers {
        let Some(name) = r.name else { continue };
        if is_internal(&name, r.provider.as_deref()) || r.status.as_deref() != Some("enabled") {
            continue;
        }
        // A Traefik entrypoint takes plaintext and TLS alike (it peeks at the first
        // bytes); which routers a request can reach depends on which of the two it is.
        let by_transport = if r.tls.is_some() {
            &mut page.tls_entry_points
        } else {
            &mut page.plain_entry_points
        };
        by_transport.extend(r.entry_points.iter().cloned());
        page.entry_points.extend(r.entry_points);
        page.enabled.insert(name);
    }
    Ok(page)
}

/// The page after `page`, if Traefik announced one. Traefik sets `X-Next-Page` to 1 on
/// the last page, so anything not past the current page ends the walk.
pub fn next_page(page: u32, header: Option<u32>) -> Option<u32> {
    header.filter(|&n| n > page && n <= MAX_PAGES)
}

/// Entrypoint name by port, from `/api/entrypoints` (`address` is `[host]:port`).
pub fn parse_entry_points(body: &[u8]) -> Result<BTreeMap<u16, String>, ParseError> {
    let eps: Vec<EntryPointJson> =
        serde_json::from_slice(body).map_err(|e| ParseError(e.to_string()))?;
    let mut out = BTreeMap::new();
    for ep in eps {
        let (Some(name), Some(address)) = (ep.name, ep.address) else {
            continue;
        };
        // `:8000`, `0.0.0.0:8000`, `[::]:8000`, `:8000/udp`.
        let addr = address.split('/').next().unwrap_or_default();
        if address.ends_with("/udp") {
            continue;
        }
        if let Some(port) = addr.rsplit(':').next().and_then(|p| p.parse().ok()) {
            out.insert(port, name);
        }
    }
    Ok(out)
}

/// For each replica, the routers its local siblings have and it lacks.
pub fn missing_routers(
    inventories: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (replica, own) in inventories {
        let mut lacks = BTreeSet::new();
        for (other, theirs) in inventories {
            if other != replica {
                lacks.extend(theirs.difference(own).cloned());
            }
        }
        out.insert(replica.clone(), lacks);
    }
    out
}

/// Exponential retry delay for an API that did not answer: reported once, then retried
/// less and less often, never faster than `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            failures: 0,
            base,
            max,
        }
    }

    /// Records a failure; true for the first one of a series (the one worth a log line).
    pub fn fail(&mut self) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.failures == 1
    }

    /// Records a success; true when it ends a series of failures.
    pub fn succeed(&mut self) -> bool {
        let recovered = self.failures > 0;
        self.failures = 0;
        recovered
    }

    /// How long to wait before the next attempt.
    pub fn delay(&self) -> Duration {
        if self.failures == 0 {
            return self.base;
        }
        let factor = 1u32 << self.failures.min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PAGE: &str = r#"[
      {"entryPoints":["web"],"service":"app","rule":"Host(`app.test`)","status":"enabled","using":["web"],"name":"app@file","provider":"file"},
      {"entryPoints":["websecure"],"service":"ws","rule":"Host(`ws.test`)","status":"enabled","tls":{},"name":"ws@kubernetescrd","provider":"kubernetescrd"},
      {"entryPoints":["web"],"service":"x","rule":"Host(`x`)","status":"disabled","error":["bad"],"name":"broken@file","provider":"file"},
      {"entryPoints":["traefik"],"service":"api@internal","rule":"PathPrefix(`/api`)","status":"enabled","name":"api@internal","provider":"internal"},
      {"entryPoints":["traefik"],"service":"noop","rule":"x","status":"enabled","name":"ping@internal"}
    ]"#;

    #[test]
    fn counts_enabled_non_internal_routers() {
        let p = parse_router_page(PAGE.as_bytes()).unwrap();
        assert_eq!(
            p.enabled.iter().map(String::as_str).collect::<Vec<_>>(),
            ["app@file", "ws@kubernetescrd"]
        );
        assert_eq!(
            p.entry_points
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["web", "websecure"]
        );
        assert_eq!(p.tls_entry_points.iter().collect::<Vec<_>>(), ["websecure"]);
        assert_eq!(p.plain_entry_points.iter().collect::<Vec<_>>(), ["web"]);
        assert_eq!(parse_router_page(b"[]").unwrap(), RouterPage::default());
        assert!(parse_router_page(b"{\"message\":\"404\"}").is_err());
        assert!(parse_router_page(b"404 page not found\n").is_err());
    }

    #[test]
    fn paging_follows_x_next_page() {
        assert_eq!(next_page(1, Some(2)), Some(2));
        // Traefik's last page says 1.
        assert_eq!(next_page(2, Some(1)), None);
        assert_eq!(next_page(3, None), None);
        assert_eq!(next_page(3, Some(3)), None);
        assert_eq!(next_page(MAX_PAGES, Some(MAX_PAGES + 1)), None);
    }

    #[test]
    fn entry_point_ports() {
        let body = br#"[{"address":"127.0.0.1:18080","name":"web"},{"address":":8443","name":"websecure"},
            {"address":"[::]:9000","name":"traefik"},{"address":":8443/udp","name":"h3"},{"name":"x"}]"#;
        let m = parse_entry_points(body).unwrap();
        assert_eq!(m.get(&18080).map(String::as_str), Some("web"));
        assert_eq!(m.get(&8443).map(String::as_str), Some("websecure"));
        assert_eq!(m.get(&9000).map(String::as_str), Some("traefik"));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn missing_compared_with_siblings() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let mut inv = BTreeMap::new();
        inv.insert("traefik-1".to_string(), set(&["a", "b", "c"]));
        inv.insert("traefik-2".to_string(), set(&["a", "c"]));
        inv.insert("traefik-3".to_string(), set(&["a", "b", "c", "d"]));
        let m = missing_routers(&inv);
        assert_eq!(m["traefik-1"], set(&["d"]));
        assert_eq!(m["traefik-2"], set(&["b", "d"]));
        assert!(m["traefik-3"].is_empty());
    }

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
