//! Request heads the semantic sensor copies for answers of 300 or more: an upgrade
//! request's answer becomes its WebSocket outcome; anything else, another request's head
//! or junk is counted by what it was and yields no outcome. The agent's own WebSocket
//! probes, settled by counts, get their outcome from their reports. WebSocket sessions
//! it timed: early closes.

use crate::harness::*;
use crate::probes::probe_report;
use crate::semantic::counted;
use routeskew::event::CopiedHead;
use routeskew::hosts::normalize_host;

fn head(h: &mut Harness, o: Origin, host_hash: u64, status: u16, miss: bool, bytes: &[u8]) {
    let ts = h.step();
    h.p.handle(&Event {
        ts_ns: ts,
        origin: o,
        kind: EventKind::Head(CopiedHead {
            host_hash,
            status,
            router_miss: miss,
            bytes: Bytes::copy_from_slice(bytes),
        }),
    });
}

fn heads(h: &Harness, result: &str) -> f64 {
    h.pipeline("request_heads", &[("result", result)])
}

#[test]
fn copied_upgrade_heads_become_websocket_outcomes() {
    let mut h = Harness::with_hosts(2);
    let (r1, r2) = (origin(1), origin(2));
    let app = routeskew_common::host_hash(APP.as_bytes());
    let ws = ws_request(APP, "Mozilla/5.0");
    head(&mut h, r2, app, 404, true, &ws);
    head(&mut h, r1, app, 403, false, &ws);
    head(&mut h, r1, app, 502, false, &ws);
    // A head with what followed it in the buffer (a body, the next request).
    let mut more = ws.clone();
    more.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    head(&mut h, r1, app, 503, false, &more);
    assert_eq!(h.ws("traefik-2", APP, "router_miss", "passive"), Some(1.0));
    assert_eq!(h.ws("traefik-1", APP, "rejected", "passive"), Some(1.0));
    assert_eq!(h.ws("traefik-1", APP, "failed", "passive"), Some(2.0));
    // An unknown Host: the kernel counted it under `other` (hash 0).
    head(&mut h, r1, 0, 404, true, &ws_request("elsewhere.test", "x"));
    assert_eq!(
        h.ws("traefik-1", "other", "router_miss", "passive"),
        Some(1.0)
    );
    assert_eq!(heads(&h, "websocket"), 5.0);
    // The responses themselves come from the counts, never from heads.
    assert_eq!(
        h.http("traefik-2", APP, "router_miss", "passive")
            .unwrap_or(0.0),
        0.0
    );
}

#[test]
fn other_heads_are_counted_and_yield_no_outcome() {
    let mut h = Harness::with_hosts(1);
    let r1 = origin(1);
    let app = routeskew_common::host_hash(APP.as_bytes());
    let plain = client_request(APP, "/", "curl/8");
    head(&mut h, r1, app, 404, true, &plain);
    // Another request's head: its Host is not the one counted.
    head(&mut h, r1, app, 404, true, &ws_request(TERM, "x"));
    head(&mut h, r1, 0, 404, true, &ws_request(APP, "x"));
    // Cut before the Upgrade line: unknown, not guessed.
    let ws = ws_request(APP, "x");
    let cut = ws.windows(8).position(|w| w == b"Upgrade:").unwrap();
    head(&mut h, r1, app, 404, true, &ws[..cut]);
    head(&mut h, r1, app, 404, true, b"\x16\x03\x01\x02\x00junk");
    head(&mut h, r1, app, 404, true, b"");
    assert_eq!(heads(&h, "not_upgrade"), 1.0);
    assert_eq!(heads(&h, "other_request"), 2.0);
    assert_eq!(heads(&h, "truncated"), 1.0);
    assert_eq!(heads(&h, "unparsed"), 2.0);
    assert_eq!(heads(&h, "websocket"), 0.0);
    for outcome in ["router_miss", "rejected", "failed", "upgraded"] {
        assert_eq!(
            h.ws("traefik-1", APP, outcome, "passive").unwrap_or(0.0),
            0.0,
            "{outcome}"
        );
    }
}

#[test]
fn websocket_probes_settled_by_counts_get_their_outcome_from_the_report() {
    let mut h = Harness::with_app(|c| c.probe_deadline = Duration::from_secs(2));
    let r1 = origin(1);
    let app = normalize_host(APP.as_bytes());
    let miss = fixture("traefik_router_miss_404.bin");
    // Report first, then the count (confirmed); count first, then the report (credit).
    probe_report(
        &mut h,
        r1,
        1,
        ProbeCheck::WebSocket,
        APP,
        Some(miss.clone()),
    );
    counted(&mut h, r1, app.clone(), 404, (true, true, false), 1);
    counted(&mut h, r1, app.clone(), 404, (true, true, false), 1);
    probe_report(
        &mut h,
        r1,
        2,
        ProbeCheck::WebSocket,
        APP,
        Some(miss.clone()),
    );
    // An HTTP check with the same answer is no upgrade.
    probe_report(&mut h, r1, 3, ProbeCheck::Http, APP, Some(miss));
    counted(&mut h, r1, app, 404, (true, true, false), 1);
    let ts = h.step();
    h.p.tick(ts + 10 * S);
    assert_eq!(h.http("traefik-1", APP, "router_miss", "probe"), Some(3.0));
    assert_eq!(h.ws("traefik-1", APP, "router_miss", "probe"), Some(2.0));
    assert_eq!(h.p.probe_stats().confirmed, 3);
    assert_eq!(h.p.probe_stats().missed, 0);
}

#[test]
fn sessions_closed_inside_the_window_are_early_closes() {
    let mut h = Harness::with_app(|c| c.ws_early_close = Duration::from_secs(10));
    let r1 = origin(1);
    let app = routeskew_common::host_hash(APP.as_bytes());
    for (host_hash, open_ns) in [
        (app, 2 * S),
        (app, 10 * S - 1),
        (app, 10 * S),
        (0, MS),
        (7, MS),
    ] {
        let ts = h.step();
        h.p.handle(&Event {
            ts_ns: ts,
            origin: r1,
            kind: EventKind::WsClosed { host_hash, open_ns },
        });
    }
    let early = |host: &str| {
        h.value(
            "routeskew_ws_early_closes_total",
            &[
                ("replica", "traefik-1"),
                ("namespace", "traefik"),
                ("host", host),
            ],
        )
    };
    assert_eq!(early(APP), Some(2.0));
    // Not published (0) or no longer known: `other`.
    assert_eq!(early("other"), Some(2.0));
}
