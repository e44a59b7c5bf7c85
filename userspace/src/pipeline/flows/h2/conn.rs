//! One HTTP/2 connection: its two frame streams, the two HPACK decoders (client → server
//! for requests, server → client for responses), and the streams waiting for an answer.

use loona_hpack::Decoder;

mod shed;

use super::fields::Fields;
use super::frames::{flag, kind, FeedError, Frame, FrameError, FrameReader};
use super::{H2Counters, H2Event};
use crate::hosts::{self, Host};
use crate::pipeline::flows::exchange::ClientRequest;
use crate::pipeline::http::{self, Method, ProbeRef, ResponseHead, Version};
use crate::pipeline::metrics::{Anomaly, LabelValue, Leg, Shed, Skip, Unclassified};

/// The client connection preface (RFC 9113 §3.4), which opens the read direction.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest header block (all its fragments) kept for decoding. Go's server refuses request
/// header lists above 1 MB, but real blocks are a few hundred bytes: one that is larger is
/// counted, not buffered.
pub const MAX_BLOCK: usize = 16 << 10;
/// Streams of one connection waiting for a response; Go's server allows 250 at once.
pub const MAX_STREAMS: usize = 256;
/// Largest dynamic table either side may announce. Go's encoder and decoder stay at 4096
/// unless configured otherwise; a size update above this is an HPACK error, so each
/// decoder holds at most this much.
const MAX_TABLE: usize = 64 << 10;

/// Directions as indices: 0 = Read (client → Traefik), 1 = Write (Traefik → client).
pub const READ: usize = 0;
pub const WRITE: usize = 1;

#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    /// A PUSH_PROMISE's block: decoded for the table's sake, then dropped.
    promise: bool,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct Stream {
    id: u32,
    request: ClientRequest,
    /// A 404 waiting for its body (the router-miss signature needs it); boxed, as only
    /// those wait.
    response: Option<Box<ResponseHead>>,
}

struct Inner {
    decoders: [Decoder<'static>; 2],
    blocks: [Option<Block>; 2],
    streams: Vec<Stream>,
    desync: [Option<Unclassified>; 2],
    /// Bytes of the client preface still to check at the start of the read direction.
    preface_left: usize,
    /// Bytes of `streams` charged to the budget.
    charged: usize,
    /// No stream waiting is older than this (`u64::MAX`: none waits).
    oldest: u64,
}

pub struct H2Conn {
    readers: [FrameReader; 2],
    inner: Inner,
    pub last_seen: u64,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("streams", &self.inner.streams.len())
            .field("desync", &self.inner.desync)
            .finish()
    }
}

fn decoder() -> Decoder<'static> {
    let mut d = Decoder::new();
    d.set_max_allowed_table_size(MAX_TABLE);
    d
}

impl H2Conn {
    pub fn new(ts: u64) -> Self {
        H2Conn {
            readers: Default::default(),
            inner: Inner {
                decoders: [decoder(), decoder()],
                blocks: [None, None],
                streams: Vec::new(),
                desync: [None, None],
                preface_left: PREFACE.len(),
                charged: 0,
                oldest: u64::MAX,
            },
            last_seen: ts,
        }
    }

    /// Bytes held in buffers (frames and header blocks in progress; the HPACK tables are
    /// bounded separately by `MAX_TABLE`).
    pub fn buffered(&self) -> usize {
        self.readers
            .iter()
            .map(FrameReader::buffered)
            .sum::<usize>()
            + self
                .inner
                .blocks
                .iter()
                .flatten()
                .map(|b| b.bytes.capacity())
                .sum::<usize>()
    }

    /// Whether a direction lost sync.
    pub fn desync(&self, dir: usize) -> Option<Unclassified> {
        self.inner.desync[dir]
    }

