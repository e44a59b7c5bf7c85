//! HTTP/1.x connections: each syscall's bytes are cut into messages (heads joined across
//! syscalls, bodies skipped), client requests wait for Traefik's responses in order,
//! upstream requests go to the upstream log, and WebSocket upgrades are followed to their
//! close.
//!
//! Rooms: [`conn`] (the connections and their bounded table), `messages` (what each
//! message does to its connection).

mod conn;
mod messages;

use crate::event::{Direction, Origin};
use crate::pipeline::budget::Budget;
use crate::pipeline::flows::config::FlowConfig;
use crate::pipeline::flows::exchange::{ConnKey, FlowEvent, Traffic};
use crate::pipeline::flows::upstream_log::UpstreamLog;
use crate::pipeline::http::{self, Message, Tail};
use crate::pipeline::metrics::{Anomaly, Eviction, Leg, PipelineMetrics, Shed, Skip};
use conn::{ConnTable, Evicted, Expect, Upgraded, MAX_STASH};
#[cfg(test)]
pub(super) use conn::{AGE_SLACK, CONN_COST as CONN_COST_FOR_TESTS};

/// Where the HTTP/1 tracker's results go, shared with the HTTP/2 side of the flow
/// tracker: flow events, the upstream-request log and the message tallies.
pub(super) struct Sink<'a> {
    pub(super) events: &'a mut Vec<FlowEvent>,
    pub(super) upstream: &'a mut UpstreamLog,
    pub(super) traffic: &'a mut Traffic,
}

