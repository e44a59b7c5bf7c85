//! The prober's exchanges: counted once as `source="probe"`, blindness counted, the
//! agent's housekeeping never counted.

use crate::harness::*;
use routeskew::event::ProbeAnswer;

pub(crate) fn probe_report(
    h: &mut Harness,
    o: Origin,
    id: u64,
    check: ProbeCheck,
    host: &str,
    response: Option<Vec<u8>>,
) {
    let ts = h.step();
    h.p.handle(&Event {
        ts_ns: ts,
        origin: o,
        kind: EventKind::Probe(Box::new(ProbeReport {
            id,
            check,
            host: host.into(),
            response: response.as_deref().map(client_answer),
            elapsed: std::time::Duration::from_millis(2),
        })),
    });
}

/// What the prober's HTTP client makes of `raw`: status, reason, headers in wire order,
/// the body that follows.
fn client_answer(raw: &[u8]) -> ProbeAnswer {
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Response::new(&mut slots);
    let Ok(httparse::Status::Complete(n)) = r.parse(raw) else {
        panic!("test responses are complete");
    };
    let mut headers = ::http::HeaderMap::new();
    for h in r.headers.iter() {
        headers.append(
            ::http::HeaderName::from_bytes(h.name.as_bytes()).expect("name"),
            ::http::HeaderValue::from_bytes(h.value).expect("value"),
        );
    }
    ProbeAnswer {
        status: r.code.expect("status"),
        reason: r.reason.unwrap_or_default().to_string(),
        headers,
        body_prefix: Bytes::copy_from_slice(&raw[n..]),
    }
}

fn blind(h: &Harness, replica: &str) -> Option<f64> {
    h.value(
        "routeskew_sensor_blind_probes_total",
        &[("replica", replica), ("namespace", "traefik")],
    )
}

