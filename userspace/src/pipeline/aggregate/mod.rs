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
use crate::event::{Origin, ProbeCheck, ProbeVerdict};
use crate::hosts::{normalize_host, KnownHosts};
use crate::metrics::Contract;
use crate::pipeline::budget::Budget;
use crate::pipeline::classify::Observation;
use crate::pipeline::metrics::MemoryPart;
use slot::Slot;

mod slot;
#[cfg(test)]
mod tests;

/// Origins remembered by the resolution cache; past this it starts over (many short-lived
/// processes in a watched cgroup).
const MAX_CACHED_ORIGINS: usize = 4096;

pub struct Aggregator {
    contract: Contract,
    /// `routeskew_pipeline_removed_replicas_total`.
    removed_replicas: Counter,
    /// `routeskew_pipeline_evicted_hosts_total`.
    evicted_hosts: Counter,
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
    /// Where the series are charged, recounted every tick.
    budget: Budget,
}

impl Aggregator {
    pub fn new(
        hosts: Arc<KnownHosts>,
        series_grace: Duration,
        contract: Contract,
        removed_replicas: Counter,
        evicted_hosts: Counter,
    ) -> Self {
        Aggregator {
            contract,
            removed_replicas,
            evicted_hosts,
            hosts,
            targets: TargetSet::default(),
            slots: Vec::new(),
            by_replica: HashMap::new(),
            free: Vec::new(),
            origins: foldhash::HashMap::default(),
            leaving: HashMap::new(),
            leaving_hosts: HashMap::new(),
            grace_ns: u64::try_from(series_grace.as_nanos()).unwrap_or(u64::MAX),
            budget: Budget::unlimited(),
        }
    }

    /// Charges the series to `budget` (recounted every tick).
    pub fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
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
        self.evict_lingering_hosts();
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
    #[cfg(test)]
    pub(crate) fn host_label<'a>(&'a self, host: &'a crate::hosts::Host) -> &'a str {
        self.hosts.label_of(host)
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
        if let Some(s) = self.slots[i].as_mut() {
            s.init_series(self.hosts.labels(), &self.contract);
        }
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
        s.blind(&self.contract).inc();
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
        self.record_n(obs, 1)
    }

    /// Count `n` identical observations (the semantic sensor's folded counters).
    /// Returns false when their origin is not a known replica.
    pub fn record_n(&mut self, obs: &Observation, n: u64) -> bool {
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
        let host = &self.hosts.labels()[h];
        s.counter_for(obs, h, host, &self.contract).inc_by(n);
        true
    }

    /// Remove the series of replicas that left the target set longer than the grace period
    /// ago.
    pub fn tick(&mut self, now_ns: u64) {
        self.expire_hosts(now_ns);
        let series = self.slots.iter().flatten().map(Slot::bytes).sum();
        self.budget.set(MemoryPart::Series, series);
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
            slot.remove_series(&self.contract);
            self.removed_replicas.inc();
            tracing::info!(replica = %r.name, namespace = %r.namespace, "removed series of departed replica");
        }
    }
}

/// Departed hosts that always keep their series for the whole grace period.
const LINGER_FLOOR: usize = 100;

impl Aggregator {
    /// Hosts whose series linger after they left are at most as many as the known ones
    /// (or [`LINGER_FLOOR`]):
    /// under churn (tenants replacing their hosts) the oldest go before their grace
    /// period ends, so that the series count stays within twice the steady state.
    fn evict_lingering_hosts(&mut self) {
        // A few always get their whole grace (a discovery hiccup that empties the set for
        // a moment must not wipe every series).
        let cap = self.hosts.hosts().len().max(LINGER_FLOOR);
        if self.leaving_hosts.len() <= cap {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self
            .leaving_hosts
            .iter()
            // Not yet ticked: left just now, the youngest.
            .map(|(h, since)| (since.unwrap_or(u64::MAX), h.clone()))
            .collect();
        by_age.sort_unstable();
        let evicted: HashSet<String> = by_age
            .into_iter()
            .take(self.leaving_hosts.len() - cap)
            .map(|(_, h)| h)
            .collect();
        self.remove_host_series(&evicted);
        self.evicted_hosts.inc_by(evicted.len() as u64);
        tracing::info!(
            evicted = evicted.len(),
            lingering = self.leaving_hosts.len(),
            "removed series of departed hosts early: more were lingering than are known"
        );
    }

    /// Host-labelled series held over every replica (for tests of their bound).
    #[cfg(test)]
    pub(crate) fn host_series(&self) -> usize {
        self.slots.iter().flatten().map(Slot::host_series).sum()
    }

    /// Remove every replica's series of hosts dropped longer than the grace period ago.
    fn expire_hosts(&mut self, now_ns: u64) {
        let mut expired: HashSet<String> = HashSet::new();
        for (h, since) in self.leaving_hosts.iter_mut() {
            let start = *since.get_or_insert(now_ns);
            if now_ns.saturating_sub(start) >= self.grace_ns {
                expired.insert(h.clone());
            }
        }
        if expired.is_empty() {
            return;
        }
        self.remove_host_series(&expired);
        tracing::info!(hosts = ?expired, "removed series of hosts no longer known");
    }

    /// Forgets that `hosts` left and removes their series from every replica.
    fn remove_host_series(&mut self, hosts: &HashSet<String>) {
        for h in hosts {
            self.leaving_hosts.remove(h);
        }
        for s in self.slots.iter_mut().flatten() {
            s.remove_hosts(|host| hosts.contains(host), &self.contract);
        }
    }
}
