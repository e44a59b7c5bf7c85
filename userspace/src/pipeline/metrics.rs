//! The pipeline's own health metrics (`routeskew_pipeline_*`): everything it dropped or
//! could not read. The pipeline registers them and increments them in place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::http::ParseError;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LegLabels {
    pub leg: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// Health of the post-sensor pipeline: everything it dropped or could not read.
#[derive(Clone)]
pub struct PipelineMetrics {
    /// Input events by kind (`data`, `closed`, `upstream_failure`).
    pub events: Family<KindLabels, Counter>,
    /// Captures that could not be parsed, by [`ParseError::kind`].
    pub parse_errors: Family<KindLabels, Counter>,
    /// Heads that did not end inside the capture.
    pub truncated_heads: Counter,
    /// Responses without a request to pair with (`client`, `upstream`).
    pub unmatched_responses: Family<LegLabels, Counter>,
    /// Requests whose connection closed before a response (`client`, `upstream`).
    pub unanswered_requests: Family<LegLabels, Counter>,
    /// Tracked connections dropped (`capacity`, `idle`).
    pub evicted_connections: Family<ReasonLabels, Counter>,
    /// Requests not tracked because a connection had too many in flight.
    pub pending_overflow: Counter,
    /// Data events not parsed (`after_upgrade`, `continuation`, `h2_desync`).
    pub skipped_data: Family<ReasonLabels, Counter>,
    /// Connection-level oddities (`reused_without_close`, `untracked_close`,
    /// `unseen_upgrade`, `interim_response`, `upstream_log_full`).
    pub connection_anomalies: Family<KindLabels, Counter>,
    /// Events whose process/cgroup is not a known replica.
    pub unknown_origin_events: Counter,
    /// Observations that could not be attributed to a replica (`unknown_origin`).
    pub dropped_observations: Family<ReasonLabels, Counter>,
    /// Router-miss signature on a request Traefik had forwarded upstream (counted as
    /// client_error, not router_miss).
    pub signature_with_upstream: Counter,
    /// Router-miss decided on the headers because the body was not captured.
    pub signature_without_body: Counter,
    /// Client requests with a present but invalid Host.
    pub invalid_hosts: Counter,
    /// HTTP/2 streams that could not be classified, by [`super::flows::h2::Reason`].
    pub h2_unclassified: Family<ReasonLabels, Counter>,
    /// Connections currently tracked.
    pub connections: Gauge,
    /// Replicas whose series were removed after they left the target set.
    pub removed_replicas: Counter,
}

impl PipelineMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = PipelineMetrics {
            events: Family::default(),
            parse_errors: Family::default(),
            truncated_heads: Counter::default(),
            unmatched_responses: Family::default(),
            unanswered_requests: Family::default(),
            evicted_connections: Family::default(),
            pending_overflow: Counter::default(),
            skipped_data: Family::default(),
            connection_anomalies: Family::default(),
            unknown_origin_events: Counter::default(),
            dropped_observations: Family::default(),
            signature_with_upstream: Counter::default(),
            signature_without_body: Counter::default(),
            invalid_hosts: Counter::default(),
            h2_unclassified: Family::default(),
            connections: Gauge::default(),
            removed_replicas: Counter::default(),
        };
        // Create every known series at zero so that rates work from the first increment.
        for kind in ["data", "closed", "upstream_failure"] {
            let _ = m.events.get_or_create(&KindLabels { kind });
        }
        for e in ParseError::ALL {
            let _ = m.parse_errors.get_or_create(&KindLabels { kind: e.kind() });
        }
        for leg in ["client", "upstream"] {
            let _ = m.unmatched_responses.get_or_create(&LegLabels { leg });
            let _ = m.unanswered_requests.get_or_create(&LegLabels { leg });
        }
        for reason in ["capacity", "idle"] {
            let _ = m
                .evicted_connections
                .get_or_create(&ReasonLabels { reason });
        }
        for r in super::flows::h2::Reason::ALL {
            let _ = m
                .h2_unclassified
                .get_or_create(&ReasonLabels { reason: r.as_str() });
        }
        for reason in ["after_upgrade", "continuation", "h2_desync"] {
            let _ = m.skipped_data.get_or_create(&ReasonLabels { reason });
        }
        for kind in [
            "reused_without_close",
            "untracked_close",
            "unseen_upgrade",
            "interim_response",
            "upstream_log_full",
        ] {
            let _ = m.connection_anomalies.get_or_create(&KindLabels { kind });
        }
        let _ = m.dropped_observations.get_or_create(&ReasonLabels {
            reason: "unknown_origin",
        });

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
        m
    }
}
