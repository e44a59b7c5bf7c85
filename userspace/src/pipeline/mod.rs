//! The post-sensor stages strung together: events in, metrics out.
//!
//! `handle` runs one event through flows → classify → replica attribution → aggregation;
//! `tick` does the time-based housekeeping. Both are synchronous and cheap (`handle` is a
//! few thousand instructions per event and allocates nothing on the common path:
//! `pipeline_bench` in the test bed measures it); the agent calls them from the task that
//! drains the sensor's channel. Timestamps, including `tick`'s `now_ns`, are
//! CLOCK_MONOTONIC nanoseconds, the clock of the kernel's event timestamps.

pub mod aggregate;
pub mod budget;
pub mod classify;
pub mod flows;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod probe_report;
mod probe_series;
pub mod semantic;

use std::sync::Arc;
use std::time::Duration;

use crate::discovery::TargetSet;
use crate::event::{Event, EventKind, Origin, ProbeReport, ResponseCount};
use crate::hosts::KnownHosts;
use crate::metrics::Contract;
use crate::pipeline::aggregate::Aggregator;
use crate::pipeline::budget::Budget;
use crate::pipeline::classify::{Classifier, Observation};
use crate::pipeline::flows::{FlowConfig, FlowEvent, Flows, Traffic};
use crate::pipeline::http::ProbeRef;
use crate::pipeline::ledger::{Ledger, LedgerStats, Sighting};
use metrics::{DropReason, PipelineMetrics};

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
    /// A request waiting longer than this for its response is shed (counted).
    pub max_request_age: Duration,
    /// Bytes of pipeline state allowed (see [`budget`]).
    pub memory_budget: u64,
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
            max_request_age: flows.max_request_age,
            memory_budget: budget::DEFAULT_BUDGET,
            series_grace: Duration::from_secs(600),
            upstream_responses: flows.upstream_responses,
            probe_deadline: Duration::from_secs(1),
        }
    }
}

