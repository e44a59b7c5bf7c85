//! One replica's slot in the aggregator: the label sets it created (so that all of them
//! can be removed) and the counter handles of the series it has counted into, each
//! created once through `Family::get_or_create` and then incremented directly.

use std::collections::HashSet;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::discovery::Replica;
use crate::event::UpstreamFailureReason;
use crate::metrics::{Contract, HostLabels, HttpLabels, ReplicaLabels, UpstreamLabels, WsLabels};
use crate::pipeline::classify::{HttpClass, Observation, Source, WsOutcome};
use crate::pipeline::probe_series::ProbeSeries;

const CLASSES: usize = HttpClass::ALL.len();
const OUTCOMES: usize = WsOutcome::ALL.len();
const SOURCES: usize = Source::ALL.len();
const REASONS: usize = UpstreamFailureReason::ALL.len();

/// Index of a value in its `ALL` array. The enums are fieldless and `ALL` lists them in
/// declaration order (checked by a test), so this is the discriminant.
pub(super) fn class_index(c: HttpClass) -> usize {
    c as usize
}

pub(super) fn outcome_index(o: WsOutcome) -> usize {
    o as usize
}

pub(super) fn source_index(s: Source) -> usize {
    s as usize
}

pub(super) fn reason_index(r: UpstreamFailureReason) -> usize {
    r as usize
}

fn http_index(host: usize, class: HttpClass, source: Source) -> usize {
    (host * CLASSES + class_index(class)) * SOURCES + source_index(source)
}

fn ws_index(host: usize, outcome: WsOutcome, source: Source) -> usize {
    (host * OUTCOMES + outcome_index(outcome)) * SOURCES + source_index(source)
}

/// What one series is charged to the memory budget: its label set, kept here and in the
/// registry's family with its strings, and its counter.
const SERIES_COST: usize = 512;

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
pub(super) struct Slot {
    pub(super) replica: Replica,
    series: ReplicaSeries,
    /// Indexed by [`http_index`].
    http: Vec<Option<Counter>>,
    /// Indexed by [`ws_index`].
    ws: Vec<Option<Counter>>,
    /// Indexed by host label.
    early: Vec<Option<Counter>>,
    upstream: [Option<Counter>; REASONS],
    /// `sensor_blind_probes_total` of the replica.
    blind: Option<Counter>,
    /// What the prober reported of the replica.
    pub(super) probe: ProbeSeries,
}

/// The counter at `cell`, created (and its labels recorded for removal) on first use.
fn counter<'c, L>(
    cell: &'c mut Option<Counter>,
    family: &Family<L, Counter>,
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

impl Slot {
    /// Bytes charged to the memory budget for this replica's series and handles.
    pub(super) fn bytes(&self) -> usize {
        let handles = (self.http.capacity() + self.ws.capacity() + self.early.capacity())
            * std::mem::size_of::<Option<Counter>>();
        let s = &self.series;
        let series = s.http.len()
            + s.ws.len()
            + s.early.len()
            + s.upstream.len()
            + usize::from(s.blind.is_some());
        handles + series * SERIES_COST
    }

