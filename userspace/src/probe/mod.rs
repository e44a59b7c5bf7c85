//! Active probes: every interval, each known host is requested from each local replica
//! directly (the replica's own address, never a Service), over HTTP and, where
//! configured, as a WebSocket upgrade. The verdicts become `routeskew_probe_success`; the
//! prober's account of each probe enters the pipeline as an event, where it is matched
//! with the kernel's copy of the same exchange (see [`crate::pipeline::ledger`]), which makes every probe
//! a self-test of the sensor. The same task keeps each replica's router inventory from
//! its Traefik API.
//!
//! Submodules: `config` ([`ProbeConfig`]), `endpoints` (what each replica endpoint is and
//! which take probes), `jobs` (a round's checks: built, run, recorded), [`client`]
//! (connections, TLS, HTTP and WebSocket), [`check`] (verdicts), [`inventory`] (router
//! lists, paging, the fetch loop, comparison between replicas).

pub mod check;
pub mod client;
mod config;
mod endpoints;
#[cfg(test)]
mod fuzz_tests;
pub mod inventory;
mod jobs;
#[cfg(test)]
mod stall_tests;
#[cfg(test)]
mod tag_tests;
#[cfg(test)]
mod test_support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{SelectAll, StreamExt};
use tokio::sync::{mpsc, watch};

use crate::discovery::{Replica, Target, TargetSet};
use crate::event::{Event, Origin, PeerRole, PeerTags};
use crate::hosts::KnownHosts;
use crate::pipeline::http;

use client::{Caller, Tls};
use endpoints::{Backoff, EndpointState};

pub use config::ProbeConfig;

/// Per replica: inventory, endpoint backoff, what was logged, and when it left (its state
/// goes a series grace later; its series are the pipeline's).
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
            gone_since: None,
        }
    }
}

pub struct Prober {
    cfg: ProbeConfig,
    /// The hosts probed, as label values.
    hosts: Arc<KnownHosts>,
    /// Known hosts as discovery updates them (Kubernetes Ingress/IngressRoute rules).
    host_updates: Option<watch::Receiver<Arc<KnownHosts>>>,
    events: mpsc::Sender<Event>,
    targets: watch::Receiver<TargetSet>,
    tls: Option<Tls>,
    endpoints: HashMap<SocketAddr, EndpointState>,
    replicas: HashMap<Replica, ReplicaState>,
    next_id: u64,
    /// Where the next round's window of hosts starts ([`ProbeConfig::hosts_per_round`]).
    host_cursor: usize,
    /// The router inventory's and endpoint checks' caller (its tags are the probes' too).
    housekeeping: Caller,
}

fn replica_origin(t: &Target) -> Origin {
    Origin {
        tgid: t.pids.first().copied().unwrap_or(0),
        cgroup_id: t.cgroup_id,
    }
}

/// What a replica's running batch yields: each check's result, then its end.
enum Batch {
    Result(Box<jobs::JobResult>),
    Done(Replica),
}

/// A round's jobs grouped by replica, in the order the replicas come.
fn by_replica(jobs: Vec<jobs::Job>) -> Vec<(Replica, Vec<jobs::Job>)> {
    let mut out: Vec<(Replica, Vec<jobs::Job>)> = Vec::new();
    for job in jobs {
        match out.iter_mut().find(|(r, _)| *r == job.replica) {
            Some((_, batch)) => batch.push(job),
            None => out.push((job.replica.clone(), vec![job])),
        }
    }
    out
}

fn jittered(interval: Duration) -> Duration {
    // ±10 %: replicas and agents on several nodes do not probe in lockstep.
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}

