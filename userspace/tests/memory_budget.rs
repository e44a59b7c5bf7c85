//! One memory budget (issue 16, item 3): the flow tracker under the two loads that used to
//! grow without bound, with the default budget.
//!
//! - 65,536 HTTP/1 connections, each with 50 requests pipelined behind a chunked response
//!   that never ends, for 600 s of one-second ticks (the connections stay active: a chunk
//!   every 60 s).
//! - 4,096 HTTP/2 connections with 256 streams each that are never answered (a PING every
//!   60 s keeps them alive).
//!
//! At every tick the accounted memory stays within the budget; at the end, every request
//! sent was either answered or is counted in `routeskew_pipeline_shed_total`, exactly,
//! and the heap the allocator reports grew by no more than the budget allows.
//!
//! Its own test binary, one test: the heap measurement (glibc's `mallinfo2`) sees no other
//! test's allocations.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use bytes::Bytes;
use loona_hpack::Encoder;
use routeskew::event::{ConnId, Direction, Event, EventKind, Origin};
use routeskew::pipeline::budget::{Budget, DEFAULT_BUDGET};
use routeskew::pipeline::flows::{FlowConfig, FlowEvent, Flows};
use routeskew::pipeline::metrics::{LabelValue, MemoryPart, PipelineMetrics, Shed};

const H1_CONNS: u32 = 65_536;
const PIPELINED: u64 = 50;
const H2_CONNS: u64 = 4_096;
const STREAMS: u32 = 256;
const TICKS: u64 = 600;
const SEC: u64 = 1_000_000_000;
const ORIGIN: Origin = Origin {
    tgid: 4242,
    cgroup_id: 7,
};

/// Heap bytes in use (small chunks and mmapped ones).
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

