//! Message framing across syscalls (bodies, split heads, HEAD, interim responses,
//! garbage) and the bounds on pending requests and the recency queue.

use super::*;

#[test]
fn pending_is_bounded() {
    let cfg = FlowConfig {
        max_pending_per_conn: 2,
        ..FlowConfig::default()
    };
    let mut f = Flows::new(
        cfg,
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    assert_eq!(f.http1.stash_bytes(), 0);
}

#[test]
fn pipelined_request_split_in_its_first_bytes() {
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
    assert!(f.upstream.len_of(O.tgid).is_none());
}

#[test]
fn upstream_requests_are_not_pending_without_responses() {
    let upstream = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let traffic: Vec<Event> = (0..200u64)
        .map(|i| data(S + i, 9, Direction::Write, upstream))
        .chain(std::iter::once(close(2 * S, 9, false)))
        .collect();
    let mut f = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
    assert!(run(&mut f, &traffic).is_empty());
    assert_eq!(f.traffic().upstream_requests, 200);
    assert_eq!(f.metrics.pending_overflow.get(), 0);
    assert_eq!(f.metrics.unanswered_requests.get(Leg::Upstream), 0);
    assert_eq!(
        f.metrics.connection_anomalies.get(Anomaly::UnseenUpgrade),
        0
    );
    // Still logged for corroboration (bounded per process).
    assert_eq!(f.upstream.len_of(O.tgid), Some(200));
    let mut f = Flows::new(
        FlowConfig {
            upstream_responses: true,
            ..FlowConfig::default()
        },
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
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
    let mut f = Flows::new(
        cfg,
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
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
        assert!(f.http1.queue_len() <= 2 * f.connections() + http1::AGE_SLACK + 1);
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
    assert!(f.http1.tracks(&(O.tgid, ConnId::Fd(1))));
    let gone: Vec<u32> = (2..=4)
        .filter(|fd| !f.http1.tracks(&(O.tgid, ConnId::Fd(*fd))))
        .collect();
    // Round 19_999 touched fd 2 + 19_999 % 3 = 3, round 19_997 fd 4, round 19_995 fd 2.
    assert_eq!(gone, [2]);
}
