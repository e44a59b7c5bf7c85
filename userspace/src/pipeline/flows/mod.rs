//! Per-connection state: pairs the responses a Traefik process writes with the requests it
//! read, follows WebSocket upgrades to their close, and remembers which requests Traefik
//! forwarded upstream so that a router-miss 404 can be corroborated.
//!
//! A connection is keyed by `(tgid, fd)`, or `(tgid, *tls.Conn)` for TLS plaintext. Its role is inferred from content and direction:
//!
//! | direction | message  | leg                                   |
//! |-----------|----------|---------------------------------------|
//! | Read      | request  | a client's request to Traefik         |
//! | Write     | response | Traefik's answer to that client       |
//! | Write     | request  | Traefik's request to an upstream      |
//! | Read      | response | the upstream's answer                 |
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
//! is evicted), `max_pending_per_conn` requests in flight per connection, and a bounded log
//! of upstream requests per process. Everything dropped on the way is counted in
//! [`FlowStats`].
//!
//! HTTP/2 connections (a Go TLS connection whose first read is the client preface) are
//! followed by [`h2`] instead, which yields the same exchanges; their state is kept apart
//! and bounded there.
//!
//! This runs for every kernel event, so the common path allocates nothing: connections live
//! in a hash map with a fast hasher, recency is an append-only queue compacted now and then
//! (instead of a sorted set updated on every event), parsed messages go to a reused buffer,
//! and requests and responses keep their few strings inline.

pub mod h2;

use std::collections::VecDeque;
use std::time::Duration;

use crate::event::{ConnId, Direction, Event, EventKind, Origin, UpstreamFailureReason};
use crate::hosts::Host;
use crate::pipeline::http::{self, Message, Method, RequestHead, ResponseHead, Tail};
use crate::pipeline::metrics::{Anomaly, Eviction, InputKind, Leg, PipelineMetrics, Skip};
use h2::{H2Conns, H2Event, H2Traffic};

/// Upstream requests remembered per process for corroboration.
const MAX_UPSTREAM_LOG: usize = 4096;
/// Processes with an upstream log; more would mean we watch far more than Traefik replicas.
const MAX_UPSTREAM_PROCESSES: usize = 1024;
/// Largest head kept across syscalls (the sensor captures about 1 KiB per syscall).
const MAX_STASH: usize = 4096;
/// All stashed heads together; slow clients on many connections must not grow memory.
const MAX_STASH_TOTAL: usize = 8 << 20;
/// Stale entries the recency queue may hold beyond one per connection before it is
/// compacted.
const AGE_SLACK: usize = 1024;

#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub ws_early_close: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_pending_per_conn: usize,
    /// The sensor reports upstream responses: pair them with upstream requests and count
    /// the upstream leg's unmatched responses and unanswered requests. Off (the sensor's
    /// default), upstream requests are corroboration records only.
    pub upstream_responses: bool,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            ws_early_close: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 65_536,
            max_pending_per_conn: 64,
            upstream_responses: false,
        }
    }
}

/// What is kept of a client request while it waits for its response. No path, no headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    pub ts_ns: u64,
    pub method: Method,
    pub host: Host,
    pub target: u64,
    pub websocket: bool,
    pub probe: bool,
    pub probe_ref: http::ProbeRef,
}

impl ClientRequest {
    fn from_head(ts_ns: u64, r: &RequestHead) -> Self {
        ClientRequest {
            ts_ns,
            method: r.method,
            host: r.host.clone(),
            target: r.target,
            websocket: r.websocket,
            probe: r.probe,
            probe_ref: r.probe_ref,
        }
    }
}

/// Output of the flow tracker, input of the classifier.
// `Exchange` is both the large and the common variant: boxing it would allocate once per
// response, which is what the inline response head avoids.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEvent {
    /// Traefik answered a client request.
    Exchange {
        origin: Origin,
        request: ClientRequest,
        response: ResponseHead,
        response_ts_ns: u64,
        /// Traefik wrote an upstream request with the same host and method+path between
        /// the client request and this response. Only computed for 404s, the one status
        /// where it matters.
        upstream_seen: bool,
    },
    /// A WebSocket upgrade request whose connection closed before any response.
    WsReset {
        origin: Origin,
        request: ClientRequest,
        ts_ns: u64,
    },
    /// An upgraded connection that closed within the early-close window.
    WsEarlyClose {
        origin: Origin,
        request: ClientRequest,
        open_ns: u64,
    },
    UpstreamFailure {
        origin: Origin,
        reason: UpstreamFailureReason,
        ts_ns: u64,
    },
}

impl FlowEvent {
    /// The client request the event is about, if any.
    pub fn request(&self) -> Option<&ClientRequest> {
        match self {
            FlowEvent::Exchange { request, .. }
            | FlowEvent::WsReset { request, .. }
            | FlowEvent::WsEarlyClose { request, .. } => Some(request),
            FlowEvent::UpstreamFailure { .. } => None,
        }
    }
}

/// Messages the tracker read, for logs and tests (not exported: what it dropped or
/// could not read is in the pipeline's health counters, incremented in place). Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub client_requests: u64,
    pub client_responses: u64,
    pub upstream_requests: u64,
    pub upstream_responses: u64,
    /// HTTP/2 connections (see [`h2`]).
    pub h2: H2Traffic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The next data starts a message.
    Message,
    /// This many bytes of body first.
    Body(u64),
    /// Data that does not look like a message start continues the previous one.
    Continuation,
}

