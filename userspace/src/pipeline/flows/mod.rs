//! Per-connection state: pairs the responses a Traefik process writes with the requests it
//! read, follows WebSocket upgrades to their close, and remembers which requests Traefik
//! forwarded upstream so that a router-miss 404 can be corroborated.
//!
//! A connection is keyed by `(tgid, fd)`, or `(tgid, *tls.Conn)` for TLS plaintext. Its
//! role is inferred from content and direction (see `http1::messages`). HTTP/2
//! connections (a Go TLS connection whose first read is the client preface) are followed
//! by [`h2`] instead, which yields the same exchanges; their state is kept apart and
//! bounded there.
//!
//! The sensor does not report upstream responses by default (they would be a quarter of
//! all events, and nothing is classified from them: the upstream request alone shows that
//! Traefik routed a request). Then
//! ([`FlowConfig::upstream_responses`] false) an upstream request is only a corroboration
//! record in its process's log: it is never pending, so it is never unanswered. Should
//! upstream responses arrive anyway, they are counted and still delimit messages (a `101`
//! switches the connection to WebSocket frames, a response to `HEAD` has no body) but are not
//! paired. With the flag on, upstream requests wait for their responses like client
//! requests do, and the unmatched/unanswered counts of the upstream leg are kept.
//!
//! Memory is bounded: at most `max_connections` connections (the least recently active one
//! is evicted), `max_pending_per_conn` requests in flight per connection, requests no
//! older than `max_request_age`, and a bounded log of upstream requests per process; and
//! all connections, waiting requests and buffers are charged to the pipeline's memory
//! budget ([`crate::pipeline::budget`]). Everything dropped on the way is counted in the
//! pipeline's health counters ([`PipelineMetrics`]), where it happens.
//!
//! This runs for every kernel event, so the common path allocates nothing: connections live
//! in a hash map with a fast hasher, recency is an append-only queue compacted now and then
//! (instead of a sorted set updated on every event), parsed messages go to a reused buffer,
//! and requests and responses keep their few strings inline.
//!
//! Rooms, downhill: [`exchange`] (what a flow produces), [`config`], `upstream_log`,
//! `http1` (HTTP/1.x connections), [`h2`] (HTTP/2 connections); this file dispatches.

pub mod config;
pub mod exchange;
pub mod h2;
mod http1;
#[cfg(test)]
mod tests;
mod upstream_log;

pub use config::FlowConfig;
pub use exchange::{ClientRequest, ConnKey, FlowEvent, Traffic};

use crate::event::{ConnId, Direction, Event, EventKind, Origin};
use crate::pipeline::budget::Budget;
use crate::pipeline::metrics::{Anomaly, InputKind, Leg, PipelineMetrics};
use h2::{H2Conns, H2Event};
use http1::{Http1, Sink};
use upstream_log::UpstreamLog;

pub struct Flows {
    cfg: FlowConfig,
    http1: Http1,
    h2: H2Conns<ConnKey>,
    /// Output of the h2 tracker for the record at hand; kept to reuse its allocation.
    h2_buf: Vec<H2Event>,
    upstream: UpstreamLog,
    /// What the connections of both kinds are charged to.
    budget: Budget,
    /// The pipeline's health counters, incremented where the event happens.
    metrics: PipelineMetrics,
    traffic: Traffic,
}

impl Flows {
    /// `metrics`: the pipeline's health counters, which the tracker increments;
    /// `budget`: what its connections and waiting requests are charged to.
    pub fn new(cfg: FlowConfig, metrics: PipelineMetrics, budget: Budget) -> Self {
        Flows {
            http1: Http1::new(cfg.clone(), metrics.clone(), budget.clone()),
            h2: H2Conns::new(
                h2::MAX_CONNECTIONS.min(cfg.max_connections),
                metrics.clone(),
                budget.clone(),
            ),
            budget,
            h2_buf: Vec::new(),
            upstream: UpstreamLog::default(),
            metrics,
            traffic: Traffic::default(),
            cfg,
        }
    }

