use std::time::Duration;

use super::*;
use crate::event::UpstreamFailureReason;
use crate::pipeline::http::{self, Method, ParseError};
use crate::pipeline::metrics::{Eviction, Skip};

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
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
    let upstream = b"GET /x HTTP/1.1\r\nHost: 10.0.0.5:8080\r\nX-Forwarded-Host: a.test\r\n\r\n";
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
    let ws =
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let r101 = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02hi";
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
    let ws =
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
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
    let mut f = Flows::new(
        cfg,
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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

mod budget;
mod framing;
mod fuzz;