impl From<Tail> for Expect {
    fn from(t: Tail) -> Self {
        match t {
            Tail::Complete => Expect::Message,
            Tail::Body(n) => Expect::Body(n),
            Tail::Chunked | Tail::UntilClose | Tail::HeadIncomplete | Tail::Unknown => {
                Expect::Continuation
            }
        }
    }
}

#[derive(Debug)]
struct Upgraded {
    at_ns: u64,
    /// The client request that was upgraded; `None` on an upstream connection.
    request: Option<ClientRequest>,
}

#[derive(Debug)]
struct Conn {
    origin: Origin,
    last_seen: u64,
    /// Tag of this connection's live entry in [`Flows::age`].
    age_seq: u64,
    /// Client requests waiting for Traefik's response, oldest first.
    pending: VecDeque<ClientRequest>,
    /// With [`FlowConfig::upstream_responses`]: upstream requests waiting for the
    /// upstream's response, whether each was a HEAD.
    upstream_pending: VecDeque<bool>,
    /// The last upstream request written was a HEAD: how to frame a response that arrives
    /// when upstream requests are not tracked (Go's transport never pipelines, so the last
    /// request is the one being answered).
    upstream_last_head: bool,
    /// The last upstream request written asked for a WebSocket upgrade, whose 101 is not
    /// reported when upstream responses are off.
    upstream_last_ws: bool,
    /// Rare, and large next to the rest: boxed.
    upgraded: Option<Box<Upgraded>>,
    /// Indexed by direction: 0 = Read, 1 = Write.
    expect: [Expect; 2],
    /// A head the last syscall in that direction ended in the middle of.
    stash: [Option<Vec<u8>>; 2],
}

impl Conn {
    fn stash_len(&self) -> usize {
        self.stash.iter().flatten().map(Vec::len).sum()
    }

    fn new(origin: Origin, ts: u64, age_seq: u64) -> Self {
        Conn {
            origin,
            last_seen: ts,
            age_seq,
            pending: VecDeque::new(),
            upstream_pending: VecDeque::new(),
            upstream_last_head: false,
            upstream_last_ws: false,
            upgraded: None,
            expect: [Expect::Message; 2],
            stash: [None, None],
        }
    }
}

type ConnKey = (u32, ConnId);

#[derive(Debug, Clone, Copy)]
struct UpstreamEntry {
    ts_ns: u64,
    target: u64,
    host: u64,
    forwarded_host: u64,
}

pub struct Flows {
    cfg: FlowConfig,
    conns: foldhash::HashMap<ConnKey, Conn>,
    /// Connections in order of their last activity, oldest first, as `(tag, key)`: every
    /// time a connection is active an entry is appended and the connection remembers its
    /// tag, so only the entry carrying the connection's current tag is live and the first
    /// live entry is the least recently active connection. Stale entries are skipped when
    /// met at the front and dropped in bulk when they outnumber the live ones. (Timestamps
    /// from different CPUs can be slightly out of order; the queue follows arrival order.)
    age: VecDeque<(u64, ConnKey)>,
    next_age_seq: u64,
    upstream_log: foldhash::HashMap<u32, VecDeque<UpstreamEntry>>,
    stash_bytes: usize,
    /// Parsed messages of the syscall at hand; kept to reuse its allocation.
    msg_buf: Vec<Message>,
    h2: H2Conns<ConnKey>,
    /// Output of the h2 tracker for the record at hand; kept to reuse its allocation.
    h2_buf: Vec<H2Event>,
    /// The pipeline's health counters, incremented where the event happens.
    metrics: PipelineMetrics,
    traffic: Traffic,
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Read => 0,
        Direction::Write => 1,
    }
}

impl Flows {
    /// `metrics`: the pipeline's health counters, which the tracker increments.
    pub fn new(cfg: FlowConfig, metrics: PipelineMetrics) -> Self {
        Flows {
            conns: foldhash::HashMap::default(),
            age: VecDeque::new(),
            next_age_seq: 0,
            upstream_log: foldhash::HashMap::default(),
            stash_bytes: 0,
            msg_buf: Vec::new(),
            h2: H2Conns::new(
                h2::MAX_CONNECTIONS.min(cfg.max_connections),
                metrics.clone(),
            ),
            h2_buf: Vec::new(),
            metrics,
            traffic: Traffic::default(),
            cfg,
        }
    }

