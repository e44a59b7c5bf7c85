//! The pipeline's own health metrics (`routeskew_pipeline_*`): everything it dropped or
//! could not read. The agent registers them once; the stages (flow tracker, h2 decoder,
//! classifier, pipeline) each hold a clone of [`PipelineMetrics`], whose handles are
//! resolved at construction, and increment them where the event happens.
//!
//! Each labelled family takes its label values from one enum ([`LabelValue`]): the same
//! table creates every series at zero and resolves the handle an increment uses, so a
//! labelled increment is an index and an atomic add, never a `Family::get_or_create`.
//! Adding a health counter is a field and a `register` line here, and its increment.

use std::fmt;
use std::marker::PhantomData;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::http::ParseError;

mod labels;
#[cfg(test)]
mod tests;

pub use labels::{
    Anomaly, DropReason, Eviction, HeadResult, InputKind, Leg, MemoryPart, Shed, Skip, Unclassified,
};

/// The values of one label of a counter family, as a fieldless enum.
pub trait LabelValue: Copy + fmt::Debug + Send + Sync + 'static {
    /// The label's name.
    const KEY: &'static str;
    /// Every value, in declaration order, so that [`index`](Self::index) is the
    /// discriminant (checked by a test).
    const ALL: &'static [Self];
    /// The label value.
    fn as_str(self) -> &'static str;
    /// Position in [`ALL`](Self::ALL).
    fn index(self) -> usize;
}

/// The label set of a [`Labelled`] family: one `key="value"` pair.
type OneLabel = [(&'static str, &'static str); 1];

/// A family with one series per value of `L`, all created at zero (so that rates work
/// from the first increment) and resolved once: counters ([`CounterFamily`]) or gauges
/// ([`GaugeFamily`]).
pub struct Labelled<L: LabelValue, M> {
    family: Family<OneLabel, M>,
    /// The series of `L::ALL[i]` at `i`.
    by_value: Box<[M]>,
    label: PhantomData<L>,
}

/// Counters, one per value of `L`.
pub type CounterFamily<L> = Labelled<L, Counter>;
/// Gauges, one per value of `L`.
pub type GaugeFamily<L> = Labelled<L, Gauge>;

impl<L: LabelValue> Labelled<L, Counter> {
    #[inline]
    pub fn inc(&self, value: L) {
        self.by_value[value.index()].inc();
    }

    #[inline]
    pub fn inc_by(&self, value: L, n: u64) {
        if n > 0 {
            self.by_value[value.index()].inc_by(n);
        }
    }

    /// The series' value (for logs and tests).
    pub fn get(&self, value: L) -> u64 {
        self.by_value[value.index()].get()
    }
}

impl<L: LabelValue> Labelled<L, Gauge> {
    /// The gauge of `value` itself (an `Arc` inside: clones share it).
    pub fn gauge(&self, value: L) -> &Gauge {
        &self.by_value[value.index()]
    }
}

impl<L: LabelValue, M: Clone + Default> Default for Labelled<L, M> {
    fn default() -> Self {
        let family = Family::<OneLabel, M>::default();
        let by_value = L::ALL
            .iter()
            .map(|v| M::clone(&family.get_or_create(&[(L::KEY, v.as_str())])))
            .collect();
        Labelled {
            family,
            by_value,
            label: PhantomData,
        }
    }
}

// Clones share the series, like a `Family` clone.
impl<L: LabelValue, M: Clone> Clone for Labelled<L, M> {
    fn clone(&self) -> Self {
        Labelled {
            family: self.family.clone(),
            by_value: self.by_value.clone(),
            label: PhantomData,
        }
    }
}

/// A series' current value, for logs and tests.
pub trait SeriesValue {
    fn value(&self) -> i64;
}

impl SeriesValue for Counter {
    fn value(&self) -> i64 {
        i64::try_from(self.get()).unwrap_or(i64::MAX)
    }
}

impl SeriesValue for Gauge {
    fn value(&self) -> i64 {
        self.get()
    }
}

impl<L: LabelValue, M: SeriesValue> fmt::Debug for Labelled<L, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                L::ALL
                    .iter()
                    .map(|v| (v.as_str(), self.by_value[v.index()].value())),
            )
            .finish()
    }
}

