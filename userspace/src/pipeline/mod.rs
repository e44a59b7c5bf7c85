//! The post-sensor stages strung together: events in, metrics out.
//!
//! `handle` runs one event through flows → classify → replica attribution → aggregation;
//! `tick` does the time-based housekeeping. Both are synchronous and cheap (`handle` is a
//! few thousand instructions per event and allocates nothing on the common path:
//! `pipeline_bench` in the test bed measures it); the agent calls them from the task that
//! drains the sensor's channel. Timestamps, including `tick`'s `now_ns`, are
//! CLOCK_MONOTONIC nanoseconds, the clock of the kernel's event timestamps.

pub mod aggregate;
pub mod classify;
pub mod flows;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod probe_report;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::discovery::TargetSet;
use crate::event::{Event, EventKind, Origin, ProbeReport};
use crate::hosts::KnownHosts;
use crate::metrics::Contract;
use crate::pipeline::aggregate::Aggregator;
use crate::pipeline::classify::{Classifier, ClassifyStats, Observation};
use crate::pipeline::flows::{FlowConfig, FlowEvent, FlowStats, Flows};
use crate::pipeline::http::{ParseError, ProbeRef};
use crate::pipeline::ledger::{Ledger, LedgerStats, Sighting};
use metrics::{KindLabels, LegLabels, PipelineMetrics, ReasonLabels};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Hosts that get their own `host` label value at first (see [`KnownHosts`]);
    /// everything else is `other`. [`Pipeline::set_known_hosts`] replaces them.
    pub known_hosts: Vec<String>,
    /// An upgraded WebSocket connection closed sooner than this is an early close.
    pub ws_early_close: Duration,
    /// Connections without any event for this long are forgotten.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_pending_per_conn: usize,
    /// How long a replica's series stay after it left the target set.
    pub series_grace: Duration,
    /// Whether the sensor reports upstream responses (Traefik reading a backend's answer).
    /// Off by default, like the sensor: upstream requests then only corroborate, and are
    /// never counted as unanswered. See [`FlowConfig::upstream_responses`].
    pub upstream_responses: bool,
    /// How long after the prober's report of a probe the kernel's copy of the exchange
    /// may still arrive before the sensor is declared blind to it.
    pub probe_deadline: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let flows = FlowConfig::default();
        PipelineConfig {
            known_hosts: Vec::new(),
            ws_early_close: flows.ws_early_close,
            idle_timeout: flows.idle_timeout,
            max_connections: flows.max_connections,
            max_pending_per_conn: flows.max_pending_per_conn,
            series_grace: Duration::from_secs(600),
            upstream_responses: flows.upstream_responses,
            probe_deadline: Duration::from_secs(1),
        }
    }
}

/// Handles of the health counters the stage statistics are synced into, resolved once
/// instead of through `Family::get_or_create` on every event.
struct StatCounters {
    data_events: Counter,
    closed_events: Counter,
    upstream_failure_events: Counter,
    parse_errors: [Counter; ParseError::ALL.len()],
    unmatched_client: Counter,
    unmatched_upstream: Counter,
    unanswered_client: Counter,
    unanswered_upstream: Counter,
    evicted_capacity: Counter,
    evicted_idle: Counter,
    skipped_after_upgrade: Counter,
    skipped_continuation: Counter,
    skipped_h2_desync: Counter,
    h2_unclassified: [Counter; crate::pipeline::flows::h2::Reason::ALL.len()],
    reused_without_close: Counter,
    untracked_close: Counter,
    unseen_upgrade: Counter,
    interim_response: Counter,
    upstream_log_full: Counter,
    dropped_unknown_origin: Counter,
}

