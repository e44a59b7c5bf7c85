//! Attributes observations to replicas and counts them in the exported families.
//!
//! Label values are bounded: `host` is a configured host or `other`, `replica`/`namespace`
//! come from the target set. A replica that leaves the target set keeps its series for a
//! grace period (so that a scrape still sees the final values and a quick restart does not
//! reset them) and then has them removed.
//!
//! Counting is on the per-event path, so it works on cached handles: an event's origin is
//! resolved to a replica slot through a small cache (cleared whenever the target set
//! changes or a slot goes away), and each slot keeps the counter of every (host, class,
//! source) it has counted, created once through `Family::get_or_create` with a freshly built
//! label set and then incremented directly. A slot and its handles are dropped together with
//! the replica's series, so a handle never outlives the series it counts into.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::discovery::{Replica, TargetSet};
use crate::event::{Origin, ProbeCheck, ProbeVerdict, UpstreamFailureReason};
use crate::hosts::{normalize_host, Host, KnownHosts};
use crate::metrics::{Contract, HostLabels, HttpLabels, ReplicaLabels, UpstreamLabels, WsLabels};
use crate::pipeline::classify::{HttpClass, Observation, Source, WsOutcome};
use crate::pipeline::probe_series::ProbeSeries;

/// Origins remembered by the resolution cache; past this it starts over (many short-lived
/// processes in a watched cgroup).
const MAX_CACHED_ORIGINS: usize = 4096;

const CLASSES: usize = HttpClass::ALL.len();
const OUTCOMES: usize = WsOutcome::ALL.len();
const SOURCES: usize = Source::ALL.len();
const REASONS: usize = UpstreamFailureReason::ALL.len();

/// Index of a value in its `ALL` array. The enums are fieldless and `ALL` lists them in
/// declaration order (checked by a test), so this is the discriminant.
fn class_index(c: HttpClass) -> usize {
    c as usize
}

fn outcome_index(o: WsOutcome) -> usize {
    o as usize
}

fn source_index(s: Source) -> usize {
    s as usize
}

fn reason_index(r: UpstreamFailureReason) -> usize {
    r as usize
}

/// Every label set created for one replica, so that all of them can be removed.
#[derive(Debug, Default)]
struct ReplicaSeries {
    http: HashSet<HttpLabels>,
    ws: HashSet<WsLabels>,
    early: HashSet<HostLabels>,
    upstream: HashSet<UpstreamLabels>,
    blind: Option<ReplicaLabels>,
}

/// One replica's series and the counter handles of those it has counted into.
struct Slot {
    replica: Replica,
    series: ReplicaSeries,
    /// Indexed by [`Aggregator::http_index`].
    http: Vec<Option<Counter>>,
    /// Indexed by [`Aggregator::ws_index`].
    ws: Vec<Option<Counter>>,
    /// Indexed by host label.
    early: Vec<Option<Counter>>,
    upstream: [Option<Counter>; REASONS],
    /// `sensor_blind_probes_total` of the replica.
    blind: Option<Counter>,
    /// What the prober reported of the replica.
    probe: ProbeSeries,
}

impl Slot {
    fn new(replica: Replica, hosts: usize) -> Self {
        let mut s = Slot {
            replica,
            series: ReplicaSeries::default(),
            http: Vec::new(),
            ws: Vec::new(),
            early: Vec::new(),
            upstream: Default::default(),
            blind: None,
            probe: ProbeSeries::default(),
        };
        s.reset_host_handles(hosts);
        s
    }

    /// Host indexes changed: forget the handles indexed by them (the series stay).
    fn reset_host_handles(&mut self, hosts: usize) {
        self.http = vec![None; hosts * CLASSES * SOURCES];
        self.ws = vec![None; hosts * OUTCOMES * SOURCES];
        self.early = vec![None; hosts];
    }
}

/// The counter at `cell`, created (and its labels recorded for removal) on first use.
fn counter<'c, L>(
    cell: &'c mut Option<Counter>,
    family: &prometheus_client::metrics::family::Family<L, Counter>,
    series: &mut HashSet<L>,
    labels: impl FnOnce() -> L,
) -> &'c Counter
where
    L: Clone + Eq + std::hash::Hash,
{
    cell.get_or_insert_with(|| {
        let l = labels();
        let c = Counter::clone(&family.get_or_create(&l));
        series.insert(l);
        c
    })
}

