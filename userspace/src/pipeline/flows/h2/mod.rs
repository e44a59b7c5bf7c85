//! HTTP/2 inside Go TLS connections: Traefik negotiates h2 (ALPN) with every TLS client
//! that offers it, so on `websecure` most browser, curl and cloudflared traffic is h2.
//!
//! # Method: HPACK decoding of the captured frames
//!
//! The kernel marks a Go TLS connection as h2 when `crypto/tls.(*Conn).Read` returns the
//! client preface, and from then on copies every Read and Write of it (up to the capture
//! length). Here each direction is rebuilt as a frame stream ([`frames`]), the header
//! blocks are decoded with a real HPACK decoder per direction ([`conn`]), and each
//! stream's request (`:method`, `:authority`, `:path`, `:protocol`) is paired with its
//! response (`:status`, header names in order, the first bytes of a 404's DATA) to give
//! the same [`crate::pipeline::flows::FlowEvent::Exchange`] as HTTP/1, classified by the same rules.
//!
//! The alternative, uprobes on Go's `net/http` h2 internals (`writeResHeaders`,
//! `http.NotFound`, the server's stream state), would need field offsets of unexported
//! structs of each Go version; the release binary is stripped of DWARF, so those offsets
//! could only be hard-coded per Go version and would silently break on the next one. The
//! frame format and HPACK are fixed by RFCs and need nothing from the binary beyond the
//! two `crypto/tls` functions the HTTP/1 capture already uses. The price is copying every
//! frame of h2 connections instead of message heads only, and the honesty rule below.
//!
//! # Honest resynchronisation
//!
//! HPACK state is cumulative: a header block can only be decoded if every earlier block
//! of the same direction was. A capture gap (a Read/Write longer than the capture length)
//! inside a DATA payload is skipped exactly, since the frame lengths are known; a gap that
//! covers a frame header or part of a header block, an HPACK error or a malformed frame
//! sequence ends that direction for the rest of the connection. Every stream in flight
//! then, and every request seen afterwards, is counted in
//! `routeskew_pipeline_h2_unclassified_total` by [`Unclassified`] reason, never classified
//! on a guess. The connection's next preface (a new
//! connection at the same address) starts afresh.
//!
//! # Limits
//!
//! Connections with h2 state, streams per connection and header block bytes are capped
//! (`MAX_CONNECTIONS`, [`conn::MAX_STREAMS`], [`conn::MAX_BLOCK`], and all buffers together
//! by `MAX_BUFFERED`); whatever a cap drops is counted with its own reason. The server's
//! first SETTINGS frame is written before the preface is read and is not seen; nothing
//! here needs it (table size changes are announced inside the header blocks). WebSocket
//! over h2 (RFC 8441 extended CONNECT) is recognised and its answer classified, but the
//! stream's later life (early close) is not followed.

pub mod capture;
pub mod conn;
mod fields;
pub mod frames;
#[cfg(test)]
mod tests;

use std::mem::size_of;

use crate::pipeline::budget::Budget;
use crate::pipeline::flows::exchange::ClientRequest;
use crate::pipeline::http::ResponseHead;
use crate::pipeline::metrics::{MemoryPart, PipelineMetrics, Shed, Unclassified};

pub use conn::{H2Conn, PREFACE, READ, WRITE};

/// The h2 tracker's own tallies, for logs and tests (what it could not classify is in
/// the pipeline's health counters). Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct H2Traffic {
    pub connections: u64,
    pub requests: u64,
    pub responses: u64,
    /// Requests ended by RST_STREAM before any response.
    pub resets: u64,
    /// Connections on which a direction lost sync.
    pub desynced_connections: u64,
}

/// Where the h2 tracker counts: the pipeline's health counters, incremented in place,
/// its own tallies, and the memory budget its state is charged to.
#[derive(Debug, Clone, Default)]
pub struct H2Counters {
    pub metrics: PipelineMetrics,
    pub traffic: H2Traffic,
    pub budget: Budget,
}

/// What a connection yields, in order.
// Like `FlowEvent`: the exchange is the common and large variant, boxing would allocate
// per response.
#[expect(
    clippy::large_enum_variant,
    reason = "boxing the common variant would allocate per response"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2Event {
    Exchange {
        request: ClientRequest,
        response: ResponseHead,
        ts_ns: u64,
    },
    /// A request ended without a response: RST_STREAM, GOAWAY above its id, or the
    /// connection's end.
    Unanswered { request: ClientRequest, ts_ns: u64 },
}

/// Connections with h2 state (each holds two HPACK tables of a few KiB).
pub const MAX_CONNECTIONS: usize = 4096;
/// Frame and header block buffers of all connections together.
pub const MAX_BUFFERED: usize = 8 << 20;
/// What an HPACK decoder is charged: full at Go's default table size of 4 KiB (counted as
/// RFC 7541 does, 32 bytes per entry beyond its name and value, which covers what the
/// decoder allocates per entry: `tests/memory_budget.rs` measures it). Go's server
/// refuses a larger table from a client, and its encoder stays at 4 KiB unless Traefik
/// is configured otherwise.
const HPACK_CHARGE: usize = 4 << 10;