impl StatCounters {
    fn new(p: &PipelineMetrics) -> Self {
        fn get<L: Clone + Eq + std::hash::Hash>(f: &Family<L, Counter>, l: L) -> Counter {
            Counter::clone(&f.get_or_create(&l))
        }
        let kind = |k: &'static str| KindLabels { kind: k };
        let leg = |l: &'static str| LegLabels { leg: l };
        let reason = |r: &'static str| ReasonLabels { reason: r };
        StatCounters {
            data_events: get(&p.events, kind("data")),
            closed_events: get(&p.events, kind("closed")),
            upstream_failure_events: get(&p.events, kind("upstream_failure")),
            parse_errors: ParseError::ALL.map(|e| get(&p.parse_errors, kind(e.kind()))),
            unmatched_client: get(&p.unmatched_responses, leg("client")),
            unmatched_upstream: get(&p.unmatched_responses, leg("upstream")),
            unanswered_client: get(&p.unanswered_requests, leg("client")),
            unanswered_upstream: get(&p.unanswered_requests, leg("upstream")),
            evicted_capacity: get(&p.evicted_connections, reason("capacity")),
            evicted_idle: get(&p.evicted_connections, reason("idle")),
            skipped_after_upgrade: get(&p.skipped_data, reason("after_upgrade")),
            skipped_continuation: get(&p.skipped_data, reason("continuation")),
            skipped_h2_desync: get(&p.skipped_data, reason("h2_desync")),
            h2_unclassified: crate::pipeline::flows::h2::Reason::ALL
                .map(|r| get(&p.h2_unclassified, reason(r.as_str()))),
            reused_without_close: get(&p.connection_anomalies, kind("reused_without_close")),
            untracked_close: get(&p.connection_anomalies, kind("untracked_close")),
            unseen_upgrade: get(&p.connection_anomalies, kind("unseen_upgrade")),
            interim_response: get(&p.connection_anomalies, kind("interim_response")),
            upstream_log_full: get(&p.connection_anomalies, kind("upstream_log_full")),
            dropped_unknown_origin: get(&p.dropped_observations, reason("unknown_origin")),
        }
    }
}