    /// One record of direction `dir`: `bytes` captured of `total_len` transferred.
    pub fn feed(
        &mut self,
        dir: usize,
        ts: u64,
        mut bytes: &[u8],
        total_len: u64,
        counts: &mut H2Counters,
        out: &mut Vec<H2Event>,
    ) {
        self.last_seen = self.last_seen.max(ts);
        if self.inner.desync[dir].is_some() {
            counts.metrics.skipped_data.inc(Skip::H2Desync);
            return;
        }
        let gap = total_len.saturating_sub(bytes.len() as u64);
        if dir == READ && self.inner.preface_left > 0 {
            let done = PREFACE.len() - self.inner.preface_left;
            let n = self.inner.preface_left.min(bytes.len());
            if bytes[..n] != PREFACE[done..done + n] {
                self.lose(dir, Unclassified::Frame, counts);
                return;
            }
            self.inner.preface_left -= n;
            bytes = &bytes[n..];
            if self.inner.preface_left > 0 && gap > 0 {
                self.lose(dir, Unclassified::HeaderGap, counts);
                return;
            }
        }
        let max_keep =
            MAX_BLOCK.saturating_sub(self.inner.blocks[dir].as_ref().map_or(0, |b| b.bytes.len()));
        let inner = &mut self.inner;
        let result = self.readers[dir].feed(bytes, gap, max_keep, &mut |f: Frame<'_>| {
            inner.on_frame(dir, ts, f, counts, out)
        });
        let reason = match result {
            Ok(()) => return,
            Err(FeedError::Frame(FrameError::Gap)) => Unclassified::HeaderGap,
            Err(FeedError::Frame(FrameError::BlockTooLarge)) => Unclassified::BlockTooLarge,
            Err(FeedError::Frame(FrameError::BadPadding)) => Unclassified::Frame,
            Err(FeedError::Handler(r)) => r,
        };
        self.lose(dir, reason, counts);
    }

    /// Gives up on a direction: its frames can no longer be delimited or its header
    /// blocks decoded. Every stream in flight is counted as unclassified; so is every
    /// request seen later on this connection.
    pub fn lose(&mut self, dir: usize, reason: Unclassified, counts: &mut H2Counters) {
        if self.inner.desync.iter().all(Option::is_none) {
            counts.traffic.desynced_connections += 1;
        }
        self.inner.desync[dir] = Some(reason);
        counts
            .metrics
            .h2_unclassified
            .inc_by(reason, self.inner.streams.len() as u64);
        self.inner.streams.clear();
        self.inner.blocks = [None, None];
        self.readers[dir] = FrameReader::default();
        tracing::debug!(
            direction = dir,
            reason = reason.as_str(),
            "HTTP/2 decoder lost sync"
        );
    }

    /// The connection ended (closed, expired): a 404 still waiting for its body is
    /// classified with what came of it, a request without a response is unanswered.
    pub fn end(self, ts: u64, out: &mut Vec<H2Event>) {
        for s in self.inner.streams {
            out.push(s.finish(ts));
        }
    }

    /// Ended by eviction: the streams in flight are counted, not guessed.
    pub fn evict(self, counts: &mut H2Counters) {
        let waiting = self.inner.streams.len() as u64;
        counts
            .metrics
            .h2_unclassified
            .inc_by(Unclassified::ConnLimit, waiting);
        counts.metrics.shed.inc_by(Shed::RequestEvicted, waiting);
    }
}

impl Stream {
    fn finish(self, ts: u64) -> H2Event {
        match self.response {
            Some(response) => H2Event::Exchange {
                request: self.request,
                response: *response,
                ts_ns: ts,
            },
            None => H2Event::Unanswered {
                request: self.request,
                ts_ns: ts,
            },
        }
    }
}

