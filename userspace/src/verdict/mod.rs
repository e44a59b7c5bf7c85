//! The routeless verdict, computed once per agent and shared by whatever acts on it (the
//! `/api/v1/replicas` endpoint and `routeskew status` today; Events and the remediator
//! read the same JSON).
//!
//! A replica is **routeless for host H** when, for the whole confirmation window, the
//! prober's answers from it for H are Traefik's router-miss 404 while at least half of its
//! siblings (same owner in Kubernetes, same namespace in local mode) that were probed for
//! H route it; its router inventory lacks routers its siblings list (when its API answers);
//! its sensor is not blind; and it has been ready longer than a minimum age. Anything
//! short of that is `suspect` with the reason, never a guess.
//!
//! Pure: probe verdicts, inventories, blindness and replica facts in; [`Verdict`]s out.
//! Time is CLOCK_MONOTONIC nanoseconds, like events; [`Verdicts::evaluate`] also takes the
//! wall clock to report `since` as Unix seconds.

mod feed;
mod json;
pub mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

pub use json::{render, VerdictReport};

use crate::discovery::Replica;

/// A host not probed for this long is forgotten. Rounds rotate through at most
/// `--probe-hosts-per-round` hosts, so with 1,000 known hosts and the default 10 s interval
/// each is probed every 100 s.
pub const STALE_HOST: Duration = Duration::from_secs(900);

/// Verdict settings (`--verdict-confirm`, `--verdict-min-ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictConfig {
    /// How long the evidence must hold before a replica is routeless for a host.
    pub confirm: Duration,
    /// A replica younger than this is never routeless (it may still be loading routes).
    pub min_ready: Duration,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig {
            confirm: Duration::from_secs(180),
            min_ready: Duration::from_secs(60),
        }
    }
}

/// What a replica is for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Its last probe of the host was routed.
    Ok,
    /// Router misses, not (yet) confirmed: see the reason.
    Suspect,
    /// Confirmed: see the module's rule.
    Routeless,
    /// No answer to its last probe of the host (down, refused, timeout).
    Unknown,
}

/// Why a replica with router misses for a host is not (yet) routeless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The misses have not lasted the confirmation window yet.
    Confirming,
    /// Fewer than half of its probed siblings route the host, or it has none: a
    /// configuration matter, not one replica's.
    SiblingsMissToo,
    /// Its API lists every router its siblings do.
    InventoryComplete,
    /// Its sensor missed probes: what it reports is not trusted.
    SensorBlind,
    /// Ready for less than the minimum age.
    TooYoung,
}

/// What a replica is known by besides its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFacts {
    pub replica: Replica,
    /// Replicas of one group are siblings: the owner (`ReplicaSet/name`) in Kubernetes,
    /// the namespace in local mode.
    pub group: String,
    /// When it last turned ready (Kubernetes); `None`: first seen by the agent.
    pub ready_since: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostState {
    /// The last round's outcome: answered, and whether with a router miss.
    answered: bool,
    router_miss: bool,
    /// Start of the current run of router misses.
    miss_since: Option<u64>,
    /// When the current outcome began (for `since`).
    since: u64,
    /// Rounds with a router miss in the current run.
    misses: u32,
    /// The last round's time.
    last: u64,
}

#[derive(Debug, Clone)]
struct ReplicaState {
    facts: ReplicaFacts,
    first_seen: SystemTime,
    hosts: BTreeMap<String, HostState>,
    /// Routers its siblings list and it lacks; `None` until its API answered.
    lacks: Option<Vec<String>>,
    blind: bool,
}

/// One (replica, host) verdict with its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub replica: Replica,
    pub host: String,
    pub state: State,
    pub reason: Option<Reason>,
    /// Monotonic ns the state began (for `routeless`: when it was confirmed).
    pub since_ns: u64,
    /// Rounds in a row whose answer was a router miss.
    pub router_miss_rounds: u32,
    /// Siblings probed for the host, and how many of them route it.
    pub siblings: u32,
    pub siblings_routing: u32,
    /// Routers its siblings list and it lacks (`None`: API not read).
    pub lacks: Option<Vec<String>>,
    pub blind: bool,
    /// Seconds since it turned ready (or was first seen).
    pub ready_for: Duration,
}

/// The verdict engine: the latest evidence per replica and host.
#[derive(Debug, Default)]
pub struct Verdicts {
    cfg: VerdictConfig,
    replicas: BTreeMap<Replica, ReplicaState>,
}

impl Verdicts {
    pub fn new(cfg: VerdictConfig) -> Self {
        Verdicts {
            cfg,
            replicas: BTreeMap::new(),
        }
    }

    /// The replicas now watched; the evidence of those gone is dropped.
    pub fn set_replicas(&mut self, facts: Vec<ReplicaFacts>, now_wall: SystemTime) {
        let keep: BTreeSet<&Replica> = facts.iter().map(|f| &f.replica).collect();
        self.replicas.retain(|r, _| keep.contains(r));
        for f in facts {
            match self.replicas.get_mut(&f.replica) {
                Some(st) => st.facts = f,
                None => {
                    self.replicas.insert(
                        f.replica.clone(),
                        ReplicaState {
                            facts: f,
                            first_seen: now_wall,
                            hosts: BTreeMap::new(),
                            lacks: None,
                            blind: false,
                        },
                    );
                }
            }
        }
    }

