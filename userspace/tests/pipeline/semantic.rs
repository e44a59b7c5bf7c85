//! The semantic sensor's folded kernel counts: counted in the same families as captured
//! exchanges, upgrades as WebSocket outcomes, probe responses settled with the prober's
//! reports by (replica, host, status), housekeeping never counted.

use crate::harness::*;
use routeskew::event::{ProbeAnswer, ResponseCount};
use routeskew::hosts::{normalize_host, Host};

pub(crate) fn counted(
    h: &mut Harness,
    o: Origin,
    host: Host,
    status: u16,
    flags: (bool, bool, bool),
    n: u64,
) {
    let (router_miss, probe, upgrade) = flags;
    let ts = h.step();
    h.p.handle(&Event {
        ts_ns: ts,
        origin: o,
        kind: EventKind::Responses(ResponseCount {
            host,
            status,
            router_miss,
            h2: false,
            probe,
            upgrade,
            housekeeping: false,
            count: n,
        }),
    });
}

fn report(h: &mut Harness, o: Origin, id: u64, check: ProbeCheck, status: u16) {
    let ts = h.step();
    h.p.handle(&Event {
        ts_ns: ts,
        origin: o,
        kind: EventKind::Probe(Box::new(ProbeReport {
            id,
            check,
            host: APP.into(),
            response: Some(ProbeAnswer {
                status,
                reason: String::new(),
                headers: ::http::HeaderMap::new(),
                body_prefix: Bytes::new(),
            }),
            elapsed: Duration::from_millis(2),
        })),
    });
}

#[test]
fn counted_responses_land_in_the_contract_families() {
    let mut h = Harness::with_hosts(2);
    let (r1, r2) = (origin(1), origin(2));
    let app = normalize_host(APP.as_bytes());
    counted(&mut h, r1, app.clone(), 200, (false, false, false), 7);
    counted(&mut h, r2, app.clone(), 404, (true, false, false), 3);
    counted(&mut h, r2, app.clone(), 404, (false, false, false), 2);
    counted(&mut h, r1, Host::Missing, 503, (false, false, false), 4);
    counted(&mut h, r1, app.clone(), 101, (false, false, true), 5);
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(12.0));
    assert_eq!(
        h.http("traefik-2", APP, "router_miss", "passive"),
        Some(3.0)
    );
    assert_eq!(
        h.http("traefik-2", APP, "client_error", "passive"),
        Some(2.0)
    );
    assert_eq!(
        h.http("traefik-1", "other", "server_error", "passive"),
        Some(4.0)
    );
    assert_eq!(h.ws("traefik-1", APP, "upgraded", "passive"), Some(5.0));
    // An origin that is no replica is dropped and counted, all of its responses.
    counted(&mut h, origin(9), app, 200, (false, false, false), 6);
    assert_eq!(
        h.pipeline("dropped_observations", &[("reason", "unknown_origin")]),
        6.0
    );
}

#[test]
fn probe_counts_settle_with_the_reports_and_housekeeping_is_dropped() {
    let mut h = Harness::with_app(|c| c.probe_deadline = Duration::from_secs(2));
    let r1 = origin(1);
    let app = normalize_host(APP.as_bytes());
    report(&mut h, r1, 1, ProbeCheck::Http, 200);
    report(&mut h, r1, 2, ProbeCheck::WebSocket, 101);
    counted(&mut h, r1, app.clone(), 200, (false, true, false), 1);
    counted(&mut h, r1, app.clone(), 101, (false, true, true), 1);
    let ts = h.step();
    h.p.handle(&Event {
        ts_ns: ts,
        origin: r1,
        kind: EventKind::Responses(ResponseCount {
            host: app,
            status: 200,
            router_miss: false,
            h2: false,
            probe: false,
            upgrade: false,
            housekeeping: true,
            count: 9,
        }),
    });
    h.p.tick(ts + 10 * S);
    assert_eq!(h.http("traefik-1", APP, "ok", "probe"), Some(2.0));
    assert_eq!(h.ws("traefik-1", APP, "upgraded", "probe"), Some(1.0));
    assert_eq!(
        h.http("traefik-1", APP, "ok", "passive").unwrap_or(0.0),
        0.0
    );
    assert_eq!(h.p.probe_stats().confirmed, 2);
    assert_eq!(h.p.probe_stats().missed, 0);
    assert_eq!(h.p.housekeeping_exchanges(), 9);
    assert_eq!(
        h.value(
            "routeskew_sensor_blind_probes_total",
            &[("replica", "traefik-1"), ("namespace", "traefik")],
        ),
        Some(0.0)
    );
}