    /// Messages read so far (HTTP/2 exchanges included).
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The HTTP/2 tracker's own tallies.
    #[cfg(test)]
    pub(crate) fn h2_traffic(&self) -> &h2::H2Traffic {
        self.h2.traffic()
    }

    /// Connections currently tracked (HTTP/1 and HTTP/2).
    pub fn connections(&self) -> usize {
        self.http1.len() + self.h2.len()
    }

    pub fn handle(&mut self, ev: &Event, out: &mut Vec<FlowEvent>) {
        match &ev.kind {
            EventKind::Data {
                conn,
                direction,
                total_len,
                bytes,
            } => {
                self.metrics.events.inc(InputKind::Data);
                let key = (ev.origin.tgid, *conn);
                let h2 = matches!(conn, ConnId::GoTls(_))
                    && self
                        .on_h2_data(ev.ts_ns, ev.origin, key, *direction, *total_len, bytes, out);
                if !h2 {
                    let mut sink = Sink {
                        events: out,
                        upstream: &mut self.upstream,
                        traffic: &mut self.traffic,
                    };
                    self.http1.on_data(
                        ev.ts_ns, ev.origin, key, *direction, *total_len, bytes, &mut sink,
                    );
                }
            }
            EventKind::Closed { conn, upgraded } => {
                self.metrics.events.inc(InputKind::Closed);
                self.on_close(ev.ts_ns, ev.origin, *conn, *upgraded, out);
            }
            EventKind::UpstreamFailure { reason, .. } => {
                self.metrics.events.inc(InputKind::UpstreamFailure);
                out.push(FlowEvent::UpstreamFailure {
                    origin: ev.origin,
                    reason: *reason,
                    ts_ns: ev.ts_ns,
                });
            }
            // Not socket events: the pipeline settles the prober's events and the
            // semantic sensor's counts and heads before flows.
            EventKind::Probe(_)
            | EventKind::ProbeVerdict(_)
            | EventKind::RouterInventory { .. }
            | EventKind::Responses(_)
            | EventKind::Head(_)
            | EventKind::WsClosed { .. } => {}
        }
        self.publish_connections();
    }

    /// Sets the `connections` gauge when the count changed (a load on the common path).
    fn publish_connections(&self) {
        let now = i64::try_from(self.connections()).unwrap_or(i64::MAX);
        if self.metrics.connections.get() != now {
            self.metrics.connections.set(now);
        }
    }

    /// Expire idle connections, requests waiting longer than the age limit and old
    /// upstream-log entries. `now_ns` is CLOCK_MONOTONIC, like event timestamps.
    pub fn tick(&mut self, now_ns: u64) {
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let horizon = now_ns.saturating_sub(nanos(self.cfg.idle_timeout));
        let cutoff = now_ns.saturating_sub(nanos(self.cfg.max_request_age));
        self.http1.expire(horizon, cutoff);
        self.h2.shed_aged(cutoff);
        let mut h2_out = std::mem::take(&mut self.h2_buf);
        h2_out.clear();
        if !self.h2.is_empty() {
            self.h2.expire(horizon, &mut h2_out);
            // Nothing to report from expiry but unanswered requests (never WebSocket
            // resets: an idle connection did not reset anything).
            for ev in h2_out.drain(..) {
                if let H2Event::Unanswered { .. } = ev {
                    self.metrics.unanswered_requests.inc(Leg::Client);
                }
            }
        }
        self.h2_buf = h2_out;
        self.upstream.expire(horizon);
        self.publish_connections();
    }

