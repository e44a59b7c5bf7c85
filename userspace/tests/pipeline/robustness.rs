//! What the sensor may hand over that is not a clean exchange: refused upstreams, fd
//! reuse, unknown origins, hostile and truncated input, and the memory bounds.

use crate::harness::*;

#[test]
fn refused_upstream_is_a_server_error_and_a_connect_failure() {
    // Upstream requests are only counted unanswered when the sensor reports upstream
    // responses, so this runs with them on (see the tests at the end for the default).
    let mut h = Harness::new(
        PipelineConfig {
            known_hosts: vec![APP.into(), TERM.into()],
            upstream_responses: true,
            ..PipelineConfig::default()
        },
        2,
    );
    let o = origin(2);
    h.data(o, 5, Direction::Read, &client_request(APP, "/x", "curl/8"));
    h.upstream_failure(o, UpstreamFailureReason::Refused);
    h.data(o, 5, Direction::Write, &fixture("traefik_502_refused.bin"));
    h.data(
        o,
        5,
        Direction::Read,
        &client_request(APP, "/slow", "curl/8"),
    );
    h.data(o, 900, Direction::Write, &upstream_request(APP, "/slow"));
    h.data(
        o,
        5,
        Direction::Write,
        &fixture("traefik_504_header_timeout.bin"),
    );
    h.close(o, 900, false);
    h.data(o, 6, Direction::Read, &client_request(APP, "/x", "curl/8"));
    h.data(
        o,
        6,
        Direction::Write,
        &fixture("traefik_503_no_server.bin"),
    );
    assert_eq!(
        h.http("traefik-2", APP, "server_error", "passive"),
        Some(3.0)
    );
    let failures = |h: &Harness, replica: &str, reason: &str| {
        h.value(
            "routeskew_upstream_connect_failures_total",
            &[
                ("replica", replica),
                ("namespace", "traefik"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(failures(&h, "traefik-2", "refused"), Some(1.0));
    assert_eq!(failures(&h, "traefik-2", "timeout"), Some(0.0));
    assert_eq!(failures(&h, "traefik-1", "refused"), Some(0.0));
    // The upstream connection of the 504 closed with its request unanswered.
    assert_eq!(
        h.pipeline("unanswered_requests", &[("leg", "upstream")]),
        1.0
    );
}

#[test]
fn fd_reuse_starts_a_new_connection() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    h.data(o, 5, Direction::Read, &client_request(APP, "/", "curl/8"));
    h.close(o, 5, false);
    // New connection on the same fd: the old request must not take this response.
    h.data(o, 5, Direction::Read, &client_request(TERM, "/", "curl/8"));
    h.data(
        o,
        5,
        Direction::Write,
        &fixture("traefik_router_miss_404.bin"),
    );
    h.close(o, 5, false);
    // An upgraded connection whose Close was lost, fd reused for plain HTTP.
    h.data(o, 5, Direction::Read, &ws_request(APP, "b"));
    h.data(
        o,
        5,
        Direction::Write,
        &fixture("traefik_ws_upgrade_101.bin"),
    );
    h.data(
        o,
        5,
        Direction::Read,
        &client_request(APP, "/after", "curl/8"),
    );
    h.data(o, 5, Direction::Write, &fixture("traefik_relayed_200.bin"));
    assert_eq!(
        h.http("traefik-1", TERM, "router_miss", "passive"),
        Some(1.0)
    );
    assert_eq!(
        h.http("traefik-1", APP, "router_miss", "passive"),
        Some(0.0)
    );
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(2.0));
    assert_eq!(h.pipeline("unanswered_requests", &[("leg", "client")]), 1.0);
    assert_eq!(
        h.pipeline("connection_anomalies", &[("kind", "reused_without_close")]),
        1.0
    );
}

#[test]
fn memory_stays_bounded() {
    let mut h = Harness::new(
        PipelineConfig {
            max_connections: 4,
            max_pending_per_conn: 2,
            idle_timeout: Duration::from_secs(60),
            ..PipelineConfig::default()
        },
        1,
    );
    let o = origin(1);
    for fd in 0..10 {
        h.data(o, fd, Direction::Read, &client_request(APP, "/", "curl/8"));
    }
    assert_eq!(h.value("routeskew_pipeline_connections", &[]), Some(4.0));
    assert_eq!(
        h.pipeline("evicted_connections", &[("reason", "capacity")]),
        6.0
    );
    // Pipelined beyond the pending bound.
    let mut burst = Vec::new();
    for _ in 0..5 {
        burst.extend(client_request(APP, "/", "curl/8"));
    }
    h.data(o, 9, Direction::Read, &burst);
    assert_eq!(h.pipeline("pending_overflow", &[]), 4.0);
    // A response on an evicted connection has nothing to pair with.
    h.data(o, 0, Direction::Write, &fixture("traefik_relayed_200.bin"));
    assert_eq!(h.pipeline("unmatched_responses", &[("leg", "client")]), 1.0);
    // Tracking that response's connection evicted one more.
    assert_eq!(
        h.pipeline("evicted_connections", &[("reason", "capacity")]),
        7.0
    );
    h.p.tick(h.ts + 61 * S);
    assert_eq!(h.value("routeskew_pipeline_connections", &[]), Some(0.0));
    assert_eq!(
        h.pipeline("evicted_connections", &[("reason", "idle")]),
        4.0
    );
}

#[test]
fn unknown_origins_are_counted_not_labelled() {
    let mut h = Harness::with_hosts(1);
    let stranger = Origin {
        tgid: 4242,
        cgroup_id: 99,
    };
    h.missed(stranger, 5, APP, "/");
    h.upstream_failure(stranger, UpstreamFailureReason::Reset);
    assert_eq!(h.pipeline("unknown_origin_events", &[]), 3.0);
    assert_eq!(
        h.pipeline("dropped_observations", &[("reason", "unknown_origin")]),
        2.0
    );
    assert!(!h.text().contains("4242"));
    assert_eq!(
        h.http("traefik-1", APP, "router_miss", "passive"),
        Some(0.0)
    );
    // A request read before discovery knew the replica is still counted once it is known.
    let late = origin(7);
    h.data(
        late,
        5,
        Direction::Read,
        &client_request(APP, "/", "curl/8"),
    );
    h.p.set_targets(TargetSet::new(vec![target(1), target(7)]));
    h.data(
        late,
        5,
        Direction::Write,
        &fixture("traefik_router_miss_404.bin"),
    );
    assert_eq!(
        h.http("traefik-7", APP, "router_miss", "passive"),
        Some(1.0)
    );
}

#[test]
fn hostile_and_broken_input() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    let miss = fixture("traefik_router_miss_404.bin");
    let long_host = format!("{}.example.test", "a".repeat(2000));
    for req in [
        format!("GET / HTTP/1.1\r\nHost: {long_host}\r\n\r\n").into_bytes(),
        b"GET / HTTP/1.1\r\nHost: app.example.test\x07\r\n\r\n".to_vec(),
        "GET / HTTP/1.1\r\nHost: \u{430}pp.example.test\r\n\r\n"
            .as_bytes()
            .to_vec(),
        b"GET / HTTP/1.1\r\nHost: app.example.test/../x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n".to_vec(),
    ] {
        // Cut like the sensor does (1 KiB).
        let cap = req.len().min(1024);
        h.data_cut(o, 5, Direction::Read, &req, cap);
        h.data(o, 5, Direction::Write, &miss);
    }
    assert_eq!(
        h.http("traefik-1", "other", "router_miss", "passive"),
        Some(6.0)
    );
    assert_eq!(
        h.http("traefik-1", APP, "router_miss", "passive"),
        Some(0.0)
    );
    // The over-long Host is cut by the 1 KiB capture, so it is missing rather than invalid
    // (the label is `other` either way).
    assert_eq!(h.pipeline("invalid_hosts", &[]), 3.0);
    assert_eq!(h.pipeline("truncated_heads", &[]), 1.0);
    assert!(!h.text().contains("evil"));
    // Binary junk and TLS on a plaintext hook are counted, not tracked.
    h.data(
        o,
        20,
        Direction::Read,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    );
    h.data(o, 21, Direction::Read, &[0u8; 64]);
    h.data(o, 22, Direction::Write, b"HTTP/1.1 99");
    h.data(
        o,
        23,
        Direction::Read,
        b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r",
    );
    assert_eq!(h.pipeline("parse_errors", &[("kind", "not_http")]), 2.0);
    assert_eq!(h.pipeline("parse_errors", &[("kind", "too_short")]), 1.0);
    // fd 5, and fd 23 whose request line was fine.
    assert_eq!(h.value("routeskew_pipeline_connections", &[]), Some(2.0));
}

#[test]
fn truncated_captures_and_split_syscalls() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    let miss = fixture("traefik_router_miss_404.bin");
    // The capture stopped inside the body: decided on headers, counted.
    h.data(o, 5, Direction::Read, &client_request(TERM, "/a", "curl/8"));
    h.data_cut(o, 5, Direction::Write, &miss, miss.len() - 10);
    // A HEAD request: Traefik sends the head only.
    h.data(
        o,
        5,
        Direction::Read,
        format!("HEAD /a HTTP/1.1\r\nHost: {TERM}\r\n\r\n").as_bytes(),
    );
    h.data(
        o,
        5,
        Direction::Write,
        &fixture("traefik_router_miss_404_head.bin"),
    );
    assert_eq!(
        h.http("traefik-1", TERM, "router_miss", "passive"),
        Some(2.0)
    );
    assert_eq!(h.pipeline("signature_without_body", &[]), 2.0);
    // A request head split over two reads: the second read continues it.
    let req = client_request(APP, "/split", "curl/8");
    h.data(o, 6, Direction::Read, &req[..30]);
    h.data(o, 6, Direction::Read, &req[30..]);
    // A chunked response written in pieces, then the next exchange on the connection.
    h.data(
        o,
        6,
        Direction::Write,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    h.data(o, 6, Direction::Write, b"7\r\npart 0\r\n");
    h.data(o, 6, Direction::Write, b"0\r\n\r\n");
    h.data(
        o,
        6,
        Direction::Read,
        &client_request(APP, "/next", "curl/8"),
    );
    h.data(
        o,
        6,
        Direction::Write,
        &fixture("traefik_relayed_chunked_200.bin"),
    );
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(2.0));
    assert_eq!(
        h.pipeline("skipped_data", &[("reason", "continuation")]),
        3.0
    );
    // The split head was joined, so nothing was truncated.
    assert_eq!(h.pipeline("truncated_heads", &[]), 0.0);
    assert_eq!(h.pipeline("unmatched_responses", &[("leg", "client")]), 0.0);
}