pub(super) struct Http1 {
    cfg: FlowConfig,
    table: ConnTable,
    /// Parsed messages of the syscall at hand; kept to reuse its allocation.
    msg_buf: Vec<Message>,
    /// The pipeline's health counters, incremented where the event happens.
    metrics: PipelineMetrics,
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

impl Http1 {
    pub(super) fn new(cfg: FlowConfig, metrics: PipelineMetrics, budget: Budget) -> Self {
        Http1 {
            cfg,
            table: ConnTable::new(budget),
            msg_buf: Vec::new(),
            metrics,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// Stops following `key` (its address now carries another connection): how many
    /// client requests were waiting on it.
    pub(super) fn forget(&mut self, key: ConnKey) -> Option<usize> {
        self.table.remove(key).map(|c| c.pending.len())
    }

    /// Whether `key` is followed (tests).
    #[cfg(test)]
    pub(super) fn tracks(&self, key: &ConnKey) -> bool {
        self.table.contains(key)
    }

    /// Bytes held by stashed heads (tests).
    #[cfg(test)]
    pub(super) fn stash_bytes(&self) -> usize {
        self.table.stash_bytes()
    }

    /// Entries of the recency queue, live and stale (tests).
    #[cfg(test)]
    pub(super) fn queue_len(&self) -> usize {
        self.table.queue_len()
    }

    /// Forgets connections idle since before `horizon`, and sheds requests that have
    /// waited since before `cutoff`.
    pub(super) fn expire(&mut self, horizon: u64, cutoff: u64) {
        let (expired, requests) = self.table.expire(horizon);
        self.metrics
            .evicted_connections
            .inc_by(Eviction::Idle, expired);
        self.metrics.shed.inc_by(Shed::RequestEvicted, requests);
        let aged = self.table.shed_aged(cutoff);
        self.metrics.shed.inc_by(Shed::RequestAged, aged);
    }

    fn count_evicted(&self, e: Evicted) {
        let m = &self.metrics;
        m.evicted_connections.inc_by(Eviction::Capacity, e.capacity);
        m.evicted_connections.inc_by(Eviction::Budget, e.budget);
        m.shed
            .inc_by(Shed::Connection, e.budget + u64::from(e.refused));
        m.shed.inc_by(Shed::RequestEvicted, e.requests);
    }

    /// When the least recently active connection was last active.
    pub(super) fn oldest(&mut self) -> Option<u64> {
        self.table.oldest()
    }

    /// Drops the least recently active connection to make room for another kind of
    /// state (counted as shed). False when none is followed.
    pub(super) fn evict_oldest(&mut self) -> bool {
        let Some(requests) = self.table.evict_oldest() else {
            return false;
        };
        self.count_evicted(Evicted {
            budget: 1,
            requests,
            ..Evicted::default()
        });
        true
    }

    /// One syscall's capture: `bytes` of the `total_len` transferred in direction `dir`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one event's fields, split by the caller's match"
    )]
    pub(super) fn on_data(
        &mut self,
        ts: u64,
        origin: Origin,
        key: ConnKey,
        dir: Direction,
        total_len: u64,
        bytes: &[u8],
        sink: &mut Sink<'_>,
    ) {
        let d = dir_index(dir);
        if let Some(c) = self.table.get(&key) {
            if c.upgraded.is_some() {
                if http::looks_like_message_start(bytes) {
                    // Frames never look like this; the fd must have been closed and reused
                    // without us seeing the Close.
                    self.metrics
                        .connection_anomalies
                        .inc(Anomaly::ReusedWithoutClose);
                    self.table.remove(key);
                } else {
                    self.metrics.skipped_data.inc(Skip::AfterUpgrade);
                    self.table.touch(key, ts);
                    return;
                }
            }
        }

        // A head that an earlier syscall left incomplete continues here: the next bytes
        // read (or written) on a stream are its continuation, whatever they look like.
        let joined;
        let (bytes, total_len) = match self.table.take_stash(key, d) {
            Some(mut head) if head.len() + bytes.len() <= MAX_STASH => {
                let total = head.len() as u64 + total_len;
                head.extend_from_slice(bytes);
                self.metrics.skipped_data.inc(Skip::Continuation);
                joined = head;
                (&joined[..], total)
            }
            Some(head) => {
                self.flush_stash(key, dir, ts, head, sink);
                if self.table.get(&key).is_some_and(|c| c.upgraded.is_some()) {
                    self.metrics.skipped_data.inc(Skip::AfterUpgrade);
                    return;
                }
                (bytes, total_len)
            }
            None => (bytes, total_len),
        };

        // Work out where, if anywhere, a new message starts in this syscall.
        let mut skip = 0u64;
        if let Some(c) = self.table.get_mut(&key) {
            match c.expect[d] {
                Expect::Message => {}
                Expect::Body(n) if n >= total_len => {
                    c.expect[d] = if n == total_len {
                        Expect::Message
                    } else {
                        Expect::Body(n - total_len)
                    };
                    self.metrics.skipped_data.inc(Skip::Continuation);
                    self.table.touch(key, ts);
                    return;
                }
                Expect::Body(n) => {
                    skip = n;
                    c.expect[d] = Expect::Message;
                }
                Expect::Continuation => {
                    if !http::looks_like_message_start(bytes) {
                        self.metrics.skipped_data.inc(Skip::Continuation);
                        self.table.touch(key, ts);
                        return;
                    }
                }
            }
        }
        let Ok(skip_usize) = usize::try_from(skip) else {
            return;
        };
        if skip_usize >= bytes.len() {
            // The next message starts beyond what was captured.
            self.metrics.skipped_data.inc(Skip::Continuation);
            if let Some(c) = self.table.get_mut(&key) {
                c.expect[d] = Expect::Continuation;
            }
            self.table.touch(key, ts);
            return;
        }
        let rest = &bytes[skip_usize..];
        let mut messages = std::mem::take(&mut self.msg_buf);
        messages.clear();
        let parsed = match http::parse_into(rest, total_len - skip, &mut messages) {
            Ok(p) => p,
            // A followed connection's next message whose first syscall ended before a
            // whole start line: like a pipelined message cut there, it continues in the
            // next syscall. (An untracked connection is not followed from such bytes.)
            Err(http::ParseError::TooShort)
                if rest.len() as u64 == total_len - skip
                    && self.table.contains(&key)
                    && self.table.stash_fits(rest.len()) =>
            {
                self.msg_buf = messages;
                self.table.touch(key, ts);
                self.table.stash(key, d, rest.to_vec());
                return;
            }
            Err(e) => {
                self.msg_buf = messages;
                self.metrics.parse_errors.inc(e);
                // Do not keep state for connections that never carried HTTP.
                if let Some(c) = self.table.get_mut(&key) {
                    c.expect[d] = Expect::Continuation;
                    self.table.touch(key, ts);
                }
                return;
            }
        };
        if let Some(e) = parsed.error {
            self.metrics.parse_errors.inc(e);
        }
        if self.table.contains(&key) {
            self.table.touch(key, ts);
        } else {
            let evicted = self.table.insert(key, origin, ts, self.cfg.max_connections);
            self.count_evicted(evicted);
            if evicted.refused {
                self.msg_buf = messages;
                return;
            }
        }

        // Keep an incomplete last head aside until the next syscall completes it.
        let mut stashed = None;
        if let (Tail::HeadIncomplete, Some(at)) = (parsed.tail, parsed.incomplete_at) {
            let len = rest.len() - at;
            if self.table.stash_fits(len) {
                if parsed.incomplete_parsed {
                    messages.pop();
                }
                stashed = Some(rest[at..].to_vec());
            }
        }
        let tail = parsed.tail;
        let (upgraded, head_response) = self.process(key, dir, ts, &mut messages, sink);
        self.msg_buf = messages;
        if upgraded {
            return;
        }
        if let Some(c) = self.table.get_mut(&key) {
            c.expect[d] = match (tail, head_response) {
                // A response to HEAD announces a length but sends no body.
                (Tail::Body(_), true) => Expect::Message,
                (t, _) => t.into(),
            };
        }
        if let Some(head) = stashed {
            self.table.stash(key, d, head);
        }
    }