fn http_labels(
    replica: &str,
    namespace: &str,
    host: &str,
    class: HttpClass,
    source: Source,
) -> HttpLabels {
    HttpLabels {
        replica: replica.to_string(),
        namespace: namespace.to_string(),
        host: host.to_string(),
        class: class.as_str(),
        source: source.as_str(),
    }
}

fn ws_labels(
    replica: &str,
    namespace: &str,
    host: &str,
    outcome: WsOutcome,
    source: Source,
) -> WsLabels {
    WsLabels {
        replica: replica.to_string(),
        namespace: namespace.to_string(),
        host: host.to_string(),
        outcome: outcome.as_str(),
        source: source.as_str(),
    }
}

fn upstream_labels(
    replica: &str,
    namespace: &str,
    reason: UpstreamFailureReason,
) -> UpstreamLabels {
    UpstreamLabels {
        replica: replica.to_string(),
        namespace: namespace.to_string(),
        reason: reason.as_str(),
    }
}

pub struct Aggregator {
    contract: Contract,
    /// `routeskew_pipeline_removed_replicas_total`.
    removed_replicas: Counter,
    /// `host` label values and the lookup of a request's Host among them.
    hosts: Arc<KnownHosts>,
    targets: TargetSet,
    /// Replica slots; `None` where a departed replica's slot was freed.
    slots: Vec<Option<Slot>>,
    by_replica: HashMap<Replica, usize>,
    free: Vec<usize>,
    /// Origin → slot index (`None`: not a replica). Cleared when targets or slots change.
    origins: foldhash::HashMap<Origin, Option<usize>>,
    /// Replicas gone from the target set; the value is the time the grace period started
    /// (set at the first tick after they left).
    leaving: HashMap<Replica, Option<u64>>,
    /// Hosts no longer known whose series go after the grace period, like `leaving`.
    leaving_hosts: HashMap<String, Option<u64>>,
    grace_ns: u64,
}