    /// Messages read so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            h2: *self.h2.traffic(),
            ..self.traffic
        }
    }

    /// Connections currently tracked (HTTP/1 and HTTP/2).
    pub fn connections(&self) -> usize {
        self.conns.len() + self.h2.len()
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
                self.on_data(
                    ev.ts_ns, ev.origin, *conn, *direction, *total_len, bytes, out,
                );
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
            // Not socket events: the pipeline settles the prober's events before flows.
            EventKind::Probe(_)
            | EventKind::ProbeVerdict(_)
            | EventKind::RouterInventory { .. } => {}
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

    /// Expire idle connections and old upstream-log entries. `now_ns` is CLOCK_MONOTONIC,
    /// like event timestamps.
    pub fn tick(&mut self, now_ns: u64) {
        let idle = u64::try_from(self.cfg.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let horizon = now_ns.saturating_sub(idle);
        while let Some(&(seq, key)) = self.age.front() {
            match self.conns.get(&key) {
                Some(c) if c.age_seq == seq => {
                    if c.last_seen >= horizon {
                        break;
                    }
                    self.age.pop_front();
                    if let Some(c) = self.conns.remove(&key) {
                        self.stash_bytes = self.stash_bytes.saturating_sub(c.stash_len());
                        self.metrics.evicted_connections.inc(Eviction::Idle);
                        tracing::debug!(tgid = key.0, conn = %key.1, "idle connection expired");
                    }
                }
                _ => {
                    self.age.pop_front();
                }
            }
        }
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
        self.upstream_log.retain(|_, log| {
            while log.front().is_some_and(|e| e.ts_ns < horizon) {
                log.pop_front();
            }
            !log.is_empty()
        });
        self.publish_connections();
    }

    /// Append the recency entry tagged `next_age_seq` for `key`, whose connection already
    /// carries that tag, and compact the queue when stale entries dominate.
    fn push_age(&mut self, key: ConnKey) {
        self.age.push_back((self.next_age_seq, key));
        self.next_age_seq += 1;
        if self.age.len() > 2 * self.conns.len() + AGE_SLACK {
            let conns = &self.conns;
            self.age
                .retain(|(seq, key)| conns.get(key).is_some_and(|c| c.age_seq == *seq));
        }
    }

    fn touch(&mut self, key: ConnKey, ts: u64) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if ts <= c.last_seen {
            return;
        }
        c.last_seen = ts;
        c.age_seq = self.next_age_seq;
        self.push_age(key);
    }

    fn insert_conn(&mut self, key: ConnKey, origin: Origin, ts: u64) {
        while self.conns.len() >= self.cfg.max_connections.max(1) {
            let Some((seq, old)) = self.age.pop_front() else {
                break;
            };
            if self.conns.get(&old).is_none_or(|c| c.age_seq != seq) {
                continue;
            }
            if let Some(c) = self.conns.remove(&old) {
                self.stash_bytes = self.stash_bytes.saturating_sub(c.stash_len());
                self.metrics.evicted_connections.inc(Eviction::Capacity);
                tracing::debug!(tgid = old.0, conn = %old.1, "connection evicted at capacity");
            }
        }
        // Tag first, then queue: compaction keeps only entries whose connection carries
        // their tag.
        self.conns
            .insert(key, Conn::new(origin, ts, self.next_age_seq));
        self.push_age(key);
    }

    fn remove_conn(&mut self, key: ConnKey) -> Option<Conn> {
        // Its recency entry turns stale and is dropped later.
        let c = self.conns.remove(&key)?;
        self.stash_bytes = self.stash_bytes.saturating_sub(c.stash_len());
        Some(c)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_data(
        &mut self,
        ts: u64,
        origin: Origin,
        conn: ConnId,
        dir: Direction,
        total_len: u64,
        bytes: &[u8],
        out: &mut Vec<FlowEvent>,
    ) {
        let key = (origin.tgid, conn);
        if let ConnId::GoTls(_) = conn {
            if self.on_h2_data(ts, origin, key, dir, total_len, bytes, out) {
                return;
            }
        }
        let d = dir_index(dir);
        if let Some(c) = self.conns.get(&key) {
            if c.upgraded.is_some() {
                if http::looks_like_message_start(bytes) {
                    // Frames never look like this; the fd must have been closed and reused
                    // without us seeing the Close.
                    self.metrics
                        .connection_anomalies
                        .inc(Anomaly::ReusedWithoutClose);
                    self.remove_conn(key);
                } else {
                    self.metrics.skipped_data.inc(Skip::AfterUpgrade);
                    self.touch(key, ts);
                    return;
                }
            }
        }

        // A head that an earlier syscall left incomplete continues here: the next bytes
        // read (or written) on a stream are its continuation, whatever they look like.
        let joined;
        let taken = self.conns.get_mut(&key).and_then(|c| c.stash[d].take());
        self.stash_bytes = self
            .stash_bytes
            .saturating_sub(taken.as_ref().map_or(0, Vec::len));
        let (bytes, total_len) = match taken {
            Some(mut head) if head.len() + bytes.len() <= MAX_STASH => {
                let total = head.len() as u64 + total_len;
                head.extend_from_slice(bytes);
                self.metrics.skipped_data.inc(Skip::Continuation);
                joined = head;
                (&joined[..], total)
            }
            Some(head) => {
                self.flush_stash(key, dir, ts, head, out);
                if self.conns.get(&key).is_some_and(|c| c.upgraded.is_some()) {
                    self.metrics.skipped_data.inc(Skip::AfterUpgrade);
                    return;
                }
                (bytes, total_len)
            }
            None => (bytes, total_len),
        };

        // Work out where, if anywhere, a new message starts in this syscall.
        let mut skip = 0u64;
        if let Some(c) = self.conns.get_mut(&key) {
            match c.expect[d] {
                Expect::Message => {}
                Expect::Body(n) if n >= total_len => {
                    c.expect[d] = if n == total_len {
                        Expect::Message
                    } else {
                        Expect::Body(n - total_len)
                    };
                    self.metrics.skipped_data.inc(Skip::Continuation);
                    self.touch(key, ts);
                    return;
                }
                Expect::Body(n) => {
                    skip = n;
                    c.expect[d] = Expect::Message;
                }
                Expect::Continuation => {
                    if !http::looks_like_message_start(bytes) {
                        self.metrics.skipped_data.inc(Skip::Continuation);
                        self.touch(key, ts);
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
            if let Some(c) = self.conns.get_mut(&key) {
                c.expect[d] = Expect::Continuation;
            }
            self.touch(key, ts);
            return;
        }
        let rest = &bytes[skip_usize..];
        let mut messages = std::mem::take(&mut self.msg_buf);
        messages.clear();
        let parsed = match http::parse_into(rest, total_len - skip, &mut messages) {
            Ok(p) => p,
            Err(e) => {
                self.msg_buf = messages;
                self.metrics.parse_errors.inc(e);
                // Do not keep state for connections that never carried HTTP.
                if let Some(c) = self.conns.get_mut(&key) {
                    c.expect[d] = Expect::Continuation;
                    self.touch(key, ts);
                }
                return;
            }
        };
        if let Some(e) = parsed.error {
            self.metrics.parse_errors.inc(e);
        }
        if self.conns.contains_key(&key) {
            self.touch(key, ts);
        } else {
            self.insert_conn(key, origin, ts);
        }

        // Keep an incomplete last head aside until the next syscall completes it.
        let mut stashed = None;
        if let (Tail::HeadIncomplete, Some(at)) = (parsed.tail, parsed.incomplete_at) {
            let len = rest.len() - at;
            if len <= MAX_STASH / 2 && self.stash_bytes + len <= MAX_STASH_TOTAL {
                if parsed.incomplete_parsed {
                    messages.pop();
                }
                stashed = Some(rest[at..].to_vec());
            }
        }
        let tail = parsed.tail;
        let (upgraded, head_response) = self.process(key, dir, ts, &mut messages, out);
        self.msg_buf = messages;
        if let Some(c) = self.conns.get_mut(&key) {
            if !upgraded {
                c.expect[d] = match (tail, head_response) {
                    // A response to HEAD announces a length but sends no body.
                    (Tail::Body(_), true) => Expect::Message,
                    (t, _) => t.into(),
                };
                if let Some(head) = stashed {
                    self.stash_bytes += head.len();
                    c.expect[d] = Expect::Message;
                    c.stash[d] = Some(head);
                }
            }
        }
    }

    /// Data of an HTTP/2 connection, or the preface that starts one. Returns false when
    /// the connection is not HTTP/2.
    #[allow(clippy::too_many_arguments)]
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
            if let Some(old) = self.remove_conn(key) {
                self.metrics
                    .connection_anomalies
                    .inc(Anomaly::ReusedWithoutClose);
                self.metrics
                    .unanswered_requests
                    .inc_by(Leg::Client, old.pending.len() as u64);
            }
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
                        response.status == 404 && self.upstream_seen(key.0, &request, ts_ns);
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

    /// Give up waiting for the rest of a stashed head and use what it has.
    fn flush_stash(
        &mut self,
        key: ConnKey,
        dir: Direction,
        ts: u64,
        head: Vec<u8>,
        out: &mut Vec<FlowEvent>,
    ) {
        let mut messages = std::mem::take(&mut self.msg_buf);
        messages.clear();
        if http::parse_into(&head, head.len() as u64, &mut messages).is_ok() {
            self.process(key, dir, ts, &mut messages, out);
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
        out: &mut Vec<FlowEvent>,
    ) -> (bool, bool) {
        let mut head_response = false;
        for msg in messages.drain(..) {
            let upgraded;
            (upgraded, head_response) = match (dir, msg) {
                (Direction::Read, Message::Request(r)) => {
                    self.on_client_request(key, ts, &r);
                    (false, false)
                }
                (Direction::Write, Message::Response(r)) => {
                    self.on_client_response(key, ts, r, out)
                }
                (Direction::Write, Message::Request(r)) => {
                    self.on_upstream_request(key, ts, &r);
                    (false, false)
                }
                (Direction::Read, Message::Response(r)) => self.on_upstream_response(key, ts, &r),
            };
            if upgraded {
                // Whatever follows the 101 in this syscall is WebSocket frames.
                return (true, false);
            }
        }
        (false, head_response)
    }

    fn on_client_request(&mut self, key: ConnKey, ts: u64, r: &RequestHead) {
        self.traffic.client_requests += 1;
        if r.truncated {
            self.metrics.truncated_heads.inc();
        }
        if r.host == Host::Invalid {
            self.metrics.invalid_hosts.inc();
        }
        let max = self.cfg.max_pending_per_conn.max(1);
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.pending.len() >= max {
            // Dropping the newest keeps the older requests paired with the right responses.
            self.metrics.pending_overflow.inc();
            return;
        }
        c.pending.push_back(ClientRequest::from_head(ts, r));
    }

    /// Returns (connection upgraded, response to a HEAD request).
    fn on_client_response(
        &mut self,
        key: ConnKey,
        ts: u64,
        r: ResponseHead,
        out: &mut Vec<FlowEvent>,
    ) -> (bool, bool) {
        if r.truncated {
            self.metrics.truncated_heads.inc();
        }
        if r.is_interim() {
            self.metrics
                .connection_anomalies
                .inc(Anomaly::InterimResponse);
            return (false, false);
        }
        self.traffic.client_responses += 1;
        let Some(c) = self.conns.get_mut(&key) else {
            return (false, false);
        };
        let origin = c.origin;
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
        let upstream_seen = r.status == 404 && self.upstream_seen(key.0, &request, ts);
        out.push(FlowEvent::Exchange {
            origin,
            request,
            response: r,
            response_ts_ns: ts,
            upstream_seen,
        });
        (upgraded, head)
    }

    fn on_upstream_request(&mut self, key: ConnKey, ts: u64, r: &RequestHead) {
        self.traffic.upstream_requests += 1;
        if r.truncated {
            self.metrics.truncated_heads.inc();
        }
        let max = self.cfg.max_pending_per_conn.max(1);
        if let Some(c) = self.conns.get_mut(&key) {
            c.upstream_last_head = r.method == Method::Head;
            c.upstream_last_ws = r.websocket;
            if self.cfg.upstream_responses {
                if c.upstream_pending.len() >= max {
                    self.metrics.pending_overflow.inc();
                } else {
                    c.upstream_pending.push_back(r.method == Method::Head);
                }
            }
        }
        if !self.upstream_log.contains_key(&key.0)
            && self.upstream_log.len() >= MAX_UPSTREAM_PROCESSES
        {
            self.metrics
                .connection_anomalies
                .inc(Anomaly::UpstreamLogFull);
            return;
        }
        let host = http::host_hash(&r.host);
        // Traefik passes the Host through and repeats it in X-Forwarded-Host: hash once.
        let forwarded_host = if r.forwarded_host == r.host {
            host
        } else {
            http::host_hash(&r.forwarded_host)
        };
        let log = self.upstream_log.entry(key.0).or_default();
        if log.len() >= MAX_UPSTREAM_LOG {
            log.pop_front();
        }
        log.push_back(UpstreamEntry {
            ts_ns: ts,
            target: r.target,
            host,
            forwarded_host,
        });
    }

    /// Returns (connection upgraded, response to a HEAD request).
    fn on_upstream_response(&mut self, key: ConnKey, ts: u64, r: &ResponseHead) -> (bool, bool) {
        if r.truncated {
            self.metrics.truncated_heads.inc();
        }
        if r.is_interim() {
            self.metrics
                .connection_anomalies
                .inc(Anomaly::InterimResponse);
            return (false, false);
        }
        self.traffic.upstream_responses += 1;
        let Some(c) = self.conns.get_mut(&key) else {
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

    /// Did this process write an upstream request for `req` between the request and `now`?
    fn upstream_seen(&self, tgid: u32, req: &ClientRequest, now: u64) -> bool {
        let Some(log) = self.upstream_log.get(&tgid) else {
            return false;
        };
        let host = http::host_hash(&req.host);
        log.iter()
            .rev()
            .take_while(|e| e.ts_ns >= req.ts_ns)
            .any(|e| {
                e.ts_ns <= now
                    && e.target == req.target
                    && (e.host == host || e.forwarded_host == host)
            })
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
        if self.h2.close(key, ts, &mut h2_out) {
            self.emit_h2(key, origin, &mut h2_out, out);
            self.h2_buf = h2_out;
            return;
        }
        self.h2_buf = h2_out;
        // Heads still waiting for their rest are all there will be.
        for dir in [Direction::Read, Direction::Write] {
            let stash = self
                .conns
                .get_mut(&key)
                .and_then(|c| c.stash[dir_index(dir)].take());
            if let Some(head) = stash {
                self.stash_bytes = self.stash_bytes.saturating_sub(head.len());
                self.flush_stash(key, dir, ts, head, out);
            }
        }
        let Some(c) = self.remove_conn(key) else {
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
                    out.push(FlowEvent::WsEarlyClose {
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
                out.push(FlowEvent::WsReset {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pipeline::http::ParseError;

    const O: Origin = Origin {
        tgid: 100,
        cgroup_id: 7,
    };
    const S: u64 = 1_000_000_000;

    fn data(ts: u64, fd: u32, dir: Direction, b: &[u8]) -> Event {
        Event::data(ts, O, fd, dir, b)
    }

    fn close(ts: u64, fd: u32, upgraded: bool) -> Event {
        Event {
            ts_ns: ts,
            origin: O,
            kind: EventKind::Closed {
                conn: ConnId::Fd(fd),
                upgraded,
            },
        }
    }

    fn run(flows: &mut Flows, evs: &[Event]) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        for e in evs {
            flows.handle(e, &mut out);
        }
        out
    }

    fn statuses(out: &[FlowEvent]) -> Vec<(String, u16)> {
        out.iter()
            .filter_map(|e| match e {
                FlowEvent::Exchange {
                    request, response, ..
                } => Some((
                    request.host.name().unwrap_or("-").to_string(),
                    response.status,
                )),
                _ => None,
            })
            .collect()
    }

    const MISS: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nDate: Sun, 22 Nov 2026 14:41:08 GMT\r\nContent-Length: 19\r\n\r\n404 page not found\n";
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    fn req(host: &str, path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
    }

    #[test]
    fn pairs_pipelined_requests_fifo() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let mut both = req("a.test", "/1");
        both.extend(req("b.test", "/2"));
        let out = run(
            &mut f,
            &[
                data(S, 5, Direction::Read, &both),
                data(2 * S, 5, Direction::Write, MISS),
                data(3 * S, 5, Direction::Write, OK),
                data(4 * S, 5, Direction::Write, OK),
            ],
        );
        assert_eq!(
            statuses(&out),
            [("a.test".into(), 404), ("b.test".into(), 200)]
        );
        assert_eq!(f.metrics.unmatched_responses.get(Leg::Client), 1);
        assert_eq!(f.traffic().client_requests, 2);
    }

    #[test]
    fn corroborates_with_upstream_requests_of_the_same_process() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let upstream =
            b"GET /x HTTP/1.1\r\nHost: 10.0.0.5:8080\r\nX-Forwarded-Host: a.test\r\n\r\n";
        let out = run(
            &mut f,
            &[
                data(S, 5, Direction::Read, &req("a.test", "/x")),
                data(S + 1, 9, Direction::Write, upstream),
                data(S + 2, 9, Direction::Read, MISS),
                data(S + 3, 5, Direction::Write, MISS),
                // Same host, other path: not corroborated.
                data(2 * S, 5, Direction::Read, &req("a.test", "/y")),
                data(2 * S + 1, 5, Direction::Write, MISS),
                // Upstream request written before the client request: not for it.
                data(3 * S, 5, Direction::Read, &req("a.test", "/x")),
                data(3 * S + 1, 5, Direction::Write, MISS),
            ],
        );
        let seen: Vec<bool> = out
            .iter()
            .map(|e| match e {
                FlowEvent::Exchange { upstream_seen, .. } => *upstream_seen,
                _ => panic!(),
            })
            .collect();
        assert_eq!(seen, [true, false, false]);
        assert_eq!(f.traffic().upstream_requests, 1);
        assert_eq!(f.traffic().upstream_responses, 1);
        // Another process's upstream request does not corroborate.
        let other = Origin {
            tgid: 200,
            cgroup_id: 7,
        };
        let out = run(
            &mut f,
            &[
                data(4 * S, 5, Direction::Read, &req("a.test", "/x")),
                Event::data(4 * S + 1, other, 9, Direction::Write, upstream),
                data(4 * S + 2, 5, Direction::Write, MISS),
            ],
        );
        assert!(matches!(
            out[0],
            FlowEvent::Exchange {
                upstream_seen: false,
                ..
            }
        ));
    }

    #[test]
    fn websocket_lifecycle() {
        let ws = b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let r101 = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi";
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let out = run(
            &mut f,
            &[
                data(S, 5, Direction::Read, ws),
                data(2 * S, 5, Direction::Write, r101),
                data(3 * S, 5, Direction::Read, b"\x81\x82abcdxy"),
                data(3 * S, 5, Direction::Write, b"\x81\x02hi"),
                close(4 * S, 5, true),
                // Upgraded and open for longer than the window: no early close.
                data(5 * S, 6, Direction::Read, ws),
                data(5 * S, 6, Direction::Write, r101),
                close(20 * S, 6, true),
                // No response at all: reset.
                data(21 * S, 7, Direction::Read, ws),
                close(22 * S, 7, false),
                // A plain request left unanswered is only counted.
                data(23 * S, 8, Direction::Read, &req("a.test", "/")),
                close(24 * S, 8, false),
            ],
        );
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(matches!(&out[0], FlowEvent::Exchange { response, .. } if response.status == 101));
        assert!(matches!(&out[1], FlowEvent::WsEarlyClose { open_ns, .. } if *open_ns == 2 * S));
        assert!(matches!(&out[2], FlowEvent::Exchange { response, .. } if response.status == 101));
        assert!(matches!(&out[3], FlowEvent::WsReset { request, .. } if request.websocket));
        assert_eq!(f.metrics.skipped_data.get(Skip::AfterUpgrade), 2);
        assert_eq!(
            ParseError::ALL.map(|e| f.metrics.parse_errors.get(e)),
            [0; ParseError::ALL.len()]
        );
        assert_eq!(f.metrics.unanswered_requests.get(Leg::Client), 1);
        assert_eq!(f.connections(), 0);
    }

    #[test]
    fn fd_reuse() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let ws = b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let out = run(
            &mut f,
            &[
                data(S, 5, Direction::Read, &req("a.test", "/")),
                close(2 * S, 5, false),
                // Same fd, new connection: the old request must not pair with this response.
                data(3 * S, 5, Direction::Write, OK),
                data(4 * S, 5, Direction::Read, ws),
                data(
                    5 * S,
                    5,
                    Direction::Write,
                    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                ),
                // Close lost; the fd now carries a new HTTP connection.
                data(6 * S, 5, Direction::Read, &req("b.test", "/")),
                data(7 * S, 5, Direction::Write, OK),
            ],
        );
        assert_eq!(
            statuses(&out),
            [("a.test".into(), 101), ("b.test".into(), 200)]
        );
        assert_eq!(f.metrics.unmatched_responses.get(Leg::Client), 1);
        assert_eq!(f.metrics.unanswered_requests.get(Leg::Client), 1);
        assert_eq!(
            f.metrics
                .connection_anomalies
                .get(Anomaly::ReusedWithoutClose),
            1
        );
    }

    #[test]
    fn eviction_and_expiry_bound_memory() {
        let cfg = FlowConfig {
            max_connections: 3,
            idle_timeout: Duration::from_secs(60),
            ..FlowConfig::default()
        };
        let mut f = Flows::new(cfg, PipelineMetrics::default());
        for fd in 0..10u32 {
            run(
                &mut f,
                &[data(
                    u64::from(fd) * S,
                    fd,
                    Direction::Read,
                    &req("a.test", "/"),
                )],
            );
            assert!(f.connections() <= 3);
        }
        assert_eq!(f.metrics.evicted_connections.get(Eviction::Capacity), 7);
        // The survivors are the three most recent: fd 7's request still pairs.
        let out = run(&mut f, &[data(11 * S, 7, Direction::Write, OK)]);
        assert_eq!(out.len(), 1);
        let out = run(&mut f, &[data(11 * S, 2, Direction::Write, OK)]);
        assert!(out.is_empty());
        f.tick(11 * S + 60 * S);
        // fd 9 was last active at 9s, fds 7 and 2 at 11s.
        assert_eq!(f.metrics.evicted_connections.get(Eviction::Idle), 1);
        assert_eq!(f.connections(), 2);
        f.tick(100 * S);
        assert_eq!(f.connections(), 0);
    }

    #[test]
    fn pending_is_bounded() {
        let cfg = FlowConfig {
            max_pending_per_conn: 2,
            ..FlowConfig::default()
        };
        let mut f = Flows::new(cfg, PipelineMetrics::default());
        let mut three = req("a.test", "/1");
        three.extend(req("b.test", "/2"));
        three.extend(req("c.test", "/3"));
        let out = run(
            &mut f,
            &[
                data(S, 5, Direction::Read, &three),
                data(2 * S, 5, Direction::Write, OK),
                data(2 * S, 5, Direction::Write, OK),
            ],
        );
        assert_eq!(
            statuses(&out),
            [("a.test".into(), 200), ("b.test".into(), 200)]
        );
        assert_eq!(f.metrics.pending_overflow.get(), 1);
    }

    #[test]
    fn bodies_and_continuations_are_skipped() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let post = b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\n0123";
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        let out = run(
            &mut f,
            &[
                data(S, 5, Direction::Read, post),
                // The rest of the body, then the next request in the same read.
                data(
                    2 * S,
                    5,
                    Direction::Read,
                    b"456789GET /b HTTP/1.1\r\nHost: b.test\r\n\r\n",
                ),
                data(3 * S, 5, Direction::Write, chunked),
                data(3 * S, 5, Direction::Write, b"0\r\n\r\n"),
                data(4 * S, 5, Direction::Write, OK),
            ],
        );
        assert_eq!(
            statuses(&out),
            [("a.test".into(), 200), ("b.test".into(), 200)]
        );
        assert_eq!(f.metrics.skipped_data.get(Skip::Continuation), 1);
        assert_eq!(
            ParseError::ALL
                .map(|e| f.metrics.parse_errors.get(e))
                .iter()
                .sum::<u64>(),
            0
        );
    }

    #[test]
    fn heads_split_over_syscalls_are_joined() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let ws = b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let out = run(
            &mut f,
            &[
                data(S, 5, Direction::Read, &ws[..20]),
                data(S + 1, 5, Direction::Read, &ws[20..40]),
                data(S + 2, 5, Direction::Read, &ws[40..]),
                data(
                    2 * S,
                    5,
                    Direction::Write,
                    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                ),
                // Never completed: used as it is when the connection closes.
                data(3 * S, 6, Direction::Read, &ws[..ws.len() - 2]),
                close(4 * S, 6, false),
            ],
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let FlowEvent::Exchange { request, .. } = &out[0] else {
            panic!()
        };
        assert!(request.websocket);
        assert_eq!(request.host.name(), Some("a.test"));
        let FlowEvent::WsReset { request, .. } = &out[1] else {
            panic!()
        };
        assert!(request.websocket);
        assert_eq!(f.metrics.skipped_data.get(Skip::Continuation), 2);
        assert_eq!(f.metrics.truncated_heads.get(), 1);
        assert_eq!(f.stash_bytes, 0);
    }

    #[test]
    fn pipelined_request_split_in_its_first_bytes() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let mut first = req("a.test", "/1");
        let second = req("b.test", "/2");
        first.extend_from_slice(&second[..2]);
        let out = run(
            &mut f,
            &[
                data(S, 5, Direction::Read, &first),
                data(S + 1, 5, Direction::Read, &second[2..]),
                data(2 * S, 5, Direction::Write, OK),
                data(2 * S, 5, Direction::Write, OK),
            ],
        );
        assert_eq!(
            statuses(&out),
            [("a.test".into(), 200), ("b.test".into(), 200)]
        );
        let FlowEvent::Exchange { request, .. } = &out[1] else {
            panic!()
        };
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.target, http::target_hash(b"GET", b"/2"));
        assert_eq!(
            ParseError::ALL.map(|e| f.metrics.parse_errors.get(e)),
            [0; ParseError::ALL.len()]
        );
    }

    #[test]
    fn responses_to_head_have_no_body() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let out = run(
            &mut f,
            &[
                data(
                    S,
                    5,
                    Direction::Read,
                    b"HEAD / HTTP/1.1\r\nHost: a.test\r\n\r\n",
                ),
                data(
                    S,
                    5,
                    Direction::Write,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n",
                ),
                data(S, 5, Direction::Read, &req("b.test", "/")),
                data(S, 5, Direction::Write, OK),
            ],
        );
        assert_eq!(
            statuses(&out),
            [("a.test".into(), 200), ("b.test".into(), 200)]
        );
        assert_eq!(f.metrics.skipped_data.get(Skip::Continuation), 0);
    }

    #[test]
    fn garbage_is_counted_and_not_tracked() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        run(
            &mut f,
            &[
                data(S, 5, Direction::Read, b"\x16\x03\x01\x00\xa5\x01"),
                data(S, 6, Direction::Write, b"HTTP/1.1 2"),
            ],
        );
        assert_eq!(f.metrics.parse_errors.get(ParseError::NotHttp), 1);
        assert_eq!(f.metrics.parse_errors.get(ParseError::TooShort), 1);
        assert_eq!(f.connections(), 0);
    }

    #[test]
    fn interim_responses_do_not_consume_requests() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let out = run(
            &mut f,
            &[
                data(S, 5, Direction::Read, &req("a.test", "/")),
                data(2 * S, 5, Direction::Write, b"HTTP/1.1 100 Continue\r\n\r\n"),
                data(3 * S, 5, Direction::Write, OK),
            ],
        );
        assert_eq!(statuses(&out), [("a.test".into(), 200)]);
        assert_eq!(
            f.metrics.connection_anomalies.get(Anomaly::InterimResponse),
            1
        );
    }

    #[test]
    fn upstream_failures_pass_through() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        let out = run(
            &mut f,
            &[Event {
                ts_ns: S,
                origin: O,
                kind: EventKind::UpstreamFailure {
                    reason: UpstreamFailureReason::Refused,
                    errno: 111,
                    peer: None,
                },
            }],
        );
        assert!(matches!(
            out[0],
            FlowEvent::UpstreamFailure {
                reason: UpstreamFailureReason::Refused,
                ..
            }
        ));
    }

    #[test]
    fn a_body_written_to_a_client_is_not_an_upstream_request() {
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        // A response whose 12-byte body is written on its own and starts like a request.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
        run(
            &mut f,
            &[
                data(S, 5, Direction::Read, &req("a.test", "/x")),
                data(S + 1, 5, Direction::Write, head),
                data(S + 2, 5, Direction::Write, b"GET / HTTP/1"),
            ],
        );
        assert_eq!(f.traffic().upstream_requests, 0);
        assert_eq!(f.traffic().client_responses, 1);
        assert!(!f.upstream_log.contains_key(&O.tgid));
    }

    #[test]
    fn upstream_requests_are_not_pending_without_responses() {
        let upstream = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n";
        let traffic: Vec<Event> = (0..200u64)
            .map(|i| data(S + i, 9, Direction::Write, upstream))
            .chain(std::iter::once(close(2 * S, 9, false)))
            .collect();
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default());
        assert!(run(&mut f, &traffic).is_empty());
        assert_eq!(f.traffic().upstream_requests, 200);
        assert_eq!(f.metrics.pending_overflow.get(), 0);
        assert_eq!(f.metrics.unanswered_requests.get(Leg::Upstream), 0);
        assert_eq!(
            f.metrics.connection_anomalies.get(Anomaly::UnseenUpgrade),
            0
        );
        // Still logged for corroboration (bounded per process).
        assert_eq!(f.upstream_log.get(&O.tgid).map(VecDeque::len), Some(200));
        let mut f = Flows::new(
            FlowConfig {
                upstream_responses: true,
                ..FlowConfig::default()
            },
            PipelineMetrics::default(),
        );
        run(&mut f, &traffic);
        assert_eq!(f.metrics.pending_overflow.get(), 200 - 64);
        assert_eq!(f.metrics.unanswered_requests.get(Leg::Upstream), 64);
    }

    #[test]
    fn recency_queue_stays_compact_and_ordered() {
        let cfg = FlowConfig {
            max_connections: 4,
            ..FlowConfig::default()
        };
        let mut f = Flows::new(cfg, PipelineMetrics::default());
        let mut ts = S;
        for round in 0..20_000u32 {
            // fds 1..=4 in turn, fd 1 twice as often.
            let fd = if round % 2 == 0 { 1 } else { 2 + round % 3 };
            ts += 1;
            run(
                &mut f,
                &[data(ts, fd, Direction::Read, &req("a.test", "/"))],
            );
            run(&mut f, &[data(ts, fd, Direction::Write, OK)]);
            assert!(f.age.len() <= 2 * f.connections() + AGE_SLACK + 1);
        }
        assert_eq!(f.connections(), 4);
        assert_eq!(f.metrics.evicted_connections.get(Eviction::Capacity), 0);
        // fd 1 was active last, fd 2 the longest ago of the others: a fifth connection
        // evicts fd 2.
        ts += 1;
        run(&mut f, &[data(ts, 1, Direction::Read, &req("a.test", "/"))]);
        ts += 1;
        run(&mut f, &[data(ts, 7, Direction::Read, &req("a.test", "/"))]);
        assert_eq!(f.metrics.evicted_connections.get(Eviction::Capacity), 1);
        assert!(f.conns.contains_key(&(O.tgid, ConnId::Fd(1))));
        let gone: Vec<u32> = (2..=4)
            .filter(|fd| !f.conns.contains_key(&(O.tgid, ConnId::Fd(*fd))))
            .collect();
        // Round 19_999 touched fd 2 + 19_999 % 3 = 3, round 19_997 fd 4, round 19_995 fd 2.
        assert_eq!(gone, [2]);
    }
}
