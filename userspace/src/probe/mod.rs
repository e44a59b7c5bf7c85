//! Active probes: every interval, each known host is requested from each local replica
//! directly (the replica's own address, never a Service), over HTTP and, where
//! configured, as a WebSocket upgrade. The verdicts become `routeskew_probe_success`; the
//! prober's account of each probe enters the pipeline as an event, where it is matched
//! with the kernel's copy of the same exchange (see [`crate::pipeline::ledger`]), which makes every probe
//! a self-test of the sensor. The same task keeps each replica's router inventory from
//! its Traefik API.
//!
//! Submodules: [`client`] (connections, TLS, HTTP and WebSocket), [`check`] (verdicts),
//! [`inventory`] (router lists, paging, comparison between replicas).

pub mod check;
pub mod client;
pub mod inventory;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::config::WsPath;
use crate::discovery::{Endpoint, Replica, Target, TargetSet};
use crate::event::{Event, EventKind, Origin, ProbeCheck, ProbeReport};
use crate::hosts::KnownHosts;
use crate::metrics::{Contract, ProbeCheckLabels, ProbeLabels, ReplicaLabels};
use crate::pipeline::http;

use check::Answer;
use client::{ClientError, Request, Tls};
use inventory::Backoff;

/// Largest router-list page read (a page of 100 routers is a few tens of KiB).
const API_BODY_CAP: usize = 4 << 20;
/// Path that tells whether an endpoint serves Traefik's API.
const ROUTERS_PATH: &str = "/api/http/routers";
const ENTRYPOINTS_PATH: &str = "/api/entrypoints";
/// Go's TLS server answers a plaintext request with this in a 400.
const PLAINTEXT_TO_TLS: &[u8] = b"HTTP request to an HTTPS server";

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Hosts to probe (the agent's known hosts).
    pub hosts: Vec<String>,
    pub http_path: String,
    pub ws_paths: Vec<WsPath>,
    /// Statuses besides 101 that make a WebSocket check succeed (an auth redirect).
    pub ws_accept: Vec<u16>,
    /// When set, only endpoints on these ports are probed.
    pub ports: Vec<u16>,
    /// When set, the replica's API is on this port (no detection).
    pub api_port: Option<u16>,
    /// How long series of a vanished replica stay.
    pub series_grace: Duration,
    /// For the User-Agent.
    pub version: String,
}

impl ProbeConfig {
    /// How long the pipeline waits for the kernel's copy of a probe before declaring the
    /// sensor blind to it: long enough for the ring-buffer poll, short enough that a
    /// blind sensor shows within two probe intervals.
    pub fn sensor_deadline(&self) -> Duration {
        (self.interval / 2).clamp(Duration::from_millis(250), Duration::from_secs(2))
    }
}

/// What an endpoint turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndpointInfo {
    tls: bool,
    api: bool,
}

#[derive(Debug)]
enum EndpointState {
    Known(EndpointInfo),
    /// Neither plaintext nor TLS answered; retried after the backoff.
    Failed {
        backoff: Backoff,
        retry_at: Instant,
    },
}

/// Per replica: inventory, logging memory, series to remove when it leaves.
#[derive(Debug)]
struct ReplicaState {
    api_backoff: Backoff,
    api_retry_at: Option<Instant>,
    api_missing_logged: bool,
    no_endpoint_logged: bool,
    /// Router names from the last successful inventory.
    routers: Option<BTreeSet<String>>,
    /// Entrypoints the routers listen on.
    router_entry_points: BTreeSet<String>,
    /// Entrypoints whose routers need TLS, and those with plaintext routers.
    tls_entry_points: BTreeSet<String>,
    plain_entry_points: BTreeSet<String>,
    /// Entrypoint name by port.
    port_names: BTreeMap<u16, String>,
    /// What was last logged as lacking.
    lacks_logged: Option<BTreeSet<String>>,
    probe_series: HashSet<ProbeLabels>,
    duration_series: HashSet<ProbeCheckLabels>,
    gone_since: Option<Instant>,
}