impl Inner {
    fn on_frame(
        &mut self,
        dir: usize,
        ts: u64,
        f: Frame<'_>,
        counts: &mut H2Counters,
        out: &mut Vec<H2Event>,
    ) -> Result<(), Unclassified> {
        let h = f.header;
        if let Some(b) = &mut self.blocks[dir] {
            // Nothing may come between a header block's frames (RFC 9113 §6.10).
            if h.kind != kind::CONTINUATION || h.stream != b.stream {
                return Err(Unclassified::Frame);
            }
            if b.bytes.len() + f.payload.len() > MAX_BLOCK {
                return Err(Unclassified::BlockTooLarge);
            }
            b.bytes.extend_from_slice(f.payload);
            if h.has(flag::END_HEADERS) {
                if let Some(b) = self.blocks[dir].take() {
                    self.on_block(dir, ts, b, counts, out)?;
                }
            }
            return Ok(());
        }
        match h.kind {
            kind::HEADERS | kind::PUSH_PROMISE => {
                if h.stream == 0 || (h.kind == kind::PUSH_PROMISE && dir == READ) {
                    return Err(Unclassified::Frame);
                }
                let b = Block {
                    stream: h.stream,
                    end_stream: h.kind == kind::HEADERS && h.has(flag::END_STREAM),
                    promise: h.kind == kind::PUSH_PROMISE,
                    bytes: f.payload.to_vec(),
                };
                if h.has(flag::END_HEADERS) {
                    self.on_block(dir, ts, b, counts, out)?;
                } else {
                    self.blocks[dir] = Some(b);
                }
            }
            kind::CONTINUATION => return Err(Unclassified::Frame),
            kind::DATA if dir == WRITE => self.on_response_data(ts, &f, out),
            kind::RST_STREAM => {
                if let Some(i) = self.streams.iter().position(|s| s.id == h.stream) {
                    let s = self.streams.swap_remove(i);
                    if s.response.is_none() {
                        counts.traffic.resets += 1;
                    }
                    out.push(s.finish(ts));
                }
            }
            kind::GOAWAY if dir == WRITE => {
                // Streams above the last one the server processed never will be; the
                // others still get their responses.
                let last = f.payload.get(..4).map_or(0, |b| {
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
                });
                let mut i = 0;
                while i < self.streams.len() {
                    if self.streams[i].id > last {
                        out.push(self.streams.swap_remove(i).finish(ts));
                    } else {
                        i += 1;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_response_data(&mut self, ts: u64, f: &Frame<'_>, out: &mut Vec<H2Event>) {
        let Some(i) = self.streams.iter().position(|s| s.id == f.header.stream) else {
            return;
        };
        let s = &mut self.streams[i];
        let Some(r) = &mut s.response else {
            return;
        };
        let room = r.body_prefix.remaining_capacity();
        let _ = r
            .body_prefix
            .try_extend_from_slice(&f.payload[..f.payload.len().min(room)]);
        if f.lost || f.header.has(flag::END_STREAM) || r.body_prefix.is_full() {
            out.push(self.streams.swap_remove(i).finish(ts));
        }
    }

    fn on_block(
        &mut self,
        dir: usize,
        ts: u64,
        b: Block,
        counts: &mut H2Counters,
        out: &mut Vec<H2Event>,
    ) -> Result<(), Unclassified> {
        let mut fields = Fields::default();
        self.decoders[dir]
            .decode_with_cb(&b.bytes, |name, value| {
                fields.add(dir == READ, &name, &value)
            })
            .map_err(|_| Unclassified::Hpack)?;
        if b.promise {
            return Ok(());
        }
        if dir == READ {
            self.on_request(ts, b.stream, fields, counts);
        } else {
            self.on_response(ts, b.stream, b.end_stream, fields, counts, out);
        }
        Ok(())
    }

    fn on_request(&mut self, ts: u64, stream: u32, f: Fields, counts: &mut H2Counters) {
        if self.streams.iter().any(|s| s.id == stream) {
            // Trailers of a request body.
            return;
        }
        let Some(method) = f.method else {
            // Trailers of a stream no longer tracked, or a malformed request.
            return;
        };
        counts.traffic.requests += 1;
        if let Some(reason) = self.desync[WRITE] {
            // Its response could never be read.
            counts.metrics.h2_unclassified.inc(reason);
            return;
        }
        if self.streams.len() >= MAX_STREAMS {
            counts
                .metrics
                .h2_unclassified
                .inc(Unclassified::StreamLimit);
            return;
        }
        if !self.room_for_stream(counts) {
            return;
        }
        let capacity = self.streams.capacity();
        let host = match (&f.authority, &f.host) {
            (Some(a), _) => hosts::normalize_host(a),
            (None, Some(h)) => hosts::normalize_host(h),
            (None, None) => Host::Missing,
        };
        if host == Host::Invalid {
            counts.metrics.invalid_hosts.inc();
        }
        let path = f.path.as_deref().unwrap_or_default();
        // RFC 8441: WebSocket over HTTP/2 is a CONNECT with `:protocol: websocket`.
        let websocket = method == b"CONNECT"
            && f.protocol
                .as_deref()
                .is_some_and(|p| p.eq_ignore_ascii_case(b"websocket"));
        // CONNECT has no `:path` unless extended; HTTP/1 writes its authority as target.
        let target: &[u8] = if method == b"CONNECT" && f.path.is_none() {
            f.authority.as_deref().unwrap_or_default()
        } else {
            path
        };
        let ua = f.user_agent.as_deref().unwrap_or_default();
        let probe_ref = if ua.is_empty() {
            ProbeRef::None
        } else {
            http::probe_ref_of(ua)
        };
        self.streams.push(Stream {
            id: stream,
            request: ClientRequest {
                ts_ns: ts,
                method: Method::from_token(&method),
                host,
                target: http::target_hash(&method, target),
                websocket,
                probe: probe_ref.is_own(),
                probe_ref,
            },
            response: None,
        });
        self.oldest = self.oldest.min(ts);
        if self.streams.capacity() != capacity {
            self.recharge(&counts.budget);
        }
    }

    fn on_response(
        &mut self,
        ts: u64,
        stream: u32,
        end_stream: bool,
        f: Fields,
        counts: &mut H2Counters,
        out: &mut Vec<H2Event>,
    ) {
        let Some(i) = self.streams.iter().position(|s| s.id == stream) else {
            // Trailers, or the answer to a stream not tracked (counted when dropped).
            if f.status.is_some() && self.desync[READ].is_none() {
                counts.metrics.unmatched_responses.inc(Leg::Client);
            }
            return;
        };
        if self.streams[i].response.is_some() {
            // Trailers after a 404's headers: the body is complete.
            out.push(self.streams.swap_remove(i).finish(ts));
            return;
        }
        let Some(status) = f.status else {
            return;
        };
        if (100..200).contains(&status) {
            counts
                .metrics
                .connection_anomalies
                .inc(Anomaly::InterimResponse);
            return;
        }
        counts.traffic.responses += 1;
        let response = ResponseHead {
            version: Version::H2,
            status,
            reason: Default::default(),
            headers: f.headers,
            content_type: f.content_type.map(|v| http::cut_str(&v)),
            x_content_type_options: f.x_content_type_options.map(|v| http::cut_str(&v)),
            content_length: f.content_length,
            chunked: false,
            body_prefix: Default::default(),
            truncated: f.too_many_headers,
        };
        // Only a 404's body matters; anything else is classified on its headers.
        if status != 404 || end_stream {
            let s = self.streams.swap_remove(i);
            out.push(H2Event::Exchange {
                request: s.request,
                response,
                ts_ns: ts,
            });
        } else {
            self.streams[i].response = Some(Box::new(response));
        }
    }
}
