//! WebSocket upgrades: outcomes, resets, early closes, and the upstream leg's upgrade.

use crate::harness::*;

#[test]
fn websocket_outcomes() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    // Signed probe checks (a probe's closing WebSocket is no early close).
    let probe_ua = http::probe_check_user_agent("0.1", 1);
    let probe_ua_2 = http::probe_check_user_agent("0.1", 2);
    // Upgraded, frames flow, closed after 30 s: not an early close.
    h.data(
        o,
        5,
        Direction::Read,
        &fixture("traefik_ws_upgrade_101.req.bin"),
    );
    h.data(
        o,
        9,
        Direction::Write,
        &fixture("traefik_upstream_ws_request.bin"),
    );
    h.data(o, 9, Direction::Read, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi");
    h.data(
        o,
        5,
        Direction::Write,
        &fixture("traefik_ws_upgrade_101.bin"),
    );
    h.data(o, 5, Direction::Read, b"\x81\x85\x01\x02\x03\x04ifmmp");
    h.data(o, 9, Direction::Write, b"\x81\x85\x01\x02\x03\x04ifmmp");
    h.ts += 30 * S;
    h.close(o, 5, true);
    h.close(o, 9, true);
    // Upgraded by a probe, closed after 2 s: the probe's own close, no early close.
    h.data(o, 6, Direction::Read, &ws_request(APP, &probe_ua));
    h.data(
        o,
        6,
        Direction::Write,
        &fixture("traefik_ws_upgrade_101.bin"),
    );
    h.ts += 2 * S;
    h.close(o, 6, true);
    // Upgraded by a browser, closed after 2 s: early close.
    h.data(o, 13, Direction::Read, &ws_request(APP, "browser"));
    h.data(
        o,
        13,
        Direction::Write,
        &fixture("traefik_ws_upgrade_101.bin"),
    );
    h.ts += 2 * S;
    h.close(o, 13, true);
    // Router miss, backend refused (502), no server (503), reset before any answer.
    h.data(o, 7, Direction::Read, &ws_request(TERM, "browser"));
    h.data(
        o,
        7,
        Direction::Write,
        &fixture("traefik_ws_router_miss.bin"),
    );
    h.data(o, 8, Direction::Read, &ws_request(APP, "browser"));
    h.data(
        o,
        8,
        Direction::Write,
        &fixture("traefik_ws_502_refused.bin"),
    );
    h.data(o, 8, Direction::Read, &ws_request(APP, "browser"));
    h.data(
        o,
        8,
        Direction::Write,
        &fixture("traefik_ws_503_no_server.bin"),
    );
    h.data(o, 11, Direction::Read, &ws_request(TERM, &probe_ua_2));
    h.close(o, 11, false);
    // Rejected by the backend (403).
    h.data(o, 12, Direction::Read, &ws_request(APP, "browser"));
    h.data(
        o,
        12,
        Direction::Write,
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
    );

    assert_eq!(h.ws("traefik-1", APP, "upgraded", "passive"), Some(2.0));
    assert_eq!(h.ws("traefik-1", APP, "upgraded", "probe"), Some(1.0));
    assert_eq!(h.ws("traefik-1", TERM, "router_miss", "passive"), Some(1.0));
    assert_eq!(h.ws("traefik-1", APP, "router_miss", "passive"), Some(0.0));
    assert_eq!(h.ws("traefik-1", APP, "failed", "passive"), Some(2.0));
    assert_eq!(h.ws("traefik-1", TERM, "reset", "probe"), Some(1.0));
    assert_eq!(h.ws("traefik-1", APP, "rejected", "passive"), Some(1.0));
    assert_eq!(
        h.value(
            "routeskew_ws_early_closes_total",
            &[
                ("replica", "traefik-1"),
                ("namespace", "traefik"),
                ("host", APP)
            ]
        ),
        Some(1.0)
    );
    // The HTTP side of the same exchanges.
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(2.0));
    assert_eq!(h.http("traefik-1", APP, "ok", "probe"), Some(1.0));
    assert_eq!(
        h.http("traefik-1", TERM, "router_miss", "passive"),
        Some(1.0)
    );
    assert_eq!(
        h.http("traefik-1", APP, "server_error", "passive"),
        Some(2.0)
    );
    assert_eq!(
        h.http("traefik-1", APP, "client_error", "passive"),
        Some(1.0)
    );
    // Frames after the upgrade were skipped, not parsed.
    assert_eq!(
        h.pipeline("skipped_data", &[("reason", "after_upgrade")]),
        2.0
    );
    assert_eq!(h.pipeline("parse_errors", &[("kind", "not_http")]), 0.0);
    assert_eq!(
        h.pipeline("parse_errors", &[("kind", "trailing_garbage")]),
        0.0
    );
}

#[test]
fn upstream_websocket_without_reported_101_is_not_an_anomaly() {
    let o = origin(1);
    let run = |upstream_responses: bool| {
        let mut h = Harness::new(
            PipelineConfig {
                known_hosts: vec![APP.into()],
                upstream_responses,
                ..PipelineConfig::default()
            },
            1,
        );
        h.data(o, 6, Direction::Read, &ws_request(APP, "browser"));
        h.data(
            o,
            901,
            Direction::Write,
            &fixture("traefik_upstream_ws_request.bin"),
        );
        h.data(
            o,
            6,
            Direction::Write,
            &fixture("traefik_ws_upgrade_101.bin"),
        );
        // The kernel saw the upstream's 101 and marked the connection.
        h.close(o, 901, true);
        h.close(o, 6, true);
        assert_eq!(h.ws("traefik-1", APP, "upgraded", "passive"), Some(1.0));
        h.pipeline("connection_anomalies", &[("kind", "unseen_upgrade")])
    };
    // Without upstream responses the 101 could not be seen: expected.
    assert_eq!(run(false), 0.0);
    // With them, a 101 the tracker missed is worth counting.
    assert_eq!(run(true), 1.0);
}