pub struct Pipeline {
    flows: Flows,
    classifier: Classifier,
    aggregator: Aggregator,
    /// The health counters the pipeline itself increments (the stages hold clones).
    metrics: PipelineMetrics,
    flow_buf: Vec<FlowEvent>,
    obs_buf: Vec<Observation>,
    ledger: Ledger,
    missed_buf: Vec<(Origin, Box<ProbeReport>)>,
    /// Kernel copies of the agent's own non-probe requests (endpoint checks, router
    /// inventory), never counted.
    housekeeping_exchanges: u64,
    /// [`PipelineConfig::ws_early_close`], for sessions the semantic sensor timed.
    ws_early_close_ns: u64,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, contract: Contract, metrics: PipelineMetrics) -> Self {
        let budget = Budget::new(
            cfg.memory_budget,
            metrics.memory.clone(),
            &metrics.memory_budget,
        );
        let flows = Flows::new(
            FlowConfig {
                ws_early_close: cfg.ws_early_close,
                idle_timeout: cfg.idle_timeout,
                max_connections: cfg.max_connections,
                max_pending_per_conn: cfg.max_pending_per_conn,
                max_request_age: cfg.max_request_age,
                upstream_responses: cfg.upstream_responses,
            },
            metrics.clone(),
            budget.clone(),
        );
        Pipeline {
            flows,
            classifier: Classifier::counting(metrics.clone()),
            aggregator: Aggregator::new(
                Arc::new(KnownHosts::new(&cfg.known_hosts)),
                cfg.series_grace,
                contract,
                metrics.removed_replicas.clone(),
                metrics.evicted_hosts.clone(),
            )
            .with_budget(budget),
            metrics,
            flow_buf: Vec::new(),
            obs_buf: Vec::new(),
            ledger: Ledger::new(u64::try_from(cfg.probe_deadline.as_nanos()).unwrap_or(u64::MAX)),
            missed_buf: Vec::new(),
            housekeeping_exchanges: 0,
            ws_early_close_ns: u64::try_from(cfg.ws_early_close.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    pub fn set_targets(&mut self, targets: TargetSet) {
        self.aggregator.set_targets(targets);
        let aggregator = &mut self.aggregator;
        self.ledger.retain_streaks(|o| aggregator.is_known(o));
    }

    /// The targets events are attributed to.
    pub fn targets(&self) -> &TargetSet {
        self.aggregator.targets()
    }

    /// The replica an origin belongs to.
    pub fn resolve(&self, origin: Origin) -> Option<&crate::discovery::Replica> {
        self.aggregator.resolve(origin)
    }

    /// Replicas whose sensor missed their last `min` answered probes or more, none
    /// confirmed in between (see [`ledger`]).
    pub fn blind_replicas(&self, min: u32) -> Vec<Origin> {
        self.ledger.blind_replicas(min).collect()
    }

    /// Starts a replica's blind streak afresh (its sensor was changed).
    pub fn forgive_blindness(&mut self, origin: Origin) {
        self.ledger.forgive(origin);
    }

    /// Replace the hosts that get their own `host` label (as published by the agent).
    pub fn set_known_hosts(&mut self, hosts: Arc<KnownHosts>) {
        self.aggregator.set_known_hosts(hosts);
    }

    /// The hosts that get their own `host` label.
    pub fn known_hosts(&self) -> &Arc<KnownHosts> {
        self.aggregator.known_hosts()
    }

    /// [`Pipeline::handle`] for each event of a batch (the sensor's unit of delivery).
    pub fn handle_batch(&mut self, events: &[Event]) {
        for event in events {
            self.handle(event);
        }
    }

    pub fn handle(&mut self, event: &Event) {
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
                let known = self.aggregator.record_probe_duration(
                    event.origin,
                    report.check,
                    report.elapsed,
                );
                self.count_unknown(known);
                self.ledger
                    .reported(event.origin, report.clone(), event.ts_ns);
                self.judge_settled_upgrades(event.ts_ns);
                return;
            }
            EventKind::ProbeVerdict(verdict) => {
                let known = self.aggregator.record_probe_verdict(event.origin, verdict);
                self.count_unknown(known);
                return;
            }
            EventKind::RouterInventory { enabled, .. } => {
                let known = self.aggregator.record_routers(event.origin, *enabled);
                self.count_unknown(known);
                return;
            }
            EventKind::Responses(counted) => {
                self.record_counted(event, counted);
                return;
            }
            EventKind::Head(head) => {
                let known = Arc::clone(self.aggregator.known_hosts());
                let result = semantic::copied_head(event.origin, head, &known, &mut self.obs_buf);
                self.metrics.request_heads.inc(result);
                self.record_observations();
                return;
            }
            EventKind::WsClosed { host_hash, open_ns } => {
                if *open_ns < self.ws_early_close_ns {
                    let host = semantic::host_of(*host_hash, self.aggregator.known_hosts());
                    self.obs_buf.push(Observation::WsEarlyClose {
                        origin: event.origin,
                        host,
                    });
                    self.record_observations();
                }
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
    /// counted (see [`ledger`] for the rule).
    fn admit_probe_exchange(&mut self, fe: &FlowEvent, now_ns: u64) -> bool {
        let Some(request) = fe.request() else {
            return true;
        };
        match request.probe_ref {
            ProbeRef::None => true,
            ProbeRef::Forged => {
                self.metrics.forged_probe_tags.inc();
                true
            }
            ProbeRef::Housekeeping => {
                self.housekeeping_exchanges += 1;
                false
            }
            // A WebSocket probe closes right after its 101: that is no early close.
            ProbeRef::Check(_) if matches!(fe, FlowEvent::WsEarlyClose { .. }) => false,
            ProbeRef::Check(id) => self.ledger.kernel_saw(id, now_ns) == Sighting::Count,
        }
    }

    /// Responses the semantic sensor counted: housekeeping dropped, probe responses
    /// settled with the prober's reports (see [`ledger`]), the rest counted.
    fn record_counted(&mut self, event: &Event, counted: &ResponseCount) {
        if counted.housekeeping {
            self.housekeeping_exchanges += counted.count;
            return;
        }
        let n = if counted.probe {
            let n = self.ledger.kernel_counted(
                event.origin,
                &counted.host,
                counted.status,
                counted.count,
                event.ts_ns,
            );
            self.judge_settled_upgrades(event.ts_ns);
            n
        } else {
            counted.count
        };
        if n == 0 {
            return;
        }
        semantic::counted_responses(event.origin, counted, &mut self.obs_buf);
        for obs in self.obs_buf.drain(..) {
            if !self.aggregator.record_n(&obs, n) {
                self.metrics
                    .dropped_observations
                    .inc_by(DropReason::UnknownOrigin, n);
            }
        }
    }

    /// WebSocket checks a semantic count settled with a refusal: the count made their
    /// response; their upgrade outcome is judged from the report, as for a blind probe.
    fn judge_settled_upgrades(&mut self, ts_ns: u64) {
        // Rare (one per refused WebSocket probe): fresh buffers are fine.
        let mut settled = Vec::new();
        self.ledger.take_settled_upgrades(&mut settled);
        let mut judged = Vec::new();
        for (origin, report) in settled {
            if let Some(fe) = probe_report::report_exchange(origin, &report, ts_ns) {
                self.classifier.classify(fe, &mut judged);
            }
        }
        judged.retain(|o| matches!(o, Observation::Ws { .. }));
        self.obs_buf.append(&mut judged);
        self.record_observations();
    }

    /// The prober's account of a replica that is not (or no longer) a known replica.
    fn count_unknown(&self, known: bool) {
        if !known {
            self.metrics
                .dropped_observations
                .inc(DropReason::UnknownOrigin);
        }
    }

    fn record_observations(&mut self) {
        for obs in self.obs_buf.drain(..) {
            if !self.aggregator.record(&obs) {
                self.metrics
                    .dropped_observations
                    .inc(DropReason::UnknownOrigin);
            }
        }
    }

    pub fn tick(&mut self, now_ns: u64) {
        self.flows.tick(now_ns);
        self.expire_probes(now_ns);
        self.aggregator.tick(now_ns);
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
                self.metrics
                    .dropped_observations
                    .inc(DropReason::UnknownOrigin);
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

    /// Messages the flow tracker read so far (for logs and tests).
    pub fn traffic(&self) -> &Traffic {
        self.flows.traffic()
    }
}