/// Every answered probe is counted exactly once as `source="probe"`: from the kernel's
/// copy when it comes (before or after the prober's report), from the prober's report
/// when the kernel stays silent past the deadline (and then the sensor was blind).
#[test]
fn probes_are_counted_once_and_blindness_is_counted() {
    let mut h = Harness::new(
        PipelineConfig {
            known_hosts: vec![APP.into()],
            probe_deadline: Duration::from_millis(500),
            ..PipelineConfig::default()
        },
        2,
    );
    let (r1, r2) = (origin(1), origin(2));
    let miss = fixture("traefik_router_miss_404_keepalive.bin");
    assert_eq!(blind(&h, "traefik-1"), Some(0.0), "created at zero");

    // 1. Kernel first, then the prober's report.
    let ua = http::probe_check_user_agent("1.0", 1);
    h.data(r1, 10, Direction::Read, &client_request(APP, "/", &ua));
    h.data(r1, 10, Direction::Write, &miss);
    probe_report(&mut h, r1, 1, ProbeCheck::Http, APP, Some(miss.clone()));
    // 2. The prober's report first, the kernel's copy within the deadline.
    let ua = http::probe_check_user_agent("1.0", 2);
    probe_report(&mut h, r1, 2, ProbeCheck::Http, APP, Some(miss.clone()));
    h.data(r1, 11, Direction::Read, &client_request(APP, "/", &ua));
    h.data(r1, 11, Direction::Write, &miss);
    let now = h.step();
    h.p.expire_probes(now + 10 * S);
    assert_eq!(h.http("traefik-1", APP, "router_miss", "probe"), Some(2.0));
    assert_eq!(
        h.http("traefik-1", APP, "router_miss", "passive"),
        Some(0.0)
    );
    assert_eq!(blind(&h, "traefik-1"), Some(0.0));

    // 3. The kernel never reports probe 3 to traefik-2: blind, counted from the report.
    let ok = fixture("traefik_rec_200.bin");
    probe_report(&mut h, r2, 3, ProbeCheck::Http, APP, Some(ok.clone()));
    let t = h.step();
    h.p.expire_probes(t + 400 * MS);
    assert_eq!(blind(&h, "traefik-2"), Some(0.0), "not before the deadline");
    assert_eq!(h.http("traefik-2", APP, "ok", "probe"), None);
    h.p.expire_probes(t + 500 * MS);
    assert_eq!(blind(&h, "traefik-2"), Some(1.0));
    assert_eq!(h.http("traefik-2", APP, "ok", "probe"), Some(1.0));
    // Its late kernel copy is not counted again.
    let ua = http::probe_check_user_agent("1.0", 3);
    h.data(r2, 12, Direction::Read, &client_request(APP, "/", &ua));
    h.data(r2, 12, Direction::Write, &ok);
    assert_eq!(h.http("traefik-2", APP, "ok", "probe"), Some(1.0));
    assert_eq!(h.p.probe_stats().late, 1);

    // 4. A WebSocket probe: upgraded once, and its immediate close is no early close.
    let ua = http::probe_check_user_agent("1.0", 4);
    h.data(r1, 13, Direction::Read, &ws_request(APP, &ua));
    h.data(
        r1,
        13,
        Direction::Write,
        &fixture("traefik_ws_upgrade_101.bin"),
    );
    h.close(r1, 13, true);
    probe_report(
        &mut h,
        r1,
        4,
        ProbeCheck::WebSocket,
        APP,
        Some(fixture("traefik_ws_upgrade_101.bin")),
    );
    assert_eq!(h.ws("traefik-1", APP, "upgraded", "probe"), Some(1.0));
    assert!(
        !h.text().contains("routeskew_ws_early_closes_total{"),
        "{}",
        h.text()
    );

    // 5. The agent's housekeeping requests (endpoint checks, router inventory) are
    //    never counted, whatever the answer.
    let ua = http::probe_housekeeping_user_agent("1.0");
    h.data(
        r1,
        14,
        Direction::Read,
        &client_request("127.0.0.1:9000", "/api/http/routers", &ua),
    );
    h.data(r1, 14, Direction::Write, &miss);
    assert_eq!(h.p.housekeeping_exchanges(), 1);
    assert_eq!(
        h.http("traefik-1", "other", "router_miss", "probe"),
        Some(0.0)
    );
    assert_eq!(
        h.http("traefik-1", "other", "router_miss", "passive"),
        Some(0.0)
    );

    // 6. A probe without an answer expects nothing from the kernel.
    probe_report(&mut h, r2, 5, ProbeCheck::Http, APP, None);
    let t = h.step();
    h.p.expire_probes(t + 10 * S);
    assert_eq!(blind(&h, "traefik-2"), Some(1.0));
    // Nothing passive anywhere.
    for l in h
        .text()
        .lines()
        .filter(|l| l.contains("source=\"passive\""))
    {
        assert!(l.ends_with(" 0"), "{l}");
    }
}

/// Any client can send a probe-looking User-Agent: without this agent's signature it
/// neither hides its traffic from the passive counts nor touches the probe ledger.
#[test]
fn forged_probe_tags_are_counted_as_passive_traffic() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    let ok = fixture("traefik_rec_200.bin");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const CHECKS: u64 = 20_000;
    const HOUSEKEEPING: u64 = 1_000;
    for i in 0..CHECKS + HOUSEKEEPING {
        let ua = if i < CHECKS {
            format!("routeskew-probe/0.1 check/{:016x}.{:016x}", next(), next())
        } else {
            format!("routeskew-probe/0.1 housekeeping/{:016x}", next())
        };
        h.data(o, 5, Direction::Read, &client_request(APP, "/", &ua));
        h.data(o, 5, Direction::Write, &ok);
    }
    let n = (CHECKS + HOUSEKEEPING) as f64;
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(n));
    assert_eq!(h.http("traefik-1", APP, "ok", "probe").unwrap_or(0.0), 0.0);
    assert_eq!(h.pipeline("forged_probe_tags", &[]), n);
    assert_eq!(h.p.housekeeping_exchanges(), 0);
    assert!(
        h.p.probe_stats() == &Default::default(),
        "{:?}",
        h.p.probe_stats()
    );
}