fn data(ts_ns: u64, conn: ConnId, direction: Direction, bytes: &[u8]) -> Event {
    Event {
        ts_ns,
        origin: ORIGIN,
        kind: EventKind::Data {
            conn,
            direction,
            total_len: bytes.len() as u64,
            bytes: Bytes::copy_from_slice(bytes),
        },
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.extend_from_slice(&[kind, flags]);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

struct Run {
    flows: Flows,
    budget: Budget,
    metrics: PipelineMetrics,
    out: Vec<FlowEvent>,
    exchanges: u64,
    peak: u64,
}

impl Run {
    fn feed(&mut self, ev: &Event) {
        self.flows.handle(ev, &mut self.out);
        self.exchanges += self
            .out
            .drain(..)
            .filter(|e| matches!(e, FlowEvent::Exchange { .. }))
            .count() as u64;
        self.check();
    }

    fn tick(&mut self, now: u64) {
        self.flows.tick(now);
        self.check();
    }

    fn check(&mut self) {
        let used = self.budget.used();
        self.peak = self.peak.max(used);
        assert!(used <= DEFAULT_BUDGET, "{used} bytes accounted");
    }

    fn shed(&self) -> u64 {
        [
            Shed::RequestRefused,
            Shed::RequestAged,
            Shed::RequestEvicted,
        ]
        .iter()
        .map(|s| self.metrics.shed.get(*s))
        .sum()
    }
}

fn http1(run: &mut Run, t0: u64) {
    let stream = b"GET /events HTTP/1.1\r\nHost: stream.test\r\n\r\n";
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let mut queued = Vec::new();
    for i in 0..PIPELINED {
        queued
            .extend_from_slice(format!("GET /q/{i} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes());
    }
    for fd in 0..H1_CONNS {
        let ts = t0 + u64::from(fd);
        run.feed(&data(ts, ConnId::Fd(fd), Direction::Read, stream));
        run.feed(&data(ts + 1, ConnId::Fd(fd), Direction::Write, head));
        run.feed(&data(ts + 2, ConnId::Fd(fd), Direction::Read, &queued));
    }
}

fn http2(run: &mut Run, t0: u64) {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for c in 0..H2_CONNS {
        let conn = ConnId::GoTls(0x1000_0000 + c * 64);
        let mut enc = Encoder::new();
        let mut bytes = preface.to_vec();
        bytes.extend(frame(4, 0, 0, &[]));
        for s in 0..STREAMS {
            let path = format!("/api/items/{s}");
            let block = enc.encode([
                (b":method".as_slice(), b"GET".as_slice()),
                (b":scheme", b"https"),
                (b":authority", b"h2.test"),
                (b":path", path.as_bytes()),
                (
                    b"user-agent",
                    b"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0",
                ),
                (b"accept-language", b"en-US,en;q=0.5"),
            ]);
            bytes.extend(frame(1, 0x5, 2 * s + 1, &block));
        }
        // After the HTTP/1 load: its connections are the least recently active.
        run.feed(&data(t0 + SEC + c, conn, Direction::Read, &bytes));
    }
}

#[test]
fn pipelined_and_unanswered_requests_stay_within_one_budget_and_every_shed_one_is_counted() {
    let metrics = PipelineMetrics::default();
    let budget = Budget::new(
        DEFAULT_BUDGET,
        metrics.memory.clone(),
        &metrics.memory_budget,
    );
    let before = heap_in_use();
    let mut run = Run {
        flows: Flows::new(FlowConfig::default(), metrics.clone(), budget.clone()),
        budget,
        metrics,
        out: Vec::new(),
        exchanges: 0,
        peak: 0,
    };
    let t0 = 1_000 * SEC;
    http1(&mut run, t0);
    http2(&mut run, t0);
    let grown = heap_in_use().saturating_sub(before);
    let accounted = run.budget.used();
    eprintln!(
        "after the load: accounted {accounted} bytes ({:?}), heap grew {grown} bytes, {} connections followed, shed so far {:?}",
        MemoryPart::ALL
            .iter()
            .map(|p| (p.as_str(), run.budget.charged(*p)))
            .collect::<Vec<_>>(),
        run.flows.connections(),
        run.metrics.shed,
    );
    // The accounting is of the state's real size: the heap did not outgrow it by more
    // than the allocator's own overhead.
    assert!(
        grown as u64 <= DEFAULT_BUDGET + DEFAULT_BUDGET / 4,
        "heap grew {grown} bytes, {accounted} accounted"
    );

    let chunk = b"5\r\nhello\r\n";
    let ping = frame(6, 0, 0, &[0; 8]);
    for s in 1..=TICKS {
        let now = t0 + s * SEC;
        if s % 60 == 0 {
            for fd in 0..H1_CONNS {
                run.feed(&data(now, ConnId::Fd(fd), Direction::Write, chunk));
            }
            for c in 0..H2_CONNS {
                let conn = ConnId::GoTls(0x1000_0000 + c * 64);
                run.feed(&data(now, conn, Direction::Read, &ping));
            }
        }
        run.tick(now);
    }

    let sent = u64::from(H1_CONNS) * PIPELINED + H2_CONNS * u64::from(STREAMS);
    eprintln!(
        "after {TICKS} s: peak {} of {DEFAULT_BUDGET} bytes accounted, now {}; {} exchanges; shed {:?}; evicted {:?}; h2 unclassified {:?}",
        run.peak,
        run.budget.used(),
        run.exchanges,
        run.metrics.shed,
        run.metrics.evicted_connections,
        run.metrics.h2_unclassified,
    );
    // Only the streaming responses were answered; every waiting request was shed and
    // counted once, whether refused, aged or lost with its connection.
    assert_eq!(run.exchanges, u64::from(H1_CONNS));
    assert_eq!(run.shed(), sent);
    assert!(run.metrics.shed.get(Shed::RequestAged) > 0);
    assert!(run.metrics.shed.get(Shed::RequestRefused) > 0);
    assert!(run.metrics.shed.get(Shed::Connection) > 0);
    // New HTTP/2 connections took the place of the least recently active HTTP/1 ones.
    assert_eq!(run.metrics.shed.get(Shed::H2Connection), 0);
    // What the aged requests held was given back (a connection keeps a few slots).
    let left = run.budget.charged(MemoryPart::Requests);
    assert!(
        left < DEFAULT_BUDGET / 64,
        "{left} bytes still charged to requests"
    );
}
