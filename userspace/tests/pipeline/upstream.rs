//! Upstream requests: corroboration records by default, pending requests when the
//! sensor reports upstream responses.

use crate::harness::*;

/// Upstream requests on one pooled backend connection, none answered as far as the sensor
/// tells (it does not report upstream responses by default), each for a client request
/// that got the backend's answer relayed.
fn pooled_requests_without_upstream_responses(h: &mut Harness, n: u32) {
    let o = origin(1);
    let ok = fixture("traefik_relayed_200.bin");
    for i in 0..n {
        let path = format!("/item/{i}");
        h.data(o, 5, Direction::Read, &client_request(APP, &path, "curl/8"));
        h.data(o, 900, Direction::Write, &upstream_request(APP, &path));
        h.data(o, 5, Direction::Write, &ok);
    }
}

#[test]
fn upstream_requests_only_corroborate_by_default() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    // More requests on the pooled connection than may be pending on one connection.
    pooled_requests_without_upstream_responses(&mut h, 100);
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(100.0));
    assert_eq!(h.pipeline("pending_overflow", &[]), 0.0);
    // They still corroborate: the router-miss bytes for a request Traefik forwarded are
    // a backend's 404 passed through …
    h.data(
        o,
        5,
        Direction::Read,
        &client_request(APP, "/gone", "curl/8"),
    );
    h.data(o, 900, Direction::Write, &upstream_request(APP, "/gone"));
    h.data(
        o,
        5,
        Direction::Write,
        &fixture("go_backend_direct_notfound_404.bin"),
    );
    assert_eq!(
        h.http("traefik-1", APP, "client_error", "passive"),
        Some(1.0)
    );
    assert_eq!(h.pipeline("signature_with_upstream", &[]), 1.0);
    // … and without one they are Traefik's own.
    h.missed(o, 5, TERM, "/token");
    assert_eq!(
        h.http("traefik-1", TERM, "router_miss", "passive"),
        Some(1.0)
    );
    // Closing the pooled connection leaves nothing unanswered, nothing unmatched.
    h.close(o, 900, false);
    h.close(o, 5, false);
    assert_eq!(
        h.pipeline("unanswered_requests", &[("leg", "upstream")]),
        0.0
    );
    assert_eq!(h.pipeline("unanswered_requests", &[("leg", "client")]), 0.0);
    assert_eq!(
        h.pipeline("unmatched_responses", &[("leg", "upstream")]),
        0.0
    );
    assert_eq!(h.value("routeskew_pipeline_connections", &[]), Some(0.0));
    let stats = h.p.traffic();
    assert_eq!(stats.upstream_requests, 101);
    assert_eq!(stats.upstream_responses, 0);
}

#[test]
fn upstream_requests_are_pending_when_responses_are_reported() {
    let mut h = Harness::new(
        PipelineConfig {
            known_hosts: vec![APP.into()],
            upstream_responses: true,
            ..PipelineConfig::default()
        },
        1,
    );
    // The same traffic, but the sensor is said to report upstream responses and none
    // came: every request beyond the per-connection bound overflows, and closing the
    // connection leaves the rest unanswered.
    pooled_requests_without_upstream_responses(&mut h, 100);
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(100.0));
    assert_eq!(h.pipeline("pending_overflow", &[]), 36.0);
    h.close(origin(1), 900, false);
    assert_eq!(
        h.pipeline("unanswered_requests", &[("leg", "upstream")]),
        64.0
    );
}

#[test]
fn upstream_responses_that_arrive_anyway_are_framed_not_paired() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    let ok = fixture("traefik_relayed_200.bin");
    // A response nobody waits for: counted, not unmatched.
    h.routed(o, 5, APP, "/", &ok, &ok);
    assert_eq!(
        h.pipeline("unmatched_responses", &[("leg", "upstream")]),
        0.0
    );
    assert_eq!(h.p.traffic().upstream_responses, 1);
    // A HEAD forwarded upstream: its answer announces a body it does not send, so the next
    // response on the connection is a response, not body bytes.
    let head_req = format!("HEAD /h HTTP/1.1\r\nHost: {APP}\r\nX-Forwarded-Host: {APP}\r\n\r\n");
    h.data(
        o,
        5,
        Direction::Read,
        format!("HEAD /h HTTP/1.1\r\nHost: {APP}\r\n\r\n").as_bytes(),
    );
    h.data(o, 900, Direction::Write, head_req.as_bytes());
    h.data(
        o,
        900,
        Direction::Read,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
    );
    h.data(
        o,
        5,
        Direction::Write,
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",
    );
    h.routed(o, 5, APP, "/after-head", &ok, &ok);
    assert_eq!(
        h.pipeline("skipped_data", &[("reason", "continuation")]),
        0.0
    );
    assert_eq!(h.p.traffic().upstream_responses, 3);
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(3.0));
    // A WebSocket upgrade whose upstream 101 is reported: the upstream connection
    // switches to frames like the client's.
    h.data(o, 6, Direction::Read, &ws_request(APP, "browser"));
    h.data(
        o,
        901,
        Direction::Write,
        &fixture("traefik_upstream_ws_request.bin"),
    );
    h.data(o, 901, Direction::Read, &fixture("traefik_rec_ws_101.bin"));
    h.data(
        o,
        6,
        Direction::Write,
        &fixture("traefik_ws_upgrade_101.bin"),
    );
    // What Traefik writes to the backend now is frames, not parsed.
    h.data(o, 901, Direction::Write, b"\x81\x85\x01\x02\x03\x04ifmmp");
    assert_eq!(
        h.pipeline("skipped_data", &[("reason", "after_upgrade")]),
        1.0
    );
    h.close(o, 901, true);
    h.close(o, 6, true);
    assert_eq!(
        h.pipeline("connection_anomalies", &[("kind", "unseen_upgrade")]),
        0.0
    );
    assert_eq!(h.ws("traefik-1", APP, "upgraded", "passive"), Some(1.0));
}