impl<L: LabelValue, M: EncodeMetric + TypedMetric> EncodeMetric for Labelled<L, M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), fmt::Error> {
        self.family.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// Health of the post-sensor pipeline: everything it dropped or could not read.
#[derive(Clone, Debug, Default)]
pub struct PipelineMetrics {
    /// Input events by kind.
    pub events: CounterFamily<InputKind>,
    /// Captures that could not be parsed, by [`ParseError::kind`].
    pub parse_errors: CounterFamily<ParseError>,
    /// Heads that did not end inside the capture.
    pub truncated_heads: Counter,
    /// Responses without a request to pair with.
    pub unmatched_responses: CounterFamily<Leg>,
    /// Requests whose connection closed before a response.
    pub unanswered_requests: CounterFamily<Leg>,
    /// Tracked connections dropped.
    pub evicted_connections: CounterFamily<Eviction>,
    /// Requests not tracked because a connection had too many in flight.
    pub pending_overflow: Counter,
    /// Data events not parsed.
    pub skipped_data: CounterFamily<Skip>,
    /// Connection-level oddities.
    pub connection_anomalies: CounterFamily<Anomaly>,
    /// Events whose process/cgroup is not a known replica.
    pub unknown_origin_events: Counter,
    /// Observations that could not be attributed to a replica.
    pub dropped_observations: CounterFamily<DropReason>,
    /// Router-miss signature on a request Traefik had forwarded upstream (counted as
    /// client_error, not router_miss).
    pub signature_with_upstream: Counter,
    /// Router-miss decided on the headers because the body was not captured.
    pub signature_without_body: Counter,
    /// Client requests with a present but invalid Host.
    pub invalid_hosts: Counter,
    /// HTTP/2 streams that could not be classified.
    pub h2_unclassified: CounterFamily<Unclassified>,
    /// Connections currently tracked.
    pub connections: Gauge,
    /// Replicas whose series were removed after they left the target set.
    pub removed_replicas: Counter,
    /// Hosts no longer known whose series went before their grace period ended, because
    /// more hosts were lingering than are known (host churn).
    pub evicted_hosts: Counter,
    /// Request heads the semantic sensor copied, by what they were.
    pub request_heads: CounterFamily<HeadResult>,
    /// Exchanges whose User-Agent looked like a probe's but carried no tag this agent
    /// signed (counted as passive traffic).
    pub forged_probe_tags: Counter,
    /// Bytes of pipeline state accounted against the memory budget, by part.
    pub memory: GaugeFamily<MemoryPart>,
    /// The memory budget itself.
    pub memory_budget: Gauge,
    /// State dropped to stay within the budget or its age limit.
    pub shed: CounterFamily<Shed>,
}

impl PipelineMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = PipelineMetrics::default();
        let r = reg.sub_registry_with_prefix("pipeline");
        r.register(
            "events",
            "Events received from the sensor, by kind",
            m.events.clone(),
        );
        r.register(
            "parse_errors",
            "Captured data that could not be parsed as HTTP/1.x, by kind",
            m.parse_errors.clone(),
        );
        r.register(
            "truncated_heads",
            "Message heads cut short by the capture or the syscall",
            m.truncated_heads.clone(),
        );
        r.register(
            "unmatched_responses",
            "Responses with no request to pair with",
            m.unmatched_responses.clone(),
        );
        r.register(
            "unanswered_requests",
            "Requests whose connection closed before a response",
            m.unanswered_requests.clone(),
        );
        r.register(
            "evicted_connections",
            "Tracked connections dropped to bound memory",
            m.evicted_connections.clone(),
        );
        r.register(
            "pending_overflow",
            "Requests not tracked because too many were in flight on their connection",
            m.pending_overflow.clone(),
        );
        r.register(
            "skipped_data",
            "Data events not parsed as a new message",
            m.skipped_data.clone(),
        );
        r.register(
            "connection_anomalies",
            "Connection-level inconsistencies between kernel events",
            m.connection_anomalies.clone(),
        );
        r.register(
            "unknown_origin_events",
            "Events from processes that are not a known replica",
            m.unknown_origin_events.clone(),
        );
        r.register(
            "dropped_observations",
            "Observations that could not be attributed to a replica",
            m.dropped_observations.clone(),
        );
        r.register("signature_with_upstream", "Router-miss 404 signatures for requests Traefik had forwarded upstream (counted as client_error)", m.signature_with_upstream.clone());
        r.register(
            "signature_without_body",
            "Router-miss 404s decided on the headers because the body was not captured",
            m.signature_without_body.clone(),
        );
        r.register(
            "invalid_hosts",
            "Client requests with an invalid Host header",
            m.invalid_hosts.clone(),
        );
        r.register(
            "h2_unclassified",
            "HTTP/2 streams not classified (decoder out of sync, limits), by reason",
            m.h2_unclassified.clone(),
        );
        r.register(
            "connections",
            "Connections currently tracked",
            m.connections.clone(),
        );
        r.register(
            "removed_replicas",
            "Replicas whose series were removed after leaving the target set",
            m.removed_replicas.clone(),
        );
        r.register(
            "evicted_hosts",
            "Hosts no longer known whose series were removed before their grace period, as more were lingering than are known",
            m.evicted_hosts.clone(),
        );
        r.register(
            "forged_probe_tags",
            "Exchanges with a probe-looking User-Agent this agent did not sign, counted as passive traffic",
            m.forged_probe_tags.clone(),
        );
        r.register(
            "request_heads",
            "Request heads the semantic sensor copied for answers of 300 or more, by what they were",
            m.request_heads.clone(),
        );
        r.register(
            "memory_bytes",
            "Bytes of pipeline state (connections, waiting requests, buffers, series) accounted against the memory budget, by part",
            m.memory.clone(),
        );
        r.register(
            "memory_budget_bytes",
            "The pipeline's memory budget (--memory-budget)",
            m.memory_budget.clone(),
        );
        r.register(
            "shed",
            "Connections and waiting requests dropped to stay within the memory budget or the request age limit",
            m.shed.clone(),
        );
        m
    }
}