    /// One round's verdict of the HTTP check of `host` on `replica`: `answered` when an
    /// answer came, `router_miss` when it was Traefik's router-miss 404.
    pub fn probed(
        &mut self,
        replica: &Replica,
        host: &str,
        answered: bool,
        router_miss: bool,
        now: u64,
    ) {
        let Some(st) = self.replicas.get_mut(replica) else {
            return;
        };
        let h = st.hosts.entry(host.to_string()).or_insert(HostState {
            answered,
            router_miss,
            miss_since: None,
            since: now,
            misses: 0,
            last: now,
        });
        h.last = now;
        if (h.answered, h.router_miss) != (answered, router_miss) {
            h.since = now;
        }
        h.answered = answered;
        h.router_miss = router_miss;
        if router_miss {
            h.miss_since.get_or_insert(now);
            h.misses = h.misses.saturating_add(1);
        } else if answered {
            h.miss_since = None;
            h.misses = 0;
        }
    }

    /// Forgets hosts not probed since before `now - STALE_HOST` (the prober no longer
    /// probes them: they left the known hosts), so that the evidence stays bounded.
    pub fn forget_stale_hosts(&mut self, now: u64) {
        let stale = u64::try_from(STALE_HOST.as_nanos()).unwrap_or(u64::MAX);
        let horizon = now.saturating_sub(stale);
        for st in self.replicas.values_mut() {
            st.hosts.retain(|_, h| h.last >= horizon);
        }
    }

    /// The routers `replica`'s siblings list and it lacks, read from its API.
    pub fn inventory(&mut self, replica: &Replica, lacks: Vec<String>) {
        if let Some(st) = self.replicas.get_mut(replica) {
            st.lacks = Some(lacks);
        }
    }

    /// Whether `replica`'s sensor is blind (it missed its last probes).
    pub fn set_blind(&mut self, replica: &Replica, blind: bool) {
        if let Some(st) = self.replicas.get_mut(replica) {
            st.blind = blind;
        }
    }

    /// The replicas whose sensor is blind are exactly `blind`.
    pub fn set_blind_only(&mut self, blind: &[Replica]) {
        for (r, st) in &mut self.replicas {
            st.blind = blind.contains(r);
        }
    }

    /// Every (replica, host) verdict, by replica then host.
    pub fn evaluate(&self, now: u64, now_wall: SystemTime) -> Vec<Verdict> {
        let mut out = Vec::new();
        for st in self.replicas.values() {
            let ready_since = st.facts.ready_since.unwrap_or(st.first_seen);
            let ready_for = now_wall.duration_since(ready_since).unwrap_or_default();
            for (host, h) in &st.hosts {
                let (siblings, routing) = self.siblings_routing(st, host);
                let mut v = Verdict {
                    replica: st.facts.replica.clone(),
                    host: host.clone(),
                    state: State::Ok,
                    reason: None,
                    since_ns: h.since,
                    router_miss_rounds: h.misses,
                    siblings,
                    siblings_routing: routing,
                    lacks: st.lacks.clone(),
                    blind: st.blind,
                    ready_for,
                };
                match (h.answered, h.miss_since) {
                    (_, Some(since)) => self.judge(&mut v, since, now),
                    (false, None) => v.state = State::Unknown,
                    (true, None) => {}
                }
                out.push(v);
            }
        }
        out
    }

    /// A replica with a run of router misses since `since`: routeless or suspect.
    fn judge(&self, v: &mut Verdict, since: u64, now: u64) {
        let confirm = u64::try_from(self.cfg.confirm.as_nanos()).unwrap_or(u64::MAX);
        v.state = State::Suspect;
        v.since_ns = since;
        v.reason = Some(if v.siblings == 0 || v.siblings_routing * 2 < v.siblings {
            Reason::SiblingsMissToo
        } else if v.lacks.as_ref().is_some_and(Vec::is_empty) {
            Reason::InventoryComplete
        } else if v.blind {
            Reason::SensorBlind
        } else if v.ready_for < self.cfg.min_ready {
            Reason::TooYoung
        } else if now.saturating_sub(since) < confirm {
            Reason::Confirming
        } else {
            v.state = State::Routeless;
            v.since_ns = since.saturating_add(confirm);
            return;
        });
    }

    /// Siblings of `st` probed for `host`, and how many of them route it.
    fn siblings_routing(&self, st: &ReplicaState, host: &str) -> (u32, u32) {
        let mut siblings = 0;
        let mut routing = 0;
        for other in self.replicas.values() {
            if other.facts.replica == st.facts.replica || other.facts.group != st.facts.group {
                continue;
            }
            let Some(h) = other.hosts.get(host) else {
                continue;
            };
            if !h.answered {
                continue;
            }
            siblings += 1;
            if !h.router_miss {
                routing += 1;
            }
        }
        (siblings, routing)
    }
}
