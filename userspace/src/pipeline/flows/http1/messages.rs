//! What each HTTP/1 message does to its connection, by leg:
//!
//! | direction | message  | leg                                   |
//! |-----------|----------|---------------------------------------|
//! | Read      | request  | a client's request to Traefik         |
//! | Write     | response | Traefik's answer to that client       |
//! | Write     | request  | Traefik's request to an upstream      |
//! | Read      | response | the upstream's answer                 |

use super::conn::{Admit, Upgraded};
use super::{Http1, Sink};
use crate::hosts::Host;
use crate::pipeline::flows::exchange::{ConnKey, FlowEvent};
use crate::pipeline::http::{Method, RequestHead, ResponseHead};
use crate::pipeline::metrics::{Anomaly, Leg, Shed};

impl Http1 {
    /// Counts a truncated head, and an interim (1xx but 101) response, which answers no
    /// request: only a final response goes on.
    fn is_final(&self, r: &ResponseHead) -> bool {
        if r.truncated {
            self.metrics.truncated_heads.inc();
        }
        if r.is_interim() {
            self.metrics
                .connection_anomalies
                .inc(Anomaly::InterimResponse);
            return false;
        }
        true
    }

    pub(super) fn on_client_request(
        &mut self,
        key: ConnKey,
        ts: u64,
        r: &RequestHead,
        sink: &mut Sink<'_>,
    ) {
        sink.traffic.client_requests += 1;
        if r.truncated {
            self.metrics.truncated_heads.inc();
        }
        if r.host == Host::Invalid {
            self.metrics.invalid_hosts.inc();
        }
        let max = self.cfg.max_pending_per_conn.max(1);
        match self.table.push_pending(key, ts, r, max) {
            Admit::Waiting | Admit::Untracked => {}
            // Dropping the newest keeps the older requests paired with the right responses.
            Admit::Overflow => {
                self.metrics.pending_overflow.inc();
            }
            Admit::Refused(n) => {
                self.metrics.shed.inc_by(Shed::RequestRefused, n);
            }
        }
    }

    /// Returns (connection upgraded, response to a HEAD request).
    pub(super) fn on_client_response(
        &mut self,
        key: ConnKey,
        ts: u64,
        r: ResponseHead,
        sink: &mut Sink<'_>,
    ) -> (bool, bool) {
        if !self.is_final(&r) {
            return (false, false);
        }
        sink.traffic.client_responses += 1;
        let Some(c) = self.table.get_mut(&key) else {
            return (false, false);
        };
        let origin = c.origin;
        if c.shed_responses > 0 {
            // The answer to a request shed while it waited (counted then).
            c.shed_responses -= 1;
            let upgraded = r.status == 101;
            if upgraded {
                c.upgraded = Some(Box::new(Upgraded {
                    at_ns: ts,
                    request: None,
                }));
                c.pending.clear();
            }
            return (upgraded, false);
        }
        let Some(request) = c.pending.pop_front() else {
            self.metrics.unmatched_responses.inc(Leg::Client);
            return (false, false);
        };
        let upgraded = r.status == 101;
        if upgraded {
            c.upgraded = Some(Box::new(Upgraded {
                at_ns: ts,
                // Early closes are a WebSocket notion; an h2c upgrade is only followed.
                request: request.websocket.then(|| request.clone()),
            }));
            // Requests pipelined behind an upgrade are never answered over HTTP.
            self.metrics
                .unanswered_requests
                .inc_by(Leg::Client, c.pending.len() as u64);
            c.pending.clear();
        }
        let head = request.method == Method::Head;
        let upstream_seen = r.status == 404 && sink.upstream.seen(key.0, &request, ts);
        sink.events.push(FlowEvent::Exchange {
            origin,
            request,
            response: r,
            response_ts_ns: ts,
            upstream_seen,
        });
        (upgraded, head)
    }

    pub(super) fn on_upstream_request(
        &mut self,
        key: ConnKey,
        ts: u64,
        r: &RequestHead,
        sink: &mut Sink<'_>,
    ) {
        sink.traffic.upstream_requests += 1;
        if r.truncated {
            self.metrics.truncated_heads.inc();
        }
        let max = self.cfg.max_pending_per_conn.max(1);
        if let Some(c) = self.table.get_mut(&key) {
            c.upstream_last_head = r.method == Method::Head;
            c.upstream_last_ws = r.websocket;
            if self.cfg.upstream_responses
                && !self.table.push_upstream(key, r.method == Method::Head, max)
            {
                self.metrics.pending_overflow.inc();
            }
        }
        if !sink.upstream.record(key.0, ts, r) {
            self.metrics
                .connection_anomalies
                .inc(Anomaly::UpstreamLogFull);
        }
    }

    /// Returns (connection upgraded, response to a HEAD request).
    pub(super) fn on_upstream_response(
        &mut self,
        key: ConnKey,
        ts: u64,
        r: &ResponseHead,
        sink: &mut Sink<'_>,
    ) -> (bool, bool) {
        if !self.is_final(r) {
            return (false, false);
        }
        sink.traffic.upstream_responses += 1;
        let Some(c) = self.table.get_mut(&key) else {
            return (false, false);
        };
        let head = if self.cfg.upstream_responses {
            let Some(head) = c.upstream_pending.pop_front() else {
                self.metrics.unmatched_responses.inc(Leg::Upstream);
                return (false, false);
            };
            head
        } else {
            // Not tracked: frame it after the last request written.
            c.upstream_last_head
        };
        if r.status == 101 {
            c.upgraded = Some(Box::new(Upgraded {
                at_ns: ts,
                request: None,
            }));
            return (true, false);
        }
        (false, head)
    }
}
