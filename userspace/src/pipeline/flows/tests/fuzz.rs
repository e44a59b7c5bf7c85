//! Property tests of the HTTP/1 flow framing (issue 16): a conversation delivered in
//! syscalls cut anywhere pairs the same requests with the same responses as one delivered
//! message by message, and any event sequence is handled without a panic.

use proptest::prelude::*;

use super::*;
use crate::fuzz_support::{config, cut_points, cuts, mutated, pieces, raw, text_of};

/// One generated exchange: the request's host and method, the response's status.
#[derive(Debug, Clone)]
struct Turn {
    host: String,
    post: bool,
    status: u16,
    request: Vec<u8>,
    response: Vec<u8>,
}

fn turn() -> impl Strategy<Value = Turn> {
    (
        text_of(b"abcxyz019-", 1..10),
        any::<bool>(),
        proptest::sample::select(&[200u16, 204, 404, 500][..]),
        text_of(b"HTP/1. ab\r\n", 0..10),
        text_of(b"HTP/1. {}\r\n", 0..10),
    )
        .prop_map(|(h, post, status, req_body, body)| {
            let host = format!("h{}.test", String::from_utf8_lossy(&h));
            let req_body = if post { req_body } else { Vec::new() };
            let mut request = format!(
                "{} /p HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
                if post { "POST" } else { "GET" },
                req_body.len()
            )
            .into_bytes();
            request.extend_from_slice(&req_body);
            let body = if status == 204 { Vec::new() } else { body };
            let mut response = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            response.extend_from_slice(&body);
            Turn {
                host,
                post,
                status,
                request,
                response,
            }
        })
}

/// (host, method, status) of each exchange.
fn exchanges(out: &[FlowEvent]) -> Vec<(String, Method, u16)> {
    out.iter()
        .filter_map(|e| match e {
            FlowEvent::Exchange {
                request, response, ..
            } => Some((
                request.host.name().unwrap_or("-").to_string(),
                request.method,
                response.status,
            )),
            _ => None,
        })
        .collect()
}

/// A warm-up exchange so that the connection is followed: a connection is only tracked
/// from a syscall that holds a whole start line (see `garbage_is_counted_and_not_tracked`).
fn warm_up() -> Vec<Event> {
    vec![
        data(S, 5, Direction::Read, &req("w.test", "/")),
        data(S + 1, 5, Direction::Write, OK),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_flows_http1_split_anywhere(
        turns in proptest::collection::vec(turn(), 1..4),
        read_cuts in cut_points(4),
        write_cuts in cut_points(4),
    ) {
        let reads: Vec<u8> = turns.iter().flat_map(|t| t.request.clone()).collect();
        let writes: Vec<u8> = turns.iter().flat_map(|t| t.response.clone()).collect();
        let mut evs = warm_up();
        let mut ts = 2 * S;
        for p in pieces(&reads, &cuts(&read_cuts, reads.len())) {
            evs.push(data(ts, 5, Direction::Read, p));
            ts += 1;
        }
        for p in pieces(&writes, &cuts(&write_cuts, writes.len())) {
            evs.push(data(ts, 5, Direction::Write, p));
            ts += 1;
        }
        evs.push(close(ts, 5, false));
        let mut f = Flows::new(FlowConfig::default(), PipelineMetrics::default(), crate::pipeline::budget::Budget::unlimited());
        let got = exchanges(&run(&mut f, &evs));
        let mut want = vec![("w.test".to_string(), Method::Get, 200)];
        want.extend(turns.iter().map(|t| {
            let m = if t.post { Method::Post } else { Method::Get };
            (t.host.clone(), m, t.status)
        }));
        prop_assert_eq!(got, want);
        prop_assert_eq!(f.metrics.unanswered_requests.get(crate::pipeline::metrics::Leg::Client), 0);
        prop_assert_eq!(f.http1.stash_bytes(), 0);
    }

    /// Any sequence of captures, cut or not, on a few connections and both directions.
    #[test]
    fn fuzz_flows_any_events(
        evs in proptest::collection::vec(
            (
                0u32..3,
                any::<bool>(),
                prop_oneof![raw(40), mutated(turn().prop_map(|t| [t.request, t.response].concat()), 4)],
                prop_oneof![Just(0u64), 0u64..64, Just(u64::MAX / 2)],
                0u8..8,
            ),
            1..8,
        ),
    ) {
        let mut f = Flows::new(
            FlowConfig { max_connections: 2, max_pending_per_conn: 2, ..FlowConfig::default() },
            PipelineMetrics::default(),
            crate::pipeline::budget::Budget::unlimited(),
        );
        let mut out = Vec::new();
        for (i, (fd, read, bytes, extra, op)) in evs.into_iter().enumerate() {
            let ts = S + i as u64;
            let dir = if read { Direction::Read } else { Direction::Write };
            let ev = match op {
                0 => close(ts, fd, read),
                _ => Event {
                    ts_ns: ts,
                    origin: O,
                    kind: EventKind::Data {
                        conn: ConnId::Fd(fd),
                        direction: dir,
                        total_len: bytes.len() as u64 + extra,
                        bytes: bytes::Bytes::from(bytes),
                    },
                },
            };
            f.handle(&ev, &mut out);
            if op == 1 {
                f.tick(ts + 3600 * S);
            }
        }
        prop_assert!(f.connections() <= 2);
    }
}

/// Found by `fuzz_flows_http1_split_anywhere`: on a followed connection, a message whose
/// first syscall ended inside its start line was dropped (counted as too short, and the
/// rest skipped as a continuation) instead of being joined with the next syscall.
#[test]
fn a_start_line_split_on_a_followed_connection_is_joined() {
    for cut in 1..12 {
        let mut f = Flows::new(
            FlowConfig::default(),
            PipelineMetrics::default(),
            crate::pipeline::budget::Budget::unlimited(),
        );
        let mut evs = warm_up();
        let r = req("a.test", "/x");
        evs.push(data(2 * S, 5, Direction::Read, &r[..cut.min(r.len())]));
        evs.push(data(2 * S + 1, 5, Direction::Read, &r[cut.min(r.len())..]));
        evs.push(data(3 * S, 5, Direction::Write, &MISS[..cut]));
        evs.push(data(3 * S + 1, 5, Direction::Write, &MISS[cut..]));
        let got = exchanges(&run(&mut f, &evs));
        assert_eq!(
            got,
            [
                ("w.test".to_string(), Method::Get, 200),
                ("a.test".to_string(), Method::Get, 404)
            ],
            "cut at {cut}"
        );
        assert_eq!(f.metrics.parse_errors.get(ParseError::TooShort), 0);
    }
}