impl ReplicaState {
    fn new(base: Duration) -> Self {
        ReplicaState {
            api_backoff: Backoff::new(base, Duration::from_secs(300)),
            api_retry_at: None,
            api_missing_logged: false,
            no_endpoint_logged: false,
            routers: None,
            router_entry_points: BTreeSet::new(),
            tls_entry_points: BTreeSet::new(),
            plain_entry_points: BTreeSet::new(),
            port_names: BTreeMap::new(),
            lacks_logged: None,
            probe_series: HashSet::new(),
            duration_series: HashSet::new(),
            gone_since: None,
        }
    }
}

/// One probe check to run.
#[derive(Debug, Clone)]
struct Job {
    replica: Replica,
    origin: Origin,
    addr: SocketAddr,
    tls: bool,
    host: String,
    path: String,
    check: ProbeCheck,
    id: u64,
}

struct JobResult {
    job: Job,
    answer: Result<Answer, ProbeFailure>,
    elapsed: Duration,
}

#[derive(Debug)]
enum ProbeFailure {
    Client(ClientError),
    Timeout,
}

impl ProbeFailure {
    fn kind(&self) -> &'static str {
        match self {
            Self::Client(e) => e.kind(),
            Self::Timeout => "timeout",
        }
    }
}

pub struct Prober {
    cfg: ProbeConfig,
    /// The hosts probed, as label values.
    hosts: Arc<KnownHosts>,
    /// Known hosts as the agent publishes them (Kubernetes Ingress/IngressRoute rules).
    host_updates: Option<watch::Receiver<Arc<KnownHosts>>>,
    metrics: Contract,
    events: mpsc::Sender<Event>,
    targets: watch::Receiver<TargetSet>,
    tls: Option<Tls>,
    endpoints: HashMap<SocketAddr, EndpointState>,
    replicas: HashMap<Replica, ReplicaState>,
    next_id: u64,
    housekeeping_ua: String,
}

fn replica_origin(t: &Target) -> Origin {
    Origin {
        tgid: t.pids.first().copied().unwrap_or(0),
        cgroup_id: t.cgroup_id,
    }
}

/// Port names TLS entrypoints conventionally have (Traefik's `websecure`, a container
/// port `https`).
fn looks_like_tls_port(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("websecure") || n.contains("https") || n.contains("tls")
}

fn jittered(interval: Duration) -> Duration {
    // ±10 %: replicas and agents on several nodes do not probe in lockstep.
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}