pub struct Pipeline {
    flows: Flows,
    classifier: Classifier,
    aggregator: Aggregator,
    metrics: PipelineMetrics,
    counters: StatCounters,
    flow_buf: Vec<FlowEvent>,
    obs_buf: Vec<Observation>,
    ledger: Ledger,
    missed_buf: Vec<(Origin, Box<ProbeReport>)>,
    /// Kernel copies of the agent's own non-probe requests (endpoint checks, router
    /// inventory), never counted.
    housekeeping_exchanges: u64,
    /// Stats already added to the exported counters.
    synced_flows: FlowStats,
    synced_classify: ClassifyStats,
    synced_connections: Option<usize>,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, contract: Contract, metrics: PipelineMetrics) -> Self {
        let flows = Flows::new(FlowConfig {
            ws_early_close: cfg.ws_early_close,
            idle_timeout: cfg.idle_timeout,
            max_connections: cfg.max_connections,
            max_pending_per_conn: cfg.max_pending_per_conn,
            upstream_responses: cfg.upstream_responses,
        });
        Pipeline {
            flows,
            classifier: Classifier::new(),
            aggregator: Aggregator::new(
                Arc::new(KnownHosts::new(&cfg.known_hosts)),
                cfg.series_grace,
                contract,
                metrics.removed_replicas.clone(),
            ),
            counters: StatCounters::new(&metrics),
            metrics,
            flow_buf: Vec::new(),
            obs_buf: Vec::new(),
            ledger: Ledger::new(u64::try_from(cfg.probe_deadline.as_nanos()).unwrap_or(u64::MAX)),
            missed_buf: Vec::new(),
            housekeeping_exchanges: 0,
            synced_flows: FlowStats::default(),
            synced_classify: ClassifyStats::default(),
            synced_connections: None,
        }
    }

    pub fn set_targets(&mut self, targets: TargetSet) {
        self.aggregator.set_targets(targets);
    }

    /// Replace the hosts that get their own `host` label (as published by the agent).
    pub fn set_known_hosts(&mut self, hosts: Arc<KnownHosts>) {
        self.aggregator.set_known_hosts(hosts);
    }

    /// The hosts that get their own `host` label.
    pub fn known_hosts(&self) -> &Arc<KnownHosts> {
        self.aggregator.known_hosts()
    }

    /// `host` label values in use, `other` last.
    pub fn host_labels(&self) -> &[String] {
        self.aggregator.host_labels()
    }

    pub fn handle(&mut self, event: &Event) {
        self.handle_unsynced(event);
        self.sync_stats();
    }

    /// [`Pipeline::handle`] for a batch, with the stage counters carried over to the
    /// exported ones once at the end rather than after every event.
    pub fn handle_batch(&mut self, events: &[Event]) {
        for event in events {
            self.handle_unsynced(event);
        }
        self.sync_stats();
    }

    fn handle_unsynced(&mut self, event: &Event) {
        // Origins are resolved again when observations are counted, not here: a request
        // read just before discovery caught up with a new replica is still paired with
        // its response.
        if !self.aggregator.is_known(event.origin) {
            self.metrics.unknown_origin_events.inc();
        }
        match &event.kind {
            EventKind::Data { bytes, .. } => {
                tracing::trace!(tgid = event.origin.tgid, len = bytes.len(), "data event");
            }
            EventKind::Probe(report) => {
                self.ledger
                    .reported(event.origin, report.clone(), event.ts_ns);
                return;
            }
            _ => {}
        }
        self.flows.handle(event, &mut self.flow_buf);
        let mut flow_buf = std::mem::take(&mut self.flow_buf);
        for fe in flow_buf.drain(..) {
            if self.admit_probe_exchange(&fe, event.ts_ns) {
                self.classifier.classify(fe, &mut self.obs_buf);
            }
        }
        self.flow_buf = flow_buf;
        self.record_observations();
    }

    /// Decides whether a flow event that may stem from the agent's own requests is
    /// counted (see [`crate::probe::ledger`] for the rule).
    fn admit_probe_exchange(&mut self, fe: &FlowEvent, now_ns: u64) -> bool {
        let Some(request) = fe.request() else {
            return true;
        };
        match request.probe_ref {
            ProbeRef::None => true,
            ProbeRef::Housekeeping => {
                self.housekeeping_exchanges += 1;
                false
            }
            // A WebSocket probe closes right after its 101: that is no early close.
            ProbeRef::Check(_) if matches!(fe, FlowEvent::WsEarlyClose { .. }) => false,
            ProbeRef::Check(id) => self.ledger.kernel_saw(id, now_ns) == Sighting::Count,
        }
    }

    fn record_observations(&mut self) {
        for obs in self.obs_buf.drain(..) {
            if !self.aggregator.record(&obs) {
                self.counters.dropped_unknown_origin.inc();
            }
        }
    }

    pub fn tick(&mut self, now_ns: u64) {
        self.flows.tick(now_ns);
        self.expire_probes(now_ns);
        self.aggregator.tick(now_ns);
        self.sync_stats();
    }

    /// Settles probe reports whose kernel copy is overdue: each one is a probe the sensor
    /// was blind to, counted from the prober's own report. Cheap when nothing is due; the
    /// agent calls it more often than [`Pipeline::tick`] so that a blind sensor shows
    /// within two probe intervals.
    pub fn expire_probes(&mut self, now_ns: u64) {
        if self.ledger.next_deadline().is_none_or(|d| d > now_ns) {
            return;
        }
        let mut missed = std::mem::take(&mut self.missed_buf);
        self.ledger.expire(now_ns, &mut missed);
        for (origin, report) in missed.drain(..) {
            if !self.aggregator.record_blind_probe(origin) {
                self.counters.dropped_unknown_origin.inc();
                continue;
            }
            tracing::debug!(check = report.check.as_str(), host = %report.host, tgid = origin.tgid, "sensor did not report a probe exchange");
            if let Some(fe) = probe_report::report_exchange(origin, &report, now_ns) {
                self.classifier.classify(fe, &mut self.obs_buf);
            }
        }
        self.missed_buf = missed;
        self.record_observations();
    }

    /// Probe bookkeeping so far (for logs and tests).
    pub fn probe_stats(&self) -> &LedgerStats {
        self.ledger.stats()
    }

    /// Kernel copies of the agent's housekeeping requests that were dropped.
    pub fn housekeeping_exchanges(&self) -> u64 {
        self.housekeeping_exchanges
    }

    /// Flow statistics so far (for logs and tests).
    pub fn flow_stats(&self) -> &FlowStats {
        self.flows.stats()
    }

    pub fn classify_stats(&self) -> &ClassifyStats {
        self.classifier.stats()
    }

    /// Add what the stage counters gained since the last call to the exported counters.
    fn sync_stats(&mut self) {
        let p = &self.metrics;
        let c = &self.counters;
        // By reference: the stats are a few hundred bytes.
        let now = self.flows.stats();
        let was = &self.synced_flows;
        if now != was {
            let add = |c: &Counter, new: u64, old: u64| {
                if new > old {
                    c.inc_by(new - old);
                }
            };
            add(&c.data_events, now.data_events, was.data_events);
            add(&c.closed_events, now.closed_events, was.closed_events);
            add(
                &c.upstream_failure_events,
                now.upstream_failure_events,
                was.upstream_failure_events,
            );
            for (i, counter) in c.parse_errors.iter().enumerate() {
                add(counter, now.parse_errors[i], was.parse_errors[i]);
            }
            add(&p.truncated_heads, now.truncated_heads, was.truncated_heads);
            add(
                &c.unmatched_client,
                now.unmatched_client_responses,
                was.unmatched_client_responses,
            );
            add(
                &c.unmatched_upstream,
                now.unmatched_upstream_responses,
                was.unmatched_upstream_responses,
            );
            add(
                &c.unanswered_client,
                now.unanswered_client_requests,
                was.unanswered_client_requests,
            );
            add(
                &c.unanswered_upstream,
                now.unanswered_upstream_requests,
                was.unanswered_upstream_requests,
            );
            add(
                &c.evicted_capacity,
                now.evicted_connections,
                was.evicted_connections,
            );
            add(
                &c.evicted_idle,
                now.expired_connections,
                was.expired_connections,
            );
            add(
                &p.pending_overflow,
                now.pending_overflow,
                was.pending_overflow,
            );
            add(
                &c.skipped_after_upgrade,
                now.ignored_after_upgrade,
                was.ignored_after_upgrade,
            );
            add(
                &c.skipped_continuation,
                now.continuations,
                was.continuations,
            );
            add(
                &c.reused_without_close,
                now.reused_without_close,
                was.reused_without_close,
            );
            add(
                &c.untracked_close,
                now.untracked_closes,
                was.untracked_closes,
            );
            add(&c.unseen_upgrade, now.unseen_upgrades, was.unseen_upgrades);
            add(
                &c.interim_response,
                now.interim_responses,
                was.interim_responses,
            );
            add(
                &c.upstream_log_full,
                now.upstream_log_full,
                was.upstream_log_full,
            );
            add(&p.invalid_hosts, now.invalid_hosts, was.invalid_hosts);
            let (h2, h2_was) = (&now.h2, &was.h2);
            for (i, counter) in c.h2_unclassified.iter().enumerate() {
                add(counter, h2.unclassified[i], h2_was.unclassified[i]);
            }
            add(
                &c.skipped_h2_desync,
                h2.skipped_records,
                h2_was.skipped_records,
            );
            add(
                &c.unmatched_client,
                h2.unmatched_responses,
                h2_was.unmatched_responses,
            );
            add(
                &c.interim_response,
                h2.interim_responses,
                h2_was.interim_responses,
            );
            add(&p.invalid_hosts, h2.invalid_hosts, h2_was.invalid_hosts);
            self.synced_flows = *now;
        }
        let now_c = *self.classifier.stats();
        let was_c = self.synced_classify;
        if now_c != was_c {
            if now_c.signature_with_upstream > was_c.signature_with_upstream {
                p.signature_with_upstream
                    .inc_by(now_c.signature_with_upstream - was_c.signature_with_upstream);
            }
            if now_c.signature_without_body > was_c.signature_without_body {
                p.signature_without_body
                    .inc_by(now_c.signature_without_body - was_c.signature_without_body);
            }
            self.synced_classify = now_c;
        }
        let conns = self.flows.connections();
        if self.synced_connections != Some(conns) {
            p.connections.set(i64::try_from(conns).unwrap_or(i64::MAX));
            self.synced_connections = Some(conns);
        }
    }
}