/// What a connection with h2 state costs before its streams and buffers: its hash table
/// slot (twice: tables double) and its two HPACK decoders.
pub fn conn_cost<K>() -> usize {
    2 * (size_of::<(K, H2Conn)>() + 1) + 2 * HPACK_CHARGE
}

/// The h2 state of every connection, keyed like the flow tracker's connections.
pub struct H2Conns<K> {
    conns: foldhash::HashMap<K, H2Conn>,
    buffered: usize,
    max_connections: usize,
    counts: H2Counters,
}

impl<K: std::hash::Hash + Eq + Copy> H2Conns<K> {
    /// `metrics`: the pipeline's health counters, which this tracker increments.
    pub fn new(max_connections: usize, metrics: PipelineMetrics, budget: Budget) -> Self {
        H2Conns {
            conns: foldhash::HashMap::default(),
            buffered: 0,
            max_connections: max_connections.max(1),
            counts: H2Counters {
                metrics,
                traffic: H2Traffic::default(),
                budget,
            },
        }
    }

    /// The least recently active connection and when it was last active. A scan: only
    /// needed when the budget or the connection cap is reached.
    pub fn oldest(&self) -> Option<(K, u64)> {
        self.conns
            .iter()
            .min_by_key(|(_, c)| c.last_seen)
            .map(|(k, c)| (*k, c.last_seen))
    }

    /// Drops the least recently active connection, its streams counted; `budget`: to
    /// make room in the memory budget (counted as shed), not for the connection cap.
    /// False when none is tracked.
    pub fn evict_oldest(&mut self, budget: bool) -> bool {
        let Some(c) = self.oldest().and_then(|(k, _)| self.conns.remove(&k)) else {
            return false;
        };
        self.released(&c);
        if budget {
            self.counts.metrics.shed.inc(Shed::H2Connection);
        }
        c.evict(&mut self.counts);
        true
    }

    /// Releases what a connection leaving the table held.
    fn released(&mut self, c: &H2Conn) {
        self.buffered = self.buffered.saturating_sub(c.buffered());
        let budget = &self.counts.budget;
        budget.release(MemoryPart::Buffers, c.buffered());
        budget.release(MemoryPart::Requests, c.charged());
        budget.release(MemoryPart::Connections, conn_cost::<K>());
    }

    pub fn traffic(&self) -> &H2Traffic {
        &self.counts.traffic
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.conns.contains_key(key)
    }

    /// Starts tracking `key`, whose read direction begins with the preface. A connection
    /// already tracked under the key (its close was lost) ends first.
    pub fn open(&mut self, key: K, ts: u64, out: &mut Vec<H2Event>) {
        self.close(key, ts, out);
        while self.conns.len() >= self.max_connections {
            if !self.evict_oldest(false) {
                break;
            }
        }
        self.counts
            .budget
            .charge(MemoryPart::Connections, conn_cost::<K>());
        self.counts.traffic.connections += 1;
        self.conns.insert(key, H2Conn::new(ts));
    }

    /// A record of a tracked connection (`false` when `key` is not tracked).
    pub fn feed(
        &mut self,
        key: K,
        dir: usize,
        ts: u64,
        bytes: &[u8],
        total_len: u64,
        out: &mut Vec<H2Event>,
    ) -> bool {
        let Some(c) = self.conns.get_mut(&key) else {
            return false;
        };
        let before = c.buffered();
        let counts = &mut self.counts;
        c.feed(dir, ts, bytes, total_len, counts, out);
        let after = c.buffered();
        self.buffered = (self.buffered + after).saturating_sub(before);
        let over_budget = after > before && !counts.budget.fits(after - before);
        if self.buffered > MAX_BUFFERED || over_budget {
            if over_budget {
                // The streams it drops were shed for the budget's sake.
                counts
                    .metrics
                    .shed
                    .inc_by(Shed::RequestEvicted, c.waiting() as u64);
            }
            let held = c.buffered();
            c.lose(dir, Unclassified::BufferLimit, counts);
            self.buffered = self
                .buffered
                .saturating_sub(held.saturating_sub(c.buffered()));
        }
        counts
            .budget
            .adjust(MemoryPart::Buffers, before, c.buffered());
        c.settle(&counts.budget);
        true
    }

    /// The connection closed: its open streams end.
    pub fn close(&mut self, key: K, ts: u64, out: &mut Vec<H2Event>) -> bool {
        let Some(c) = self.conns.remove(&key) else {
            return false;
        };
        self.released(&c);
        c.end(ts, out);
        true
    }

    /// Sheds streams opened before `cutoff` that still wait. Returns how many.
    pub fn shed_aged(&mut self, cutoff: u64) -> u64 {
        let budget = &self.counts.budget;
        let shed: u64 = self
            .conns
            .values_mut()
            .map(|c| c.shed_aged(cutoff, budget))
            .sum();
        self.counts.metrics.shed.inc_by(Shed::RequestAged, shed);
        shed
    }

    /// Ends connections idle since before `horizon`.
    pub fn expire(&mut self, horizon: u64, out: &mut Vec<H2Event>) {
        let stale: Vec<K> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_seen < horizon)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.close(k, horizon, out);
        }
    }
}