impl Prober {
    pub fn new(
        cfg: ProbeConfig,
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
            housekeeping: Caller {
                user_agent: http::probe_housekeeping_user_agent(&cfg.version),
                role: PeerRole::Housekeeping,
                tags: None,
            },
            hosts,
            host_updates: None,
            cfg,
            events,
            targets,
            tls,
            endpoints: HashMap::new(),
            replicas: HashMap::new(),
            next_id: fastrand::u64(..),
            host_cursor: 0,
        }
    }

    /// Follows the known hosts discovery publishes instead of the configured ones.
    /// Tells the sensor which connections are the agent's own (the semantic sensor marks
    /// their responses as probe or housekeeping).
    pub fn with_peer_tags(mut self, tags: Arc<dyn PeerTags>) -> Self {
        self.housekeeping.tags = Some(tags);
        self
    }

    /// Probes the hosts `hosts` holds now, then follows it.
    pub fn with_host_updates(mut self, mut hosts: watch::Receiver<Arc<KnownHosts>>) -> Self {
        self.hosts = hosts.borrow_and_update().clone();
        self.host_updates = Some(hosts);
        self
    }

    /// Takes the newest published hosts.
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
        // The verdicts of dropped hosts stay for the pipeline's grace period, like every
        // other series of a host no longer known.
        let per_round = self.cfg.hosts_per_round.max(1);
        tracing::info!(
            hosts = hosts.len(),
            per_round,
            rounds_to_cover = hosts.len().div_ceil(per_round),
            "probed hosts changed"
        );
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
        let run = self.job_runner();
        // Each replica's checks run as one batch beside the others'; every result is
        // recorded as it comes, and a (replica, host, check) verdict as soon as its last
        // check ends. A replica whose batch has not finished (it answers slowly, or not at
        // all: every check waits for its timeout) skips a round; the others keep their pace.
        let mut inflight = SelectAll::new();
        let mut groups = jobs::Groups::default();
        let mut busy: HashSet<Replica> = HashSet::new();
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next) => {
                    self.follow_hosts();
                    let targets = self.targets.borrow_and_update().clone();
                    self.prepare(&targets).await;
                    for (replica, jobs) in by_replica(self.jobs(&targets)) {
                        if busy.insert(replica.clone()) {
                            for job in &jobs {
                                groups.expect(job);
                            }
                            let batch = run(jobs)
                                .map(|r| Batch::Result(Box::new(r)))
                                .chain(futures_util::stream::once(async move {
                                    Batch::Done(replica)
                                }));
                            inflight.push(batch.boxed());
                        } else {
                            tracing::debug!(replica = %replica.name, "previous probe round still running; this one skipped");
                        }
                    }
                    next = tokio::time::Instant::now() + jittered(self.cfg.interval);
                }
                Some(item) = inflight.next(), if !inflight.is_empty() => match item {
                    Batch::Result(r) => {
                        if !self.record_one(*r, &mut groups).await {
                            return;
                        }
                    }
                    Batch::Done(replica) => {
                        busy.remove(&replica);
                    }
                },
            }
            if self.events.is_closed() {
                return;
            }
        }
    }

    /// What a round needs before its checks: replicas tracked, new endpoints classified,
    /// router inventories refreshed.
    async fn prepare(&mut self, targets: &TargetSet) {
        self.track_replicas(targets);
        self.classify_endpoints(targets).await;
        self.refresh_inventories(targets).await;
    }

    /// One pass: classify new endpoints, refresh inventories, run every check and wait
    /// for all of them.
    pub async fn round(&mut self, targets: &TargetSet) {
        self.prepare(targets).await;
        let jobs = self.jobs(targets);
        let results = self.run_jobs(jobs).await;
        self.record(results).await;
    }

    /// Notes replicas that appeared or left; forgets the state (inventory, backoff) of
    /// those gone longer than the grace period. Their series are the pipeline's.
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
            self.replicas.remove(&r);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::{cfg, prober, target};

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

    #[tokio::test]
    async fn vanished_replica_state_goes_after_the_grace_period() {
        let mut c = cfg(1000);
        c.series_grace = Duration::from_millis(0);
        let mut p = prober(c);
        let set = TargetSet::new(vec![target("r1", &[])]);
        p.track_replicas(&set);
        let r = set.targets()[0].replica.clone();
        p.replicas.get_mut(&r).unwrap().routers = Some(BTreeSet::from(["a@file".to_string()]));
        // Still a target: kept.
        p.track_replicas(&set);
        assert!(p.replicas.contains_key(&r));
        p.track_replicas(&TargetSet::default());
        assert!(p.replicas.is_empty());
    }

    #[test]
    fn rounds_rotate_through_more_hosts_than_a_round_probes() {
        let mut c = cfg(1000);
        c.hosts_per_round = 2;
        let (_tx, rx) = watch::channel(Arc::new(KnownHosts::new([
            "a.test", "b.test", "c.test", "d.test", "e.test",
        ])));
        let mut p = prober(c).with_host_updates(rx);
        let rounds: Vec<Vec<String>> = (0..4).map(|_| p.round_hosts()).collect();
        assert_eq!(
            rounds,
            [
                ["a.test", "b.test"],
                ["c.test", "d.test"],
                ["e.test", "a.test"],
                ["b.test", "c.test"],
            ]
        );
        // Within the bound, every round probes every host.
        p.cfg.hosts_per_round = 5;
        assert_eq!(p.round_hosts().len(), 5);
        assert_eq!(p.round_hosts().len(), 5);
    }

    #[test]
    fn the_published_hosts_are_probed_and_followed() {
        let (tx, rx) = watch::channel(Arc::new(KnownHosts::new(["x.test"])));
        let mut p = prober(cfg(1000));
        assert_eq!(p.hosts.hosts(), ["a.test", "b.test"], "configured");
        // The agent's one set, as published when the prober starts, replaces them.
        p = p.with_host_updates(rx);
        assert_eq!(p.hosts.hosts(), ["x.test"]);
        p.follow_hosts();
        assert_eq!(p.hosts.hosts(), ["x.test"], "unchanged channel");
        tx.send_replace(Arc::new(KnownHosts::new(["B.test", "c.test"])));
        p.follow_hosts();
        assert_eq!(p.hosts.hosts(), ["b.test", "c.test"]);
    }
}
