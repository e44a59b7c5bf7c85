//! The router inventory a replica's Traefik API reports (`/api/http/routers`, paged
//! through `X-Next-Page`), compared between the local replicas, and the entrypoint names
//! of its ports (`/api/entrypoints`): the pages parsed, the fetch loop, and each
//! replica's inventory kept up to date with a backoff while its API does not answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;

use super::client::{self, Caller, ClientError, Request, Tls};
use super::Prober;
use crate::discovery::TargetSet;
use crate::event::{Event, EventKind, MAX_LACKS_REPORTED};

/// Largest router-list page read (a page of 100 routers is a few tens of KiB).
pub(super) const API_BODY_CAP: usize = 4 << 20;
/// Path that tells whether an endpoint serves Traefik's API.
pub(super) const ROUTERS_PATH: &str = "/api/http/routers";
const ENTRYPOINTS_PATH: &str = "/api/entrypoints";

/// Routers asked for per page (Traefik's maximum page size is not capped; 100 is its
/// default).
pub const PER_PAGE: u32 = 100;
/// Pages followed at most: 100 000 routers is far beyond any real configuration.
pub const MAX_PAGES: u32 = 1000;
/// Routers kept at most: an API that lists more (a hostile or broken one, whatever its
/// page size) is abandoned rather than held in memory.
pub const MAX_ROUTERS: usize = 100_000;
/// One inventory fetch, every page included, takes at most this many probe timeouts.
const FETCH_TIMEOUTS: u32 = 2;

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

/// A body that is not the JSON Traefik's API serves.
#[derive(Debug, thiserror::Error)]
#[error("unexpected router list: {source}")]
pub struct ParseError {
    #[source]
    source: serde_json::Error,
}

/// Why a replica's router inventory could not be read.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("timeout")]
    Timeout,
    #[error(transparent)]
    Client {
        #[from]
        source: ClientError,
    },
    #[error("status {status}")]
    Status { status: u16 },
    #[error("more than {max} routers listed; inventory abandoned")]
    TooManyRouters { max: usize },
    #[error("the listing took longer than {budget:?}; inventory abandoned")]
    OverBudget { budget: Duration },
    #[error(transparent)]
    Parse {
        #[from]
        source: ParseError,
    },
}

fn is_internal(name: &str, provider: Option<&str>) -> bool {
    provider == Some("internal") || name.ends_with("@internal")
}

pub fn parse_router_page(body: &[u8]) -> Result<RouterPage, ParseError> {
    let routers: Vec<RouterJson> =
        serde_json::from_slice(body).map_err(|source| ParseError { source })?;
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
        serde_json::from_slice(body).map_err(|source| ParseError { source })?;
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

/// Every enabled, non-internal router (all pages) and the entrypoint names by port.
async fn fetch_inventory(
    addr: SocketAddr,
    tls: Option<&Tls>,
    caller: &Caller,
    timeout: Duration,
) -> Result<(RouterPage, Option<BTreeMap<u16, String>>), FetchError> {
    let host = addr.to_string();
    let mut all = RouterPage::default();
    let mut page = 1u32;
    let budget = timeout * FETCH_TIMEOUTS;
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        let path = format!("{ROUTERS_PATH}?page={page}&per_page={PER_PAGE}");
        let req = Request {
            addr,
            tls,
            host: &host,
            path: &path,
            caller,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(FetchError::OverBudget { budget });
        }
        let a = tokio::time::timeout(timeout.min(left), client::get(&req, API_BODY_CAP))
            .await
            .map_err(|_| {
                if timeout <= left {
                    FetchError::Timeout
                } else {
                    FetchError::OverBudget { budget }
                }
            })??;
        if a.status != 200 {
            return Err(FetchError::Status { status: a.status });
        }
        let p = parse_router_page(&a.body)?;
        all.extend(p);
        if all.enabled.len() > MAX_ROUTERS {
            return Err(FetchError::TooManyRouters { max: MAX_ROUTERS });
        }
        match next_page(page, a.next_page) {
            Some(n) => page = n,
            None => break,
        }
    }
    let req = Request {
        addr,
        tls,
        host: &host,
        path: ENTRYPOINTS_PATH,
        caller,
    };
    // Entrypoint names only refine endpoint selection; their absence is no failure.
    let names = match tokio::time::timeout(timeout, client::get(&req, API_BODY_CAP)).await {
        Ok(Ok(a)) if a.status == 200 => parse_entry_points(&a.body).ok(),
        _ => None,
    };
    Ok((all, names))
}