    /// Data of an HTTP/2 connection, or the preface that starts one. Returns false when
    /// the connection is not HTTP/2.
    #[expect(
        clippy::too_many_arguments,
        reason = "one event's fields, split by the caller's match"
    )]
    fn on_h2_data(
        &mut self,
        ts: u64,
        origin: Origin,
        key: ConnKey,
        dir: Direction,
        total_len: u64,
        bytes: &[u8],
        out: &mut Vec<FlowEvent>,
    ) -> bool {
        let preface = dir == Direction::Read && bytes.starts_with(h2::PREFACE);
        if !preface && self.h2.is_empty() {
            return false;
        }
        let mut h2_out = std::mem::take(&mut self.h2_buf);
        h2_out.clear();
        if preface {
            // A *tls.Conn address reused without its Close seen ends the old connection.
            if let Some(pending) = self.http1.forget(key) {
                self.metrics
                    .connection_anomalies
                    .inc(Anomaly::ReusedWithoutClose);
                self.metrics
                    .unanswered_requests
                    .inc_by(Leg::Client, pending as u64);
            }
            self.make_room(h2::conn_cost::<ConnKey>());
            self.h2.open(key, ts, &mut h2_out);
        }
        let d = match dir {
            Direction::Read => h2::READ,
            Direction::Write => h2::WRITE,
        };
        let tracked = self.h2.feed(key, d, ts, bytes, total_len, &mut h2_out);
        if tracked {
            self.emit_h2(key, origin, &mut h2_out, out);
        }
        self.h2_buf = h2_out;
        tracked
    }

    /// Evicts the least recently active connections, HTTP/1 or HTTP/2, until `bytes` fit
    /// in the budget or none is left.
    fn make_room(&mut self, bytes: usize) {
        while !self.budget.fits(bytes) {
            let h1 = self.http1.oldest();
            let h2 = self.h2.oldest().map(|(_, t)| t);
            let evicted = match (h1, h2) {
                (Some(a), Some(b)) if b < a => self.h2.evict_oldest(true),
                (Some(_), _) => self.http1.evict_oldest(),
                (None, Some(_)) => self.h2.evict_oldest(true),
                (None, None) => false,
            };
            if !evicted {
                return;
            }
        }
    }

    /// Turns what the h2 tracker ended into flow events, as for HTTP/1.
    fn emit_h2(
        &mut self,
        key: ConnKey,
        origin: Origin,
        events: &mut Vec<H2Event>,
        out: &mut Vec<FlowEvent>,
    ) {
        for ev in events.drain(..) {
            match ev {
                H2Event::Exchange {
                    request,
                    response,
                    ts_ns,
                } => {
                    self.traffic.client_requests += 1;
                    self.traffic.client_responses += 1;
                    let upstream_seen =
                        response.status == 404 && self.upstream.seen(key.0, &request, ts_ns);
                    out.push(FlowEvent::Exchange {
                        origin,
                        request,
                        response,
                        response_ts_ns: ts_ns,
                        upstream_seen,
                    });
                }
                H2Event::Unanswered { request, ts_ns } => {
                    self.traffic.client_requests += 1;
                    if request.websocket {
                        out.push(FlowEvent::WsReset {
                            origin,
                            request,
                            ts_ns,
                        });
                    } else {
                        self.metrics.unanswered_requests.inc(Leg::Client);
                    }
                }
            }
        }
    }

    fn on_close(
        &mut self,
        ts: u64,
        origin: Origin,
        conn: ConnId,
        kernel_upgraded: bool,
        out: &mut Vec<FlowEvent>,
    ) {
        let key = (origin.tgid, conn);
        let mut h2_out = std::mem::take(&mut self.h2_buf);
        h2_out.clear();
        let h2 = self.h2.close(key, ts, &mut h2_out);
        if h2 {
            self.emit_h2(key, origin, &mut h2_out, out);
        }
        self.h2_buf = h2_out;
        if h2 {
            return;
        }
        let mut sink = Sink {
            events: out,
            upstream: &mut self.upstream,
            traffic: &mut self.traffic,
        };
        self.http1.on_close(ts, key, kernel_upgraded, &mut sink);
    }
}
