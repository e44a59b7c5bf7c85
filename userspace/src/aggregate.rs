//! Attributes observations to replicas and counts them in the exported families.
//!
//! Label values are bounded: `host` is a configured host or `other`, `replica`/`namespace`
//! come from the target set. A replica that leaves the target set keeps its series for a
//! grace period (so that a scrape still sees the final values and a quick restart does not
//! reset them) and then has them removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::classify::{HttpClass, Observation, Source, WsOutcome};
use crate::discovery::{Replica, TargetSet};
use crate::event::{Origin, UpstreamFailureReason};
use crate::http::{self, Host};
use crate::metrics::{HostLabels, HttpLabels, Metrics, UpstreamLabels, WsLabels};

/// The `host` label of anything not configured.
pub const OTHER_HOST: &str = "other";

/// Every label set created for one replica, so that all of them can be removed.
#[derive(Debug, Default)]
struct ReplicaSeries {
    http: HashSet<HttpLabels>,
    ws: HashSet<WsLabels>,
    early: HashSet<HostLabels>,
    upstream: HashSet<UpstreamLabels>,
}

pub struct Aggregator {
    metrics: Arc<Metrics>,
    known_hosts: HashSet<String>,
    targets: TargetSet,
    series: HashMap<Replica, ReplicaSeries>,
    /// Replicas gone from the target set; the value is the time the grace period started
    /// (set at the first tick after they left).
    leaving: HashMap<Replica, Option<u64>>,
    grace_ns: u64,
}