    /// Give up waiting for the rest of a stashed head and use what it has.
    fn flush_stash(
        &mut self,
        key: ConnKey,
        dir: Direction,
        ts: u64,
        head: Vec<u8>,
        sink: &mut Sink<'_>,
    ) {
        let mut messages = std::mem::take(&mut self.msg_buf);
        messages.clear();
        if http::parse_into(&head, head.len() as u64, &mut messages).is_ok() {
            self.process(key, dir, ts, &mut messages, sink);
        }
        self.msg_buf = messages;
    }

    /// Apply parsed messages to the connection (draining `messages`). Returns whether the
    /// connection is now upgraded and whether the last message was a response to a HEAD
    /// request.
    fn process(
        &mut self,
        key: ConnKey,
        dir: Direction,
        ts: u64,
        messages: &mut Vec<Message>,
        sink: &mut Sink<'_>,
    ) -> (bool, bool) {
        let mut head_response = false;
        for msg in messages.drain(..) {
            let upgraded;
            (upgraded, head_response) = match (dir, msg) {
                (Direction::Read, Message::Request(r)) => {
                    self.on_client_request(key, ts, &r, sink);
                    (false, false)
                }
                (Direction::Write, Message::Response(r)) => {
                    self.on_client_response(key, ts, r, sink)
                }
                (Direction::Write, Message::Request(r)) => {
                    self.on_upstream_request(key, ts, &r, sink);
                    (false, false)
                }
                (Direction::Read, Message::Response(r)) => {
                    self.on_upstream_response(key, ts, &r, sink)
                }
            };
            if upgraded {
                // Whatever follows the 101 in this syscall is WebSocket frames.
                return (true, false);
            }
        }
        (false, head_response)
    }

    /// The connection closed: heads still waiting for their rest are used, an upgraded
    /// connection's life is judged, and requests still waiting are unanswered.
    pub(super) fn on_close(
        &mut self,
        ts: u64,
        key: ConnKey,
        kernel_upgraded: bool,
        sink: &mut Sink<'_>,
    ) {
        for dir in [Direction::Read, Direction::Write] {
            if let Some(head) = self.table.take_stash(key, dir_index(dir)) {
                self.flush_stash(key, dir, ts, head, sink);
            }
        }
        let Some(c) = self.table.remove(key) else {
            self.metrics
                .connection_anomalies
                .inc(Anomaly::UntrackedClose);
            if kernel_upgraded {
                self.metrics
                    .connection_anomalies
                    .inc(Anomaly::UnseenUpgrade);
            }
            return;
        };
        match c.upgraded.map(|u| *u) {
            Some(Upgraded {
                at_ns,
                request: Some(request),
            }) => {
                let open_ns = ts.saturating_sub(at_ns);
                if u128::from(open_ns) < self.cfg.ws_early_close.as_nanos() {
                    sink.events.push(FlowEvent::WsEarlyClose {
                        origin: c.origin,
                        request,
                        open_ns,
                    });
                }
            }
            Some(Upgraded { request: None, .. }) => {}
            // An upstream WebSocket connection whose 101 the sensor does not report: the
            // kernel's mark is what was expected, not an anomaly.
            None if kernel_upgraded && !self.cfg.upstream_responses && c.upstream_last_ws => {}
            None if kernel_upgraded => self
                .metrics
                .connection_anomalies
                .inc(Anomaly::UnseenUpgrade),
            None => {}
        }
        for request in c.pending {
            if request.websocket {
                sink.events.push(FlowEvent::WsReset {
                    origin: c.origin,
                    request,
                    ts_ns: ts,
                });
            } else {
                self.metrics.unanswered_requests.inc(Leg::Client);
            }
        }
        self.metrics
            .unanswered_requests
            .inc_by(Leg::Upstream, c.upstream_pending.len() as u64);
    }
}