    pub(super) fn new(replica: Replica, hosts: usize) -> Self {
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
    pub(super) fn reset_host_handles(&mut self, hosts: usize) {
        self.http = vec![None; hosts * CLASSES * SOURCES];
        self.ws = vec![None; hosts * OUTCOMES * SOURCES];
        self.early = vec![None; hosts];
    }

    /// Create, at zero, the series alerts are computed from (`host_labels` indexed like
    /// the handles).
    pub(super) fn init_series(&mut self, host_labels: &[String], m: &Contract) {
        let (name, ns) = (&self.replica.name, &self.replica.namespace);
        for (h, host) in host_labels.iter().enumerate() {
            for source in Source::ALL {
                let _ = counter(
                    &mut self.http[http_index(h, HttpClass::RouterMiss, source)],
                    &m.http_responses,
                    &mut self.series.http,
                    || http_labels(name, ns, host, HttpClass::RouterMiss, source),
                );
                let _ = counter(
                    &mut self.ws[ws_index(h, WsOutcome::RouterMiss, source)],
                    &m.ws_upgrades,
                    &mut self.series.ws,
                    || ws_labels(name, ns, host, WsOutcome::RouterMiss, source),
                );
            }
        }
        for reason in UpstreamFailureReason::ALL {
            let _ = counter(
                &mut self.upstream[reason_index(reason)],
                &m.upstream_connect_failures,
                &mut self.series.upstream,
                || upstream_labels(name, ns, reason),
            );
        }
        let _ = self.blind(m);
    }

    /// The replica's `sensor_blind_probes_total`.
    pub(super) fn blind(&mut self, m: &Contract) -> &Counter {
        self.blind.get_or_insert_with(|| {
            let l = ReplicaLabels {
                replica: self.replica.name.clone(),
                namespace: self.replica.namespace.clone(),
            };
            let c = Counter::clone(&m.sensor_blind_probes.get_or_create(&l));
            self.series.blind = Some(l);
            c
        })
    }

    /// The counter `obs` counts into; `h` is its host's label index, `host` the label.
    pub(super) fn counter_for(
        &mut self,
        obs: &Observation,
        h: usize,
        host: &str,
        m: &Contract,
    ) -> &Counter {
        let (name, ns) = (&self.replica.name, &self.replica.namespace);
        match obs {
            Observation::Http { class, source, .. } => counter(
                &mut self.http[http_index(h, *class, *source)],
                &m.http_responses,
                &mut self.series.http,
                || http_labels(name, ns, host, *class, *source),
            ),
            Observation::Ws {
                outcome, source, ..
            } => counter(
                &mut self.ws[ws_index(h, *outcome, *source)],
                &m.ws_upgrades,
                &mut self.series.ws,
                || ws_labels(name, ns, host, *outcome, *source),
            ),
            Observation::WsEarlyClose { .. } => counter(
                &mut self.early[h],
                &m.ws_early_closes,
                &mut self.series.early,
                || HostLabels {
                    replica: name.clone(),
                    namespace: ns.clone(),
                    host: host.to_string(),
                },
            ),
            Observation::UpstreamFailure { reason, .. } => counter(
                &mut self.upstream[reason_index(*reason)],
                &m.upstream_connect_failures,
                &mut self.series.upstream,
                || upstream_labels(name, ns, *reason),
            ),
        }
    }

    /// Removes every series of the slot (its handles go with it: nothing may count into
    /// removed series).
    pub(super) fn remove_series(self, m: &Contract) {
        self.probe.remove_all(m);
        let s = self.series;
        for l in &s.http {
            m.http_responses.remove(l);
        }
        for l in &s.ws {
            m.ws_upgrades.remove(l);
        }
        for l in &s.early {
            m.ws_early_closes.remove(l);
        }
        for l in &s.upstream {
            m.upstream_connect_failures.remove(l);
        }
        if let Some(l) = &s.blind {
            m.sensor_blind_probes.remove(l);
        }
    }

    /// Host-labelled series held (for tests of their bound).
    #[cfg(test)]
    pub(super) fn host_series(&self) -> usize {
        self.series.http.len() + self.series.ws.len() + self.series.early.len()
    }

    /// Removes the series of hosts for which `gone` holds.
    pub(super) fn remove_hosts(&mut self, gone: impl Fn(&str) -> bool, m: &Contract) {
        let s = &mut self.series;
        s.http.retain(|l| {
            let keep = !gone(&l.host);
            if !keep {
                m.http_responses.remove(l);
            }
            keep
        });
        s.ws.retain(|l| {
            let keep = !gone(&l.host);
            if !keep {
                m.ws_upgrades.remove(l);
            }
            keep
        });
        s.early.retain(|l| {
            let keep = !gone(&l.host);
            if !keep {
                m.ws_early_closes.remove(l);
            }
            keep
        });
        self.probe.remove_hosts(m, gone);
    }
}