impl Aggregator {
    /// `known_hosts` are normalised like request Hosts; invalid entries are ignored.
    pub fn new(known_hosts: &[String], series_grace: Duration, metrics: Arc<Metrics>) -> Self {
        let known_hosts = known_hosts
            .iter()
            .filter_map(|h| match http::normalize_host(h.as_bytes()) {
                Host::Name(n) => Some(n),
                _ => {
                    tracing::warn!(host = %h, "ignoring invalid known host");
                    None
                }
            })
            .collect();
        Aggregator {
            metrics,
            known_hosts,
            targets: TargetSet::default(),
            series: HashMap::new(),
            leaving: HashMap::new(),
            grace_ns: u64::try_from(series_grace.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    pub fn targets(&self) -> &TargetSet {
        &self.targets
    }

    pub fn resolve(&self, origin: Origin) -> Option<&Replica> {
        self.targets.resolve(origin)
    }

    /// The `host` label value for a request's Host.
    pub fn host_label<'a>(&'a self, host: &'a Host) -> &'a str {
        match host {
            Host::Name(n) if self.known_hosts.contains(n) => n,
            _ => OTHER_HOST,
        }
    }

    pub fn set_targets(&mut self, targets: TargetSet) {
        let now: HashSet<&Replica> = targets.targets().iter().map(|t| &t.replica).collect();
        for r in self.series.keys() {
            if !now.contains(r) {
                self.leaving.entry(r.clone()).or_insert(None);
            }
        }
        self.leaving.retain(|r, _| !now.contains(r));
        let new: Vec<Replica> = now
            .into_iter()
            .filter(|r| !self.series.contains_key(*r))
            .cloned()
            .collect();
        self.targets = targets;
        for r in new {
            self.init_series(&r);
        }
    }

    /// Create, at zero, the series alerts are computed from, so that the first router miss
    /// of a replica is a visible increase rather than a new series starting at 1.
    fn init_series(&mut self, r: &Replica) {
        let hosts: Vec<String> = self
            .known_hosts
            .iter()
            .cloned()
            .chain(std::iter::once(OTHER_HOST.to_string()))
            .collect();
        let s = self.series.entry(r.clone()).or_default();
        for host in &hosts {
            for source in Source::ALL {
                let l = Metrics::http_labels(
                    &r.name,
                    &r.namespace,
                    host,
                    HttpClass::RouterMiss,
                    source,
                );
                let _ = self.metrics.http_responses().get_or_create(&l);
                s.http.insert(l);
                let l =
                    Metrics::ws_labels(&r.name, &r.namespace, host, WsOutcome::RouterMiss, source);
                let _ = self.metrics.ws_upgrades().get_or_create(&l);
                s.ws.insert(l);
            }
        }
        for reason in UpstreamFailureReason::ALL {
            let l = Metrics::upstream_labels(&r.name, &r.namespace, reason);
            let _ = self.metrics.upstream_connect_failures().get_or_create(&l);
            s.upstream.insert(l);
        }
    }

    /// Count one observation. Returns false when its origin is not a known replica.
    pub fn record(&mut self, obs: &Observation) -> bool {
        let Some(replica) = self.targets.resolve(obs.origin()).cloned() else {
            return false;
        };
        let host = match obs {
            Observation::Http { host, .. }
            | Observation::Ws { host, .. }
            | Observation::WsEarlyClose { host, .. } => self.host_label(host).to_string(),
            Observation::UpstreamFailure { .. } => String::new(),
        };
        let m = Arc::clone(&self.metrics);
        let s = self.series.entry(replica.clone()).or_default();
        let (name, ns) = (&replica.name, &replica.namespace);
        match obs {
            Observation::Http { class, source, .. } => {
                let l = Metrics::http_labels(name, ns, &host, *class, *source);
                m.http_responses().get_or_create(&l).inc();
                s.http.insert(l);
            }
            Observation::Ws {
                outcome, source, ..
            } => {
                let l = Metrics::ws_labels(name, ns, &host, *outcome, *source);
                m.ws_upgrades().get_or_create(&l).inc();
                s.ws.insert(l);
            }
            Observation::WsEarlyClose { .. } => {
                let l = HostLabels {
                    replica: name.clone(),
                    namespace: ns.clone(),
                    host,
                };
                m.ws_early_closes().get_or_create(&l).inc();
                s.early.insert(l);
            }
            Observation::UpstreamFailure { reason, .. } => {
                let l = Metrics::upstream_labels(name, ns, *reason);
                m.upstream_connect_failures().get_or_create(&l).inc();
                s.upstream.insert(l);
            }
        }
        true
    }

    /// Remove the series of replicas that left the target set longer than the grace period
    /// ago.
    pub fn tick(&mut self, now_ns: u64) {
        let mut expired = Vec::new();
        for (r, since) in self.leaving.iter_mut() {
            let start = *since.get_or_insert(now_ns);
            if now_ns.saturating_sub(start) >= self.grace_ns {
                expired.push(r.clone());
            }
        }
        for r in expired {
            self.leaving.remove(&r);
            let Some(s) = self.series.remove(&r) else {
                continue;
            };
            for l in &s.http {
                self.metrics.http_responses().remove(l);
            }
            for l in &s.ws {
                self.metrics.ws_upgrades().remove(l);
            }
            for l in &s.early {
                self.metrics.ws_early_closes().remove(l);
            }
            for l in &s.upstream {
                self.metrics.upstream_connect_failures().remove(l);
            }
            self.metrics.pipeline().removed_replicas.inc();
            tracing::info!(replica = %r.name, namespace = %r.namespace, "removed series of departed replica");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::discovery::{Attribution, Target};
    use crate::metrics::BuildInfo;

    fn target(name: &str, cg: u64) -> Target {
        Target {
            replica: Replica {
                name: name.into(),
                namespace: "ns".into(),
            },
            cgroup_id: cg,
            pids: vec![],
            attribution: Attribution::Cgroup,
        }
    }

    fn origin(cg: u64) -> Origin {
        Origin {
            tgid: 1,
            cgroup_id: cg,
        }
    }

    fn setup() -> (Aggregator, Arc<Metrics>) {
        let m = Arc::new(Metrics::new(BuildInfo {
            version: "t".into(),
            kernel: "k".into(),
        }));
        let mut a = Aggregator::new(
            &["App.Example.test.".to_string(), "bad host".to_string()],
            Duration::from_secs(60),
            m.clone(),
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
        let t = m.encode();
        assert!(t.contains("routeskew_http_responses_total{replica=\"r1\",namespace=\"ns\",host=\"app.example.test\",class=\"ok\",source=\"passive\"} 2\n"), "{t}");
        assert!(t.contains("routeskew_http_responses_total{replica=\"r2\",namespace=\"ns\",host=\"other\",class=\"ok\",source=\"passive\"} 1\n"));
        // Alerting series exist at zero from the start.
        assert!(t.contains("routeskew_http_responses_total{replica=\"r2\",namespace=\"ns\",host=\"app.example.test\",class=\"router_miss\",source=\"passive\"} 0\n"));

        const S: u64 = 1_000_000_000;
        a.set_targets(TargetSet::new(vec![target("r2", 20)]));
        a.tick(100 * S);
        a.tick(159 * S);
        assert!(m.encode().contains("replica=\"r1\""));
        a.tick(160 * S);
        let t = m.encode();
        assert!(!t.contains("replica=\"r1\""), "{t}");
        assert!(t.contains("replica=\"r2\""));
        assert!(t.contains("routeskew_pipeline_removed_replicas_total 1\n"));

        // A replica that comes back within the grace period keeps its series.
        a.set_targets(TargetSet::new(vec![]));
        a.tick(200 * S);
        a.set_targets(TargetSet::new(vec![target("r2", 20)]));
        a.tick(300 * S);
        assert!(m.encode().contains("replica=\"r2\""));
    }
}