impl Prober {
    pub(super) async fn refresh_inventories(&mut self, targets: &TargetSet) {
        let now = Instant::now();
        let mut changed = false;
        // Router counts go to the pipeline, which keeps the replica's series.
        let mut counts = Vec::new();
        // The replicas whose inventory is due, fetched side by side: one slow or silent
        // API costs its own budget, not its siblings'.
        let mut due = Vec::new();
        for (i, t) in targets.targets().iter().enumerate() {
            let api = self.api_endpoint(t);
            let Some(st) = self.replicas.get_mut(&t.replica) else {
                continue;
            };
            let Some((addr, tls)) = api else {
                if !st.api_missing_logged {
                    st.api_missing_logged = true;
                    tracing::info!(replica = %t.replica.name, "no Traefik API found on the replica's endpoints; router inventory unavailable");
                }
                continue;
            };
            if st.api_retry_at.is_some_and(|at| at > now) {
                continue;
            }
            due.push((i, addr, tls));
        }
        let (tls, caller, timeout) = (
            self.tls.clone(),
            self.housekeeping.clone(),
            self.cfg.timeout,
        );
        let fetched: Vec<_> = stream::iter(due)
            .map(move |(i, addr, use_tls)| {
                let tls = if use_tls { tls.clone() } else { None };
                let caller = caller.clone();
                async move {
                    let r = fetch_inventory(addr, tls.as_ref(), &caller, timeout).await;
                    (i, addr, r)
                }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        for (i, addr, result) in fetched {
            let t = &targets.targets()[i];
            let Some(st) = self.replicas.get_mut(&t.replica) else {
                continue;
            };
            match result {
                Ok((page, port_names)) => {
                    if st.api_backoff.succeed() || st.api_missing_logged {
                        tracing::info!(replica = %t.replica.name, %addr, "Traefik API reachable again");
                    }
                    st.api_missing_logged = false;
                    st.api_retry_at = None;
                    counts.push((
                        super::replica_origin(t),
                        t.replica.name.clone(),
                        page.enabled.len() as u64,
                    ));
                    if st.routers.as_ref() != Some(&page.enabled) {
                        changed = true;
                    }
                    st.routers = Some(page.enabled);
                    st.router_entry_points = page.entry_points;
                    st.tls_entry_points = page.tls_entry_points;
                    st.plain_entry_points = page.plain_entry_points;
                    if let Some(p) = port_names {
                        st.port_names = p;
                    }
                }
                Err(e) => {
                    if st.api_backoff.fail() {
                        tracing::warn!(replica = %t.replica.name, %addr, error = %e, "Traefik API unreachable; keeping the last inventory, retrying with backoff");
                    }
                    st.api_retry_at = Some(now + st.api_backoff.delay());
                }
            }
        }
        let missing = self.missing(targets);
        if changed {
            self.log_missing(targets, &missing);
        }
        for (origin, replica, enabled) in counts {
            let lacks = missing
                .get(&replica)
                .map(|l| l.iter().take(MAX_LACKS_REPORTED).cloned().collect())
                .unwrap_or_default();
            let ev = Event {
                ts_ns: crate::event::monotonic_ns(),
                origin,
                kind: EventKind::RouterInventory { enabled, lacks },
            };
            if self.events.send(ev).await.is_err() {
                return;
            }
        }
    }

    /// For each replica whose API answered, the routers its local siblings list and it
    /// lacks.
    fn missing(&self, targets: &TargetSet) -> BTreeMap<String, BTreeSet<String>> {
        let mut inv: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for t in targets.targets() {
            if let Some(r) = self
                .replicas
                .get(&t.replica)
                .and_then(|s| s.routers.as_ref())
            {
                inv.insert(t.replica.name.clone(), r.clone());
            }
        }
        missing_routers(&inv)
    }

    /// Logs, once per change, which routers a replica lacks next to its local siblings.
    fn log_missing(&mut self, targets: &TargetSet, missing: &BTreeMap<String, BTreeSet<String>>) {
        for t in targets.targets() {
            let Some(lacks) = missing.get(&t.replica.name) else {
                continue;
            };
            let Some(st) = self.replicas.get_mut(&t.replica) else {
                continue;
            };
            if st.lacks_logged.as_ref() == Some(lacks) {
                continue;
            }
            if lacks.is_empty() {
                if st.lacks_logged.is_some() {
                    tracing::info!(replica = %t.replica.name, "replica has every router its siblings have");
                }
            } else {
                let names: Vec<&str> = lacks.iter().map(String::as_str).take(50).collect();
                tracing::warn!(replica = %t.replica.name, namespace = %t.replica.namespace, missing = lacks.len(), routers = ?names, "replica lacks routers its local siblings have");
            }
            st.lacks_logged = Some(lacks.clone());
        }
    }
}

#[cfg(test)]
mod tests {
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
}

#[cfg(test)]
#[path = "inventory_hostile.rs"]
mod hostile;
