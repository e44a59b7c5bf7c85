//! The post-sensor stages strung together: events in, metrics out.
//!
//! `handle` runs one event through flows → classify → replica attribution → aggregation;
//! `tick` does the time-based housekeeping. Both are synchronous and cheap; the agent calls
//! them from the task that drains the sensor's channel. Timestamps, including `tick`'s
//! `now_ns`, are CLOCK_MONOTONIC nanoseconds, the clock of the kernel's event timestamps.

use std::sync::Arc;
use std::time::Duration;

use crate::aggregate::Aggregator;
use crate::classify::{Classifier, ClassifyStats, Observation};
use crate::discovery::TargetSet;
use crate::event::{Event, EventKind};
use crate::flows::{FlowConfig, FlowEvent, FlowStats, Flows};
use crate::http::ParseError;
use crate::metrics::{KindLabels, LegLabels, Metrics, ReasonLabels};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Hosts that get their own `host` label value; everything else is `other`.
    pub known_hosts: Vec<String>,
    /// An upgraded WebSocket connection closed sooner than this is an early close.
    pub ws_early_close: Duration,
    /// Connections without any event for this long are forgotten.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_pending_per_conn: usize,
    /// How long a replica's series stay after it left the target set.
    pub series_grace: Duration,
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
        }
    }
}

pub struct Pipeline {
    flows: Flows,
    classifier: Classifier,
    aggregator: Aggregator,
    metrics: Arc<Metrics>,
    flow_buf: Vec<FlowEvent>,
    obs_buf: Vec<Observation>,
    /// Stats already added to the exported counters.
    synced_flows: FlowStats,
    synced_classify: ClassifyStats,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, metrics: Arc<Metrics>) -> Self {
        let flows = Flows::new(FlowConfig {
            ws_early_close: cfg.ws_early_close,
            idle_timeout: cfg.idle_timeout,
            max_connections: cfg.max_connections,
            max_pending_per_conn: cfg.max_pending_per_conn,
        });
        Pipeline {
            flows,
            classifier: Classifier::new(),
            aggregator: Aggregator::new(&cfg.known_hosts, cfg.series_grace, metrics.clone()),
            metrics,
            flow_buf: Vec::new(),
            obs_buf: Vec::new(),
            synced_flows: FlowStats::default(),
            synced_classify: ClassifyStats::default(),
        }
    }

    pub fn set_targets(&mut self, targets: TargetSet) {
        self.aggregator.set_targets(targets);
    }

    pub fn handle(&mut self, event: &Event) {
        // Origins are resolved again when observations are counted, not here: a request
        // read just before discovery caught up with a new replica is still paired with
        // its response.
        if self.aggregator.resolve(event.origin).is_none() {
            self.metrics.pipeline().unknown_origin_events.inc();
        }
        if let EventKind::Data { bytes, .. } = &event.kind {
            tracing::trace!(tgid = event.origin.tgid, len = bytes.len(), "data event");
        }
        self.flows.handle(event, &mut self.flow_buf);
        for fe in self.flow_buf.drain(..) {
            self.classifier.classify(fe, &mut self.obs_buf);
        }
        for obs in self.obs_buf.drain(..) {
            if !self.aggregator.record(&obs) {
                self.metrics
                    .pipeline()
                    .dropped_observations
                    .get_or_create(&ReasonLabels {
                        reason: "unknown_origin",
                    })
                    .inc();
            }
        }
        self.sync_stats();
    }

    pub fn tick(&mut self, now_ns: u64) {
        self.flows.tick(now_ns);
        self.aggregator.tick(now_ns);
        self.sync_stats();
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
        let p = self.metrics.pipeline();
        let now = *self.flows.stats();
        let was = self.synced_flows;
        if now != was {
            let kind = |k: &'static str| KindLabels { kind: k };
            let leg = |l: &'static str| LegLabels { leg: l };
            let reason = |r: &'static str| ReasonLabels { reason: r };
            let add = |c: &prometheus_client::metrics::counter::Counter, new: u64, old: u64| {
                if new > old {
                    c.inc_by(new - old);
                }
            };
            add(
                &p.events.get_or_create(&kind("data")),
                now.data_events,
                was.data_events,
            );
            add(
                &p.events.get_or_create(&kind("closed")),
                now.closed_events,
                was.closed_events,
            );
            add(
                &p.events.get_or_create(&kind("upstream_failure")),
                now.upstream_failure_events,
                was.upstream_failure_events,
            );
            for (i, e) in ParseError::ALL.iter().enumerate() {
                add(
                    &p.parse_errors.get_or_create(&kind(e.kind())),
                    now.parse_errors[i],
                    was.parse_errors[i],
                );
            }
            add(&p.truncated_heads, now.truncated_heads, was.truncated_heads);
            add(
                &p.unmatched_responses.get_or_create(&leg("client")),
                now.unmatched_client_responses,
                was.unmatched_client_responses,
            );
            add(
                &p.unmatched_responses.get_or_create(&leg("upstream")),
                now.unmatched_upstream_responses,
                was.unmatched_upstream_responses,
            );
            add(
                &p.unanswered_requests.get_or_create(&leg("client")),
                now.unanswered_client_requests,
                was.unanswered_client_requests,
            );
            add(
                &p.unanswered_requests.get_or_create(&leg("upstream")),
                now.unanswered_upstream_requests,
                was.unanswered_upstream_requests,
            );
            add(
                &p.evicted_connections.get_or_create(&reason("capacity")),
                now.evicted_connections,
                was.evicted_connections,
            );
            add(
                &p.evicted_connections.get_or_create(&reason("idle")),
                now.expired_connections,
                was.expired_connections,
            );
            add(
                &p.pending_overflow,
                now.pending_overflow,
                was.pending_overflow,
            );
            add(
                &p.skipped_data.get_or_create(&reason("after_upgrade")),
                now.ignored_after_upgrade,
                was.ignored_after_upgrade,
            );
            add(
                &p.skipped_data.get_or_create(&reason("continuation")),
                now.continuations,
                was.continuations,
            );
            for (k, new, old) in [
                (
                    "reused_without_close",
                    now.reused_without_close,
                    was.reused_without_close,
                ),
                (
                    "untracked_close",
                    now.untracked_closes,
                    was.untracked_closes,
                ),
                ("unseen_upgrade", now.unseen_upgrades, was.unseen_upgrades),
                (
                    "interim_response",
                    now.interim_responses,
                    was.interim_responses,
                ),
                (
                    "upstream_log_full",
                    now.upstream_log_full,
                    was.upstream_log_full,
                ),
            ] {
                add(&p.connection_anomalies.get_or_create(&kind(k)), new, old);
            }
            add(&p.invalid_hosts, now.invalid_hosts, was.invalid_hosts);
            self.synced_flows = now;
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
        p.connections
            .set(i64::try_from(self.flows.connections()).unwrap_or(i64::MAX));
    }
}