impl Aggregator {
    pub fn new(
        hosts: Arc<KnownHosts>,
        series_grace: Duration,
        contract: Contract,
        removed_replicas: Counter,
    ) -> Self {
        Aggregator {
            contract,
            removed_replicas,
            hosts,
            targets: TargetSet::default(),
            slots: Vec::new(),
            by_replica: HashMap::new(),
            free: Vec::new(),
            origins: foldhash::HashMap::default(),
            leaving: HashMap::new(),
            leaving_hosts: HashMap::new(),
            grace_ns: u64::try_from(series_grace.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Replace the hosts that get their own label (discovery learns them at run time).
    /// Traffic for a dropped host counts as `other` at once; its series stay for the
    /// grace period, so a host that comes back in time continues them.
    pub fn set_known_hosts(&mut self, hosts: Arc<KnownHosts>) {
        if hosts == self.hosts {
            // The same labels: share the publisher's copy, nothing else changes.
            self.hosts = hosts;
            return;
        }
        let now: HashSet<&str> = hosts.labels().iter().map(String::as_str).collect();
        for old in self.hosts.labels() {
            if !now.contains(old.as_str()) {
                self.leaving_hosts.entry(old.clone()).or_insert(None);
            }
        }
        self.leaving_hosts.retain(|h, _| !now.contains(h.as_str()));
        self.hosts = hosts;
        let hosts = self.hosts.labels().len();
        let replicas: Vec<Replica> = self
            .slots
            .iter_mut()
            .flatten()
            .map(|s| {
                s.reset_host_handles(hosts);
                s.replica.clone()
            })
            .collect();
        // New hosts need their zero series on every current replica.
        for r in replicas {
            if !self.leaving.contains_key(&r) {
                self.init_series(r);
            }
        }
    }

    /// Label values in use, `other` last.
    pub fn host_labels(&self) -> &[String] {
        self.hosts.labels()
    }

    /// The hosts in use.
    pub fn known_hosts(&self) -> &Arc<KnownHosts> {
        &self.hosts
    }

    pub fn targets(&self) -> &TargetSet {
        &self.targets
    }

    pub fn resolve(&self, origin: Origin) -> Option<&Replica> {
        self.targets.resolve(origin)
    }

    /// Whether `origin` belongs to a known replica, through the resolution cache.
    pub fn is_known(&mut self, origin: Origin) -> bool {
        self.slot_of(origin).is_some()
    }

    /// The `host` label value for a request's Host.
    pub fn host_label<'a>(&'a self, host: &'a Host) -> &'a str {
        self.hosts.label_of(host)
    }

    fn http_index(host: usize, class: HttpClass, source: Source) -> usize {
        (host * CLASSES + class_index(class)) * SOURCES + source_index(source)
    }

    fn ws_index(host: usize, outcome: WsOutcome, source: Source) -> usize {
        (host * OUTCOMES + outcome_index(outcome)) * SOURCES + source_index(source)
    }

    /// The slot of the replica `origin` belongs to, resolved through the cache.
    fn slot_of(&mut self, origin: Origin) -> Option<usize> {
        if let Some(&s) = self.origins.get(&origin) {
            return s;
        }
        let slot = match self.targets.resolve(origin) {
            Some(r) => {
                let r = r.clone();
                Some(self.slot_for(r))
            }
            None => None,
        };
        if self.origins.len() >= MAX_CACHED_ORIGINS {
            self.origins.clear();
        }
        self.origins.insert(origin, slot);
        slot
    }

    /// The slot of `r`, created if it has none.
    fn slot_for(&mut self, r: Replica) -> usize {
        if let Some(&i) = self.by_replica.get(&r) {
            return i;
        }
        let slot = Slot::new(r.clone(), self.hosts.labels().len());
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        self.by_replica.insert(r, i);
        i
    }

    pub fn set_targets(&mut self, targets: TargetSet) {
        let now: HashSet<&Replica> = targets.targets().iter().map(|t| &t.replica).collect();
        for r in self.by_replica.keys() {
            if !now.contains(r) {
                self.leaving.entry(r.clone()).or_insert(None);
            }
        }
        self.leaving.retain(|r, _| !now.contains(r));
        let new: Vec<Replica> = now
            .into_iter()
            .filter(|r| !self.by_replica.contains_key(*r))
            .cloned()
            .collect();
        self.targets = targets;
        // Origins may now resolve to other replicas, or to none.
        self.origins.clear();
        for r in new {
            self.init_series(r);
        }
    }

    /// Create, at zero, the series alerts are computed from, so that the first router miss
    /// of a replica is a visible increase rather than a new series starting at 1.
    fn init_series(&mut self, r: Replica) {
        let i = self.slot_for(r);
        let Some(s) = self.slots[i].as_mut() else {
            return;
        };
        let m = &self.contract;
        let (name, ns) = (&s.replica.name, &s.replica.namespace);
        for (h, host) in self.hosts.labels().iter().enumerate() {
            for source in Source::ALL {
                let _ = counter(
                    &mut s.http[Self::http_index(h, HttpClass::RouterMiss, source)],
                    &m.http_responses,
                    &mut s.series.http,
                    || http_labels(name, ns, host, HttpClass::RouterMiss, source),
                );
                let _ = counter(
                    &mut s.ws[Self::ws_index(h, WsOutcome::RouterMiss, source)],
                    &m.ws_upgrades,
                    &mut s.series.ws,
                    || ws_labels(name, ns, host, WsOutcome::RouterMiss, source),
                );
            }
        }
        for reason in UpstreamFailureReason::ALL {
            let _ = counter(
                &mut s.upstream[reason_index(reason)],
                &m.upstream_connect_failures,
                &mut s.series.upstream,
                || upstream_labels(name, ns, reason),
            );
        }
        let _ = Self::blind_counter(s, m);
    }

    fn blind_counter<'s>(s: &'s mut Slot, m: &Contract) -> &'s Counter {
        s.blind.get_or_insert_with(|| {
            let l = ReplicaLabels {
                replica: s.replica.name.clone(),
                namespace: s.replica.namespace.clone(),
            };
            let c = Counter::clone(&m.sensor_blind_probes.get_or_create(&l));
            s.series.blind = Some(l);
            c
        })
    }

    /// A probe answer to the replica of `origin` that the sensor did not report. Returns
    /// false when `origin` is not a known replica.
    pub fn record_blind_probe(&mut self, origin: Origin) -> bool {
        let Some(i) = self.slot_of(origin) else {
            return false;
        };
        let Some(s) = self.slots[i].as_mut() else {
            return false;
        };
        Self::blind_counter(s, &self.contract).inc();
        true
    }

    /// The prober's verdict on a host and check of the replica of `origin`. Returns false
    /// when `origin` is not a known replica.
    pub fn record_probe_verdict(&mut self, origin: Origin, v: &ProbeVerdict) -> bool {
        let host = self
            .hosts
            .label_of(&normalize_host(v.host.as_bytes()))
            .to_string();
        self.with_slot(origin, |s, c| {
            s.probe.verdict(c, &s.replica, &host, v.check, v.success);
        })
    }

    /// How long one probe of the replica of `origin` took.
    pub fn record_probe_duration(
        &mut self,
        origin: Origin,
        check: ProbeCheck,
        took: Duration,
    ) -> bool {
        self.with_slot(origin, |s, c| s.probe.duration(c, &s.replica, check, took))
    }

    /// The replica's enabled routers, as its API listed them.
    pub fn record_routers(&mut self, origin: Origin, enabled: u64) -> bool {
        self.with_slot(origin, |s, c| s.probe.routers(c, &s.replica, enabled))
    }

    fn with_slot(&mut self, origin: Origin, f: impl FnOnce(&mut Slot, &Contract)) -> bool {
        let Some(i) = self.slot_of(origin) else {
            return false;
        };
        let Some(s) = self.slots[i].as_mut() else {
            return false;
        };
        f(s, &self.contract);
        true
    }

    /// Count one observation. Returns false when its origin is not a known replica.
    pub fn record(&mut self, obs: &Observation) -> bool {
        let Some(i) = self.slot_of(obs.origin()) else {
            return false;
        };
        let h = match obs {
            Observation::Http { host, .. }
            | Observation::Ws { host, .. }
            | Observation::WsEarlyClose { host, .. } => self.hosts.index_of(host),
            Observation::UpstreamFailure { .. } => 0,
        };
        let Some(s) = self.slots[i].as_mut() else {
            return false;
        };
        let m = &self.contract;
        let host = &self.hosts.labels()[h];
        let (name, ns) = (&s.replica.name, &s.replica.namespace);
        let c = match obs {
            Observation::Http { class, source, .. } => counter(
                &mut s.http[Self::http_index(h, *class, *source)],
                &m.http_responses,
                &mut s.series.http,
                || http_labels(name, ns, host, *class, *source),
            ),
            Observation::Ws {
                outcome, source, ..
            } => counter(
                &mut s.ws[Self::ws_index(h, *outcome, *source)],
                &m.ws_upgrades,
                &mut s.series.ws,
                || ws_labels(name, ns, host, *outcome, *source),
            ),
            Observation::WsEarlyClose { .. } => counter(
                &mut s.early[h],
                &m.ws_early_closes,
                &mut s.series.early,
                || HostLabels {
                    replica: name.clone(),
                    namespace: ns.clone(),
                    host: host.clone(),
                },
            ),
            Observation::UpstreamFailure { reason, .. } => counter(
                &mut s.upstream[reason_index(*reason)],
                &m.upstream_connect_failures,
                &mut s.series.upstream,
                || upstream_labels(name, ns, *reason),
            ),
        };
        c.inc();
        true
    }

    /// Remove the series of replicas that left the target set longer than the grace period
    /// ago.
    pub fn tick(&mut self, now_ns: u64) {
        self.expire_hosts(now_ns);
        let mut expired = Vec::new();
        for (r, since) in self.leaving.iter_mut() {
            let start = *since.get_or_insert(now_ns);
            if now_ns.saturating_sub(start) >= self.grace_ns {
                expired.push(r.clone());
            }
        }
        for r in expired {
            self.leaving.remove(&r);
            let Some(i) = self.by_replica.remove(&r) else {
                continue;
            };
            // The slot's counter handles go with it: nothing may count into removed series.
            let Some(slot) = self.slots[i].take() else {
                continue;
            };
            self.free.push(i);
            self.origins.clear();
            slot.probe.remove_all(&self.contract);
            let s = slot.series;
            for l in &s.http {
                self.contract.http_responses.remove(l);
            }
            for l in &s.ws {
                self.contract.ws_upgrades.remove(l);
            }
            for l in &s.early {
                self.contract.ws_early_closes.remove(l);
            }
            for l in &s.upstream {
                self.contract.upstream_connect_failures.remove(l);
            }
            if let Some(l) = &s.blind {
                self.contract.sensor_blind_probes.remove(l);
            }
            self.removed_replicas.inc();
            tracing::info!(replica = %r.name, namespace = %r.namespace, "removed series of departed replica");
        }
    }
}

impl Aggregator {
    /// Remove every replica's series of hosts dropped longer than the grace period ago.
    fn expire_hosts(&mut self, now_ns: u64) {
        let mut expired: Vec<String> = Vec::new();
        for (h, since) in self.leaving_hosts.iter_mut() {
            let start = *since.get_or_insert(now_ns);
            if now_ns.saturating_sub(start) >= self.grace_ns {
                expired.push(h.clone());
            }
        }
        if expired.is_empty() {
            return;
        }
        for h in &expired {
            self.leaving_hosts.remove(h);
        }
        let gone = |host: &String| expired.contains(host);
        let m = &self.contract;
        for s in self.slots.iter_mut().flatten() {
            s.series.http.retain(|l| {
                let keep = !gone(&l.host);
                if !keep {
                    m.http_responses.remove(l);
                }
                keep
            });
            s.series.ws.retain(|l| {
                let keep = !gone(&l.host);
                if !keep {
                    m.ws_upgrades.remove(l);
                }
                keep
            });
            s.series.early.retain(|l| {
                let keep = !gone(&l.host);
                if !keep {
                    m.ws_early_closes.remove(l);
                }
                keep
            });
            s.probe.remove_hosts(m, |h| expired.iter().any(|e| e == h));
        }
        tracing::info!(hosts = ?expired, "removed series of hosts no longer known");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::discovery::{Attribution, Target};
    use crate::hosts::{MAX_KNOWN_HOSTS, OTHER_HOST};
    use crate::metrics::{encode, BuildInfo};
    use prometheus_client::registry::Registry;

    fn target(name: &str, cg: u64) -> Target {
        Target {
            replica: Replica {
                name: name.into(),
                namespace: "ns".into(),
            },
            cgroup_id: cg,
            pids: vec![],
            attribution: Attribution::Cgroup,
            endpoints: Vec::new(),
        }
    }

    fn origin(cg: u64) -> Origin {
        Origin {
            tgid: 1,
            cgroup_id: cg,
        }
    }

    fn setup() -> (Aggregator, Registry) {
        let mut m = Registry::with_prefix("routeskew");
        let contract = Contract::register(
            &mut m,
            BuildInfo {
                version: "t".into(),
                kernel: "k".into(),
            },
        );
        let mut a = Aggregator::new(
            KnownHosts::new(["App.Example.test.", "bad host"]).into(),
            Duration::from_secs(60),
            contract,
            crate::pipeline::metrics::PipelineMetrics::register(&mut m).removed_replicas,
        );
        a.set_targets(TargetSet::new(vec![target("r1", 10), target("r2", 20)]));
        (a, m)
    }

    fn http(cg: u64, host: Host) -> Observation {
        Observation::Http {
            origin: origin(cg),
            host,
            class: HttpClass::Ok,
            source: Source::Passive,
        }
    }

    #[test]
    fn host_label_is_bounded() {
        let (a, _) = setup();
        assert_eq!(
            a.host_label(&Host::Name("app.example.test".into())),
            "app.example.test"
        );
        assert_eq!(a.host_label(&Host::Name("evil.test".into())), OTHER_HOST);
        assert_eq!(a.host_label(&Host::Invalid), OTHER_HOST);
        assert_eq!(a.host_label(&Host::Missing), OTHER_HOST);
        assert_eq!(a.host_label(&Host::Name("bad host".into())), OTHER_HOST);
    }

    #[test]
    fn records_per_replica_and_removes_after_grace() {
        let (mut a, m) = setup();
        let app = || Host::Name("app.example.test".into());
        assert!(a.record(&http(10, app())));
        assert!(a.record(&http(10, app())));
        assert!(a.record(&http(20, Host::Name("zzz.test".into()))));
        assert!(!a.record(&http(30, app())));
        let t = encode(&m);
        assert!(t.contains("routeskew_http_responses_total{replica=\"r1\",namespace=\"ns\",host=\"app.example.test\",class=\"ok\",source=\"passive\"} 2\n"), "{t}");
        assert!(t.contains("routeskew_http_responses_total{replica=\"r2\",namespace=\"ns\",host=\"other\",class=\"ok\",source=\"passive\"} 1\n"));
        // Alerting series exist at zero from the start.
        assert!(t.contains("routeskew_http_responses_total{replica=\"r2\",namespace=\"ns\",host=\"app.example.test\",class=\"router_miss\",source=\"passive\"} 0\n"));

        const S: u64 = 1_000_000_000;
        a.set_targets(TargetSet::new(vec![target("r2", 20)]));
        a.tick(100 * S);
        a.tick(159 * S);
        assert!(encode(&m).contains("replica=\"r1\""));
        a.tick(160 * S);
        let t = encode(&m);
        assert!(!t.contains("replica=\"r1\""), "{t}");
        assert!(t.contains("replica=\"r2\""));
        assert!(t.contains("routeskew_pipeline_removed_replicas_total 1\n"));

        // A replica that comes back within the grace period keeps its series.
        a.set_targets(TargetSet::new(vec![]));
        a.tick(200 * S);
        a.set_targets(TargetSet::new(vec![target("r2", 20)]));
        a.tick(300 * S);
        assert!(encode(&m).contains("replica=\"r2\""));
    }

    /// The prober's verdicts, durations and router counts are series of the replica: they
    /// go with it after the grace period, and a dropped host's verdicts go with the host.
    #[test]
    fn probe_series_share_the_replica_and_host_lifetimes() {
        let (mut a, m) = setup();
        let verdict = |host: &str, success| ProbeVerdict {
            host: host.into(),
            check: ProbeCheck::Http,
            success,
        };
        assert!(a.record_probe_verdict(origin(10), &verdict("App.Example.test", false)));
        assert!(a.record_probe_verdict(origin(20), &verdict("app.example.test", true)));
        assert!(a.record_probe_duration(
            origin(10),
            ProbeCheck::WebSocket,
            Duration::from_millis(20)
        ));
        assert!(a.record_routers(origin(10), 7));
        assert!(!a.record_routers(origin(30), 7));
        let t = encode(&m);
        for series in [
            "routeskew_probe_success{replica=\"r1\",namespace=\"ns\",host=\"app.example.test\",check=\"http\"} 0\n",
            "routeskew_probe_success{replica=\"r2\",namespace=\"ns\",host=\"app.example.test\",check=\"http\"} 1\n",
            "routeskew_probe_duration_seconds_count{replica=\"r1\",namespace=\"ns\",check=\"websocket\"} 1\n",
            "routeskew_replica_routers{replica=\"r1\",namespace=\"ns\"} 7\n",
        ] {
            assert!(t.contains(series), "{series} missing in {t}");
        }

        const S: u64 = 1_000_000_000;
        // The host is dropped: its verdicts stay for the grace period, then go.
        a.set_known_hosts(Arc::new(KnownHosts::new(["other.test"])));
        a.tick(S);
        assert!(encode(&m).contains("routeskew_probe_success{"));
        a.tick(61 * S);
        assert!(!encode(&m).contains("routeskew_probe_success{"));
        // r1 leaves: its duration and router count go after the grace period.
        a.set_targets(TargetSet::new(vec![target("r2", 20)]));
        a.tick(100 * S);
        assert!(encode(&m).contains("routeskew_replica_routers{replica=\"r1\""));
        a.tick(160 * S);
        let t = encode(&m);
        assert!(
            !t.contains("routeskew_replica_routers{replica=\"r1\""),
            "{t}"
        );
        assert!(!t.contains("check=\"websocket\""), "{t}");
    }

    #[test]
    fn known_hosts_change_at_run_time_and_departed_hosts_expire() {
        let (mut a, m) = setup();
        let host = |h: &str| Host::Name(h.into());
        let series = |replica: &str, host: &str| {
            format!("routeskew_http_responses_total{{replica=\"{replica}\",namespace=\"ns\",host=\"{host}\",class=\"ok\",source=\"passive\"}} ")
        };
        let value = |m: &Registry, replica: &str, host: &str| {
            encode(m)
                .lines()
                .find_map(|l| l.strip_prefix(series(replica, host).as_str()))
                .map(|v| v.to_string())
        };
        assert!(a.record(&http(10, host("new.test"))));
        assert_eq!(value(&m, "r1", "other").as_deref(), Some("1"));

        a.set_known_hosts(KnownHosts::new(["app.example.test", "NEW.test"]).into());
        assert_eq!(a.host_labels(), ["app.example.test", "new.test", "other"]);
        // Zero router-miss series exist for the new host on every replica.
        assert!(encode(&m).contains("routeskew_http_responses_total{replica=\"r2\",namespace=\"ns\",host=\"new.test\",class=\"router_miss\",source=\"passive\"} 0\n"));
        assert!(a.record(&http(10, host("new.test"))));
        assert!(a.record(&http(10, host("app.example.test"))));
        assert_eq!(value(&m, "r1", "new.test").as_deref(), Some("1"));
        assert_eq!(value(&m, "r1", "app.example.test").as_deref(), Some("1"));

        // app.example.test leaves: counted as other at once, its series stay for the grace.
        a.set_known_hosts(KnownHosts::new(["new.test"]).into());
        assert!(a.record(&http(10, host("app.example.test"))));
        assert_eq!(value(&m, "r1", "other").as_deref(), Some("2"));
        assert!(a.record(&http(10, host("new.test"))));
        assert_eq!(value(&m, "r1", "new.test").as_deref(), Some("2"));
        const S: u64 = 1_000_000_000;
        a.tick(100 * S);
        a.tick(159 * S);
        assert_eq!(value(&m, "r1", "app.example.test").as_deref(), Some("1"));
        a.tick(160 * S);
        assert!(!encode(&m).contains("host=\"app.example.test\""));
        assert_eq!(value(&m, "r1", "new.test").as_deref(), Some("2"));

        // A host that comes back within the grace continues its series.
        a.set_known_hosts(KnownHosts::default().into());
        a.tick(200 * S);
        a.set_known_hosts(KnownHosts::new(["new.test"]).into());
        a.tick(300 * S);
        assert!(a.record(&http(10, host("new.test"))));
        assert_eq!(value(&m, "r1", "new.test").as_deref(), Some("3"));

        // Bounded: past the limit hosts are other.
        let many: Vec<String> = (0..MAX_KNOWN_HOSTS + 10)
            .map(|i| format!("h{i}.test"))
            .collect();
        a.set_known_hosts(KnownHosts::new(&many).into());
        assert_eq!(a.host_labels().len(), MAX_KNOWN_HOSTS + 1);
        assert_eq!(
            a.host_label(&host(&format!("h{}.test", MAX_KNOWN_HOSTS))),
            OTHER_HOST
        );
        assert_eq!(a.host_label(&host("h0.test")), "h0.test");
    }

    #[test]
    fn label_indexes_follow_the_all_arrays() {
        for (i, c) in HttpClass::ALL.iter().enumerate() {
            assert_eq!(class_index(*c), i);
        }
        for (i, o) in WsOutcome::ALL.iter().enumerate() {
            assert_eq!(outcome_index(*o), i);
        }
        for (i, s) in Source::ALL.iter().enumerate() {
            assert_eq!(source_index(*s), i);
        }
        for (i, r) in UpstreamFailureReason::ALL.iter().enumerate() {
            assert_eq!(reason_index(*r), i);
        }
    }

    #[test]
    fn cached_counters_follow_target_changes_and_removal() {
        let (mut a, m) = setup();
        let app = || Host::Name("app.example.test".into());
        let series = |replica: &str| {
            format!("routeskew_http_responses_total{{replica=\"{replica}\",namespace=\"ns\",host=\"app.example.test\",class=\"ok\",source=\"passive\"}} ")
        };
        let value = |m: &Registry, replica: &str| {
            let t = encode(m);
            t.lines()
                .find_map(|l| l.strip_prefix(series(replica).as_str()))
                .map(|v| v.to_string())
        };
        assert!(a.record(&http(10, app())));
        assert_eq!(value(&m, "r1").as_deref(), Some("1"));
        // The cgroup now belongs to another replica: counted there, from the first event.
        a.set_targets(TargetSet::new(vec![target("r3", 10), target("r2", 20)]));
        assert!(a.record(&http(10, app())));
        assert_eq!(value(&m, "r3").as_deref(), Some("1"));
        assert_eq!(value(&m, "r1").as_deref(), Some("1"));
        // r1's series go after the grace period; when it comes back, its counters start
        // from new series rather than counting into the removed ones.
        const S: u64 = 1_000_000_000;
        a.tick(10 * S);
        a.tick(70 * S);
        assert_eq!(value(&m, "r1"), None);
        a.set_targets(TargetSet::new(vec![target("r1", 30)]));
        assert!(a.record(&http(30, app())));
        assert!(a.record(&http(30, app())));
        assert_eq!(value(&m, "r1").as_deref(), Some("2"));
        // Unknown origins stay unknown, cached or not.
        assert!(!a.record(&http(10, app())));
        assert!(!a.record(&http(10, app())));
        assert!(!a.is_known(origin(10)));
        assert!(a.is_known(origin(30)));
    }
}