impl Prober {
    pub fn new(
        cfg: ProbeConfig,
        metrics: Contract,
        events: mpsc::Sender<Event>,
        targets: watch::Receiver<TargetSet>,
    ) -> Self {
        let tls = match Tls::new() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "TLS client unavailable; TLS endpoints are not probed");
                None
            }
        };
        let hosts = Arc::new(KnownHosts::new(&cfg.hosts));
        Prober {
            housekeeping_ua: http::probe_housekeeping_user_agent(&cfg.version),
            hosts,
            host_updates: None,
            cfg,
            metrics,
            events,
            targets,
            tls,
            endpoints: HashMap::new(),
            replicas: HashMap::new(),
            next_id: fastrand::u64(..),
        }
    }

    /// Follows the known hosts the agent publishes instead of the configured ones.
    pub fn with_host_updates(mut self, hosts: watch::Receiver<Arc<KnownHosts>>) -> Self {
        self.host_updates = Some(hosts);
        self
    }

    /// Takes the newest published hosts; the probe series of hosts no longer known go.
    fn follow_hosts(&mut self) {
        let Some(rx) = self.host_updates.as_mut() else {
            return;
        };
        if !rx.has_changed().unwrap_or(false) {
            return;
        }
        let hosts = rx.borrow_and_update().clone();
        if hosts == self.hosts {
            return;
        }
        for st in self.replicas.values_mut() {
            st.probe_series.retain(|l| {
                let keep = hosts.contains(&l.host);
                if !keep {
                    self.metrics.probe_success.remove(l);
                }
                keep
            });
        }
        tracing::info!(hosts = hosts.len(), "probed hosts changed");
        self.hosts = hosts;
    }

    /// Runs until the event channel closes (the agent stopped).
    pub async fn run(mut self) {
        tracing::info!(
            interval = ?self.cfg.interval,
            hosts = self.hosts.len(),
            ws_checks = self.cfg.ws_paths.len(),
            "prober started"
        );
        loop {
            self.follow_hosts();
            let targets = self.targets.borrow_and_update().clone();
            self.round(&targets).await;
            if self.events.is_closed() {
                return;
            }
            tokio::time::sleep(jittered(self.cfg.interval)).await;
        }
    }

    /// One pass: classify new endpoints, refresh inventories, run every check.
    pub async fn round(&mut self, targets: &TargetSet) {
        self.track_replicas(targets);
        self.classify_endpoints(targets).await;
        self.refresh_inventories(targets).await;
        let jobs = self.jobs(targets);
        let timeout = self.cfg.timeout;
        let tls = self.tls.clone();
        let results: Vec<JobResult> = stream::iter(jobs)
            .map(|job| {
                let tls = tls.clone();
                let ua = http::probe_check_user_agent(&self.cfg.version, job.id);
                async move { run_job(job, tls, ua, timeout).await }
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await;
        self.record(results).await;
    }

    /// Notes replicas that appeared or left; removes the series of those gone longer
    /// than the grace period.
    fn track_replicas(&mut self, targets: &TargetSet) {
        let now = Instant::now();
        let current: HashSet<&Replica> = targets.targets().iter().map(|t| &t.replica).collect();
        for t in targets.targets() {
            let st = self
                .replicas
                .entry(t.replica.clone())
                .or_insert_with(|| ReplicaState::new(self.cfg.interval));
            st.gone_since = None;
        }
        let grace = self.cfg.series_grace;
        let mut expired = Vec::new();
        for (r, st) in self.replicas.iter_mut() {
            if current.contains(r) {
                continue;
            }
            let since = *st.gone_since.get_or_insert(now);
            if now.duration_since(since) >= grace {
                expired.push(r.clone());
            }
        }
        for r in expired {
            if let Some(st) = self.replicas.remove(&r) {
                for l in &st.probe_series {
                    self.metrics.probe_success.remove(l);
                }
                for l in &st.duration_series {
                    self.metrics.probe_duration.remove(l);
                }
                self.metrics.replica_routers.remove(&ReplicaLabels {
                    replica: r.name.clone(),
                    namespace: r.namespace.clone(),
                });
            }
        }
        // Forget endpoints no target has any more (a restarted replica's old ports).
        let live: HashSet<SocketAddr> = targets
            .targets()
            .iter()
            .flat_map(|t| t.endpoints.iter().map(|e| e.addr))
            .chain(self.api_addrs(targets))
            .collect();
        self.endpoints.retain(|a, _| live.contains(a));
    }

    /// API addresses given by `--api-port`.
    fn api_addrs(&self, targets: &TargetSet) -> Vec<SocketAddr> {
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

    async fn classify_endpoints(&mut self, targets: &TargetSet) {
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
        let ua = self.housekeeping_ua.clone();
        let timeout = self.cfg.timeout;
        let found: Vec<(SocketAddr, Option<EndpointInfo>)> = stream::iter(todo)
            .map(|addr| {
                let tls = tls.clone();
                let ua = ua.clone();
                async move {
                    (
                        addr,
                        classify_endpoint(addr, tls.as_ref(), &ua, timeout).await,
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

    fn info(&self, addr: SocketAddr) -> Option<EndpointInfo> {
        match self.endpoints.get(&addr) {
            Some(EndpointState::Known(i)) => Some(*i),
            _ => None,
        }
    }

    fn api_endpoint(&self, t: &Target) -> Option<(SocketAddr, bool)> {
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

    async fn refresh_inventories(&mut self, targets: &TargetSet) {
        let now = Instant::now();
        let mut changed = false;
        for t in targets.targets() {
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
            let tls = if tls { self.tls.as_ref() } else { None };
            match fetch_inventory(addr, tls, &self.housekeeping_ua, self.cfg.timeout).await {
                Ok((page, port_names)) => {
                    if st.api_backoff.succeed() || st.api_missing_logged {
                        tracing::info!(replica = %t.replica.name, %addr, "Traefik API reachable again");
                    }
                    st.api_missing_logged = false;
                    st.api_retry_at = None;
                    self.metrics
                        .replica_routers
                        .get_or_create(&ReplicaLabels {
                            replica: t.replica.name.clone(),
                            namespace: t.replica.namespace.clone(),
                        })
                        .set(i64::try_from(page.enabled.len()).unwrap_or(i64::MAX));
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
        if changed {
            self.log_missing(targets);
        }
    }

    /// Logs, once per change, which routers a replica lacks next to its local siblings.
    fn log_missing(&mut self, targets: &TargetSet) {
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
        let missing = inventory::missing_routers(&inv);
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

    /// The endpoints of `t` that take probes.
    /// Where to probe a replica, and whether over TLS. A Traefik entrypoint answers both
    /// plaintext and TLS (with its default certificate), so a handshake says nothing
    /// about which routers are reachable how: the replica's API does (a router's `tls`),
    /// then a port named like a TLS entrypoint, then what the endpoint check found.
    fn probe_endpoints(&self, t: &Target) -> Vec<(SocketAddr, bool)> {
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

    fn jobs(&mut self, targets: &TargetSet) -> Vec<Job> {
        let mut jobs = Vec::new();
        for t in targets.targets() {
            let endpoints = self.probe_endpoints(t);
            if let Some(st) = self.replicas.get_mut(&t.replica) {
                if endpoints.is_empty() && !st.no_endpoint_logged {
                    st.no_endpoint_logged = true;
                    tracing::info!(replica = %t.replica.name, endpoints = t.endpoints.len(), "no endpoint of the replica takes probes yet");
                } else if !endpoints.is_empty() {
                    st.no_endpoint_logged = false;
                }
            }
            let origin = replica_origin(t);
            for (addr, tls) in endpoints {
                if tls && self.tls.is_none() {
                    continue;
                }
                for host in self.hosts.hosts() {
                    let mut checks = vec![(ProbeCheck::Http, self.cfg.http_path.clone())];
                    for w in &self.cfg.ws_paths {
                        if w.host.as_ref().is_none_or(|h| h == host) {
                            checks.push((ProbeCheck::WebSocket, w.path.clone()));
                        }
                    }
                    for (check, path) in checks {
                        self.next_id = self.next_id.wrapping_add(1);
                        jobs.push(Job {
                            replica: t.replica.clone(),
                            origin,
                            addr,
                            tls,
                            host: host.clone(),
                            path,
                            check,
                            id: self.next_id,
                        });
                    }
                }
            }
        }
        jobs
    }

    /// Publishes verdicts and durations and hands every report to the pipeline. A
    /// (replica, host, check) succeeds when every endpoint and path checked did.
    async fn record(&mut self, results: Vec<JobResult>) {
        let mut verdicts: BTreeMap<(Replica, String, ProbeCheck), bool> = BTreeMap::new();
        for r in results {
            let job = &r.job;
            let report = ProbeReport {
                id: job.id,
                check: job.check,
                host: job.host.clone(),
                response: r.answer.as_ref().ok().map(|a| a.wire.clone()),
            };
            let verdict = check::judge(&report, &self.cfg.ws_accept);
            if let Err(e) = &r.answer {
                tracing::debug!(replica = %job.replica.name, host = %job.host, addr = %job.addr, check = job.check.as_str(), reason = e.kind(), "probe got no answer");
            }
            let ok = verdicts
                .entry((job.replica.clone(), job.host.clone(), job.check))
                .or_insert(true);
            *ok &= verdict.success;
            let labels = ProbeCheckLabels {
                replica: job.replica.name.clone(),
                namespace: job.replica.namespace.clone(),
                check: job.check.as_str(),
            };
            self.metrics
                .probe_duration
                .get_or_create(&labels)
                .observe(r.elapsed.as_secs_f64());
            if let Some(st) = self.replicas.get_mut(&job.replica) {
                st.duration_series.insert(labels);
            }
            let ev = Event {
                ts_ns: crate::event::monotonic_ns(),
                origin: job.origin,
                kind: EventKind::Probe(Box::new(report)),
            };
            if self.events.send(ev).await.is_err() {
                return;
            }
        }
        for ((replica, host, check), ok) in verdicts {
            let labels = ProbeLabels {
                replica: replica.name.clone(),
                namespace: replica.namespace.clone(),
                host,
                check: check.as_str(),
            };
            self.metrics
                .probe_success
                .get_or_create(&labels)
                .set(i64::from(ok));
            if let Some(st) = self.replicas.get_mut(&replica) {
                st.probe_series.insert(labels);
            }
        }
    }
}

async fn run_job(job: Job, tls: Option<Tls>, ua: String, timeout: Duration) -> JobResult {
    let started = Instant::now();
    let req = Request {
        addr: job.addr,
        tls: if job.tls { tls.as_ref() } else { None },
        host: &job.host,
        path: &job.path,
        user_agent: &ua,
    };
    let fut = async {
        match job.check {
            ProbeCheck::Http => client::get(&req, check::BODY_PREFIX).await,
            ProbeCheck::WebSocket => client::websocket(&req).await,
        }
    };
    let answer = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(ProbeFailure::Client(e)),
        Err(_) => Err(ProbeFailure::Timeout),
    };
    let elapsed = started.elapsed();
    JobResult {
        job,
        answer,
        elapsed,
    }
}

/// Plaintext first; TLS when the server says so (Go's 400 to plaintext) or plaintext
/// fails. `None` when neither answers.
async fn classify_endpoint(
    addr: SocketAddr,
    tls: Option<&Tls>,
    ua: &str,
    timeout: Duration,
) -> Option<EndpointInfo> {
    let host = addr.to_string();
    let req = |tls| Request {
        addr,
        tls,
        host: &host,
        path: ROUTERS_PATH,
        user_agent: ua,
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

/// Every enabled, non-internal router (all pages) and the entrypoint names by port.
async fn fetch_inventory(
    addr: SocketAddr,
    tls: Option<&Tls>,
    ua: &str,
    timeout: Duration,
) -> Result<(inventory::RouterPage, Option<BTreeMap<u16, String>>), String> {
    let host = addr.to_string();
    let mut all = inventory::RouterPage::default();
    let mut page = 1u32;
    loop {
        let path = format!(
            "{ROUTERS_PATH}?page={page}&per_page={}",
            inventory::PER_PAGE
        );
        let req = Request {
            addr,
            tls,
            host: &host,
            path: &path,
            user_agent: ua,
        };
        let a = tokio::time::timeout(timeout, client::get(&req, API_BODY_CAP))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        if a.status != 200 {
            return Err(format!("status {}", a.status));
        }
        let p = inventory::parse_router_page(&a.body).map_err(|e| e.to_string())?;
        all.extend(p);
        match inventory::next_page(page, a.next_page) {
            Some(n) => page = n,
            None => break,
        }
    }
    let req = Request {
        addr,
        tls,
        host: &host,
        path: ENTRYPOINTS_PATH,
        user_agent: ua,
    };
    // Entrypoint names only refine endpoint selection; their absence is no failure.
    let names = match tokio::time::timeout(timeout, client::get(&req, API_BODY_CAP)).await {
        Ok(Ok(a)) if a.status == 200 => inventory::parse_entry_points(&a.body).ok(),
        _ => None,
    };
    Ok((all, names))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::metrics::encode;
    use prometheus_client::registry::Registry;

    fn cfg(interval_ms: u64) -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_secs(1),
            concurrency: 4,
            hosts: vec![
                "A.test".into(),
                "a.test:80".into(),
                "b.test".into(),
                "".into(),
            ],
            http_path: "/".into(),
            ws_paths: vec!["/ws".parse().unwrap(), "b.test/chat".parse().unwrap()],
            ws_accept: vec![],
            ports: vec![],
            api_port: None,
            series_grace: Duration::from_secs(60),
            version: "0.0.0".into(),
        }
    }

    #[test]
    fn sensor_deadline_fits_two_intervals() {
        assert_eq!(cfg(1000).sensor_deadline(), Duration::from_millis(500));
        assert_eq!(cfg(10_000).sensor_deadline(), Duration::from_secs(2));
        assert_eq!(cfg(100).sensor_deadline(), Duration::from_millis(250));
        // Worst case: the next probe starts 1.1 intervals after the sensor went blind,
        // and the deadline follows its answer.
        for ms in [1000u64, 2000, 10_000, 60_000] {
            let c = cfg(ms);
            assert!(c.interval.mul_f64(1.1) + c.sensor_deadline() < 2 * c.interval);
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }

    fn target(name: &str, endpoints: &[(&str, Option<&str>)]) -> Target {
        Target {
            replica: Replica {
                name: name.into(),
                namespace: "ns".into(),
            },
            cgroup_id: 5,
            pids: vec![50],
            attribution: crate::discovery::Attribution::Pids,
            endpoints: endpoints
                .iter()
                .map(|(a, n)| Endpoint {
                    addr: a.parse().unwrap(),
                    port_name: n.map(String::from),
                })
                .collect(),
        }
    }

    fn prober(c: ProbeConfig) -> Prober {
        prober_with_registry(c).0
    }

    fn prober_with_registry(c: ProbeConfig) -> (Prober, Registry) {
        let (tx, _rx) = mpsc::channel(1);
        let (_wtx, wrx) = watch::channel(TargetSet::default());
        let mut reg = Registry::with_prefix("routeskew");
        let m = Contract::register(
            &mut reg,
            crate::metrics::BuildInfo {
                version: "t".into(),
                kernel: "k".into(),
            },
        );
        (Prober::new(c, m, tx, wrx), reg)
    }

    #[test]
    fn jobs_cover_hosts_checks_and_probe_endpoints_only() {
        let mut p = prober(cfg(1000));
        assert_eq!(p.hosts.hosts(), ["a.test", "b.test"]);
        let t = target(
            "r1",
            &[
                ("127.0.0.1:8000", None),
                ("127.0.0.1:9000", None),
                ("127.0.0.1:7000", None),
            ],
        );
        let set = TargetSet::new(vec![t.clone()]);
        p.track_replicas(&set);
        let known = |tls, api| EndpointState::Known(EndpointInfo { tls, api });
        p.endpoints
            .insert("127.0.0.1:8000".parse().unwrap(), known(false, false));
        p.endpoints
            .insert("127.0.0.1:9000".parse().unwrap(), known(false, true));
        // 7000 never answered: not probed.
        let jobs = p.jobs(&set);
        // a.test: http + /ws; b.test: http + /ws + /chat; on the one non-API endpoint.
        assert_eq!(jobs.len(), 5, "{jobs:?}");
        assert!(jobs.iter().all(|j| j.addr.port() == 8000));
        let ids: HashSet<u64> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids.len(), jobs.len(), "probe ids are unique");
        assert_eq!(
            jobs[0].origin,
            Origin {
                tgid: 50,
                cgroup_id: 5
            }
        );

        // Once the API named the entrypoints that carry routers, only those are probed.
        let st = p.replicas.get_mut(&t.replica).unwrap();
        st.router_entry_points = ["websecure".to_string()].into();
        st.tls_entry_points = ["websecure".to_string()].into();
        st.port_names = [(8000, "web".to_string()), (8443, "websecure".to_string())].into();
        let t2 = target(
            "r1",
            &[
                ("127.0.0.1:8000", None),
                ("127.0.0.1:8443", None),
                ("127.0.0.1:9000", None),
            ],
        );
        p.endpoints
            .insert("127.0.0.1:8443".parse().unwrap(), known(false, false));
        let eps = p.probe_endpoints(&t2);
        assert_eq!(eps, vec![("127.0.0.1:8443".parse().unwrap(), true)]);
        // An entrypoint with plaintext and TLS routers is probed both ways.
        let st = p.replicas.get_mut(&t.replica).unwrap();
        st.router_entry_points = ["web".to_string(), "websecure".to_string()].into();
        st.plain_entry_points = ["web".to_string(), "websecure".to_string()].into();
        let eps = p.probe_endpoints(&t2);
        assert_eq!(
            eps,
            vec![
                ("127.0.0.1:8000".parse().unwrap(), false),
                ("127.0.0.1:8443".parse().unwrap(), false),
                ("127.0.0.1:8443".parse().unwrap(), true),
            ]
        );
        // Without the API, a port named like a TLS entrypoint is probed over TLS.
        p.replicas
            .get_mut(&t.replica)
            .unwrap()
            .router_entry_points
            .clear();
        let named = target("r1", &[("127.0.0.1:8443", Some("websecure"))]);
        assert_eq!(
            p.probe_endpoints(&named),
            vec![("127.0.0.1:8443".parse().unwrap(), true)]
        );

        // --probe-port overrides everything.
        p.cfg.ports = vec![9000];
        let eps = p.probe_endpoints(&t2);
        assert_eq!(eps, vec![("127.0.0.1:9000".parse().unwrap(), false)]);
        assert_eq!(p.housekeeping_ua, "routeskew-probe/0.0.0 housekeeping");
    }

    #[tokio::test]
    async fn vanished_replica_series_go_after_the_grace_period() {
        let mut c = cfg(1000);
        c.series_grace = Duration::from_millis(0);
        let (mut p, reg) = prober_with_registry(c);
        let set = TargetSet::new(vec![target("r1", &[])]);
        p.track_replicas(&set);
        let r = set.targets()[0].replica.clone();
        let labels = ProbeLabels {
            replica: "r1".into(),
            namespace: "ns".into(),
            host: "a.test".into(),
            check: "http",
        };
        p.metrics.probe_success.get_or_create(&labels).set(1);
        p.replicas.get_mut(&r).unwrap().probe_series.insert(labels);
        p.metrics
            .replica_routers
            .get_or_create(&ReplicaLabels {
                replica: "r1".into(),
                namespace: "ns".into(),
            })
            .set(3);
        assert!(encode(&reg).contains("routeskew_probe_success{"));
        p.track_replicas(&TargetSet::default());
        let text = encode(&reg);
        assert!(!text.contains("routeskew_probe_success{"), "{text}");
        assert!(!text.contains("routeskew_replica_routers{"), "{text}");
    }

    #[test]
    fn published_hosts_replace_the_configured_ones_and_drop_their_series() {
        let (tx, rx) = watch::channel(Arc::new(KnownHosts::default()));
        let (p, reg) = prober_with_registry(cfg(1000));
        let mut p = p.with_host_updates(rx);
        assert_eq!(p.hosts.hosts(), ["a.test", "b.test"]);
        // Unchanged channel: configured hosts stay.
        p.follow_hosts();
        assert_eq!(p.hosts.hosts(), ["a.test", "b.test"]);

        let replica = Replica {
            name: "r".into(),
            namespace: "ns".into(),
        };
        let mut st = ReplicaState::new(Duration::from_secs(1));
        for host in ["a.test", "b.test"] {
            let l = ProbeLabels {
                replica: "r".into(),
                namespace: "ns".into(),
                host: host.into(),
                check: "http",
            };
            p.metrics.probe_success.get_or_create(&l).set(1);
            st.probe_series.insert(l);
        }
        p.replicas.insert(replica.clone(), st);

        tx.send_replace(Arc::new(KnownHosts::new(["B.test", "c.test"])));
        p.follow_hosts();
        assert_eq!(p.hosts.hosts(), ["b.test", "c.test"]);
        let left: Vec<&str> = p.replicas[&replica]
            .probe_series
            .iter()
            .map(|l| l.host.as_str())
            .collect();
        assert_eq!(left, ["b.test"]);
        let text = encode(&reg);
        assert!(!text.contains("host=\"a.test\""), "{text}");
        assert!(text.contains("host=\"b.test\""), "{text}");
    }
}
