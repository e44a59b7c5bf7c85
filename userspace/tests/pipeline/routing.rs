//! Router misses against backend 404s, corroboration by the upstream request, pairing
//! and departed replicas.

use crate::harness::*;

#[test]
fn three_replicas_one_missing_a_router() {
    let mut h = Harness::with_hosts(3);
    // What the upstream answered does not change the class of the relayed response.
    let ok_up = fixture("go_backend_direct_chunked_200.bin");
    let ok = fixture("traefik_relayed_200.bin");
    for round in 0..5u32 {
        for i in 1..=3 {
            let fd = 10 + round;
            h.routed(origin(i), fd, APP, "/", &ok_up, &ok);
            if i == 2 {
                h.missed(origin(i), fd, TERM, "/token");
            } else {
                h.routed(origin(i), fd, TERM, "/token", &ok_up, &ok);
            }
        }
    }
    for i in [1, 3] {
        let r = format!("traefik-{i}");
        assert_eq!(h.http(&r, TERM, "ok", "passive"), Some(5.0));
        assert_eq!(
            h.http(&r, TERM, "router_miss", "passive"),
            Some(0.0),
            "series exists at zero"
        );
        assert_eq!(h.http(&r, APP, "ok", "passive"), Some(5.0));
    }
    assert_eq!(
        h.http("traefik-2", TERM, "router_miss", "passive"),
        Some(5.0)
    );
    assert_eq!(h.http("traefik-2", TERM, "ok", "passive"), None);
    assert_eq!(h.http("traefik-2", APP, "ok", "passive"), Some(5.0));
    assert_eq!(
        h.http("traefik-2", APP, "router_miss", "passive"),
        Some(0.0)
    );
    assert_eq!(h.pipeline("unmatched_responses", &[("leg", "client")]), 0.0);
    assert_eq!(
        h.pipeline("unmatched_responses", &[("leg", "upstream")]),
        0.0
    );
    assert_eq!(h.pipeline("signature_with_upstream", &[]), 0.0);
    assert_eq!(
        h.pipeline("events", &[("kind", "data")]),
        5.0 * (3.0 * 4.0 + 2.0 * 4.0 + 2.0)
    );
}

#[test]
fn backend_404s_are_never_router_misses() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    // Relayed by Traefik: sorted headers.
    h.routed(
        o,
        5,
        APP,
        "/missing",
        &fixture("traefik_relayed_backend_404.bin"),
        &fixture("traefik_relayed_backend_404.bin"),
    );
    h.routed(
        o,
        5,
        APP,
        "/gonotfound",
        &fixture("go_backend_direct_notfound_404.bin"),
        &fixture("traefik_relayed_go_notfound_404.bin"),
    );
    assert_eq!(
        h.http("traefik-1", APP, "client_error", "passive"),
        Some(2.0)
    );
    assert_eq!(h.pipeline("signature_with_upstream", &[]), 0.0);
    // Exactly the router-miss bytes reach the client (a backend whose 404 went through
    // unchanged), but Traefik wrote an upstream request for it: not a router miss.
    h.routed(
        o,
        5,
        APP,
        "/passthrough",
        &fixture("go_backend_direct_notfound_404.bin"),
        &fixture("go_backend_direct_notfound_404.bin"),
    );
    assert_eq!(
        h.http("traefik-1", APP, "client_error", "passive"),
        Some(3.0)
    );
    assert_eq!(
        h.http("traefik-1", APP, "router_miss", "passive"),
        Some(0.0)
    );
    assert_eq!(h.pipeline("signature_with_upstream", &[]), 1.0);
    // An upstream request for another path does not corroborate.
    h.data(o, 6, Direction::Read, &client_request(APP, "/a", "curl/8"));
    h.data(o, 900, Direction::Write, &upstream_request(APP, "/b"));
    h.data(
        o,
        6,
        Direction::Write,
        &fixture("traefik_router_miss_404.bin"),
    );
    assert_eq!(
        h.http("traefik-1", APP, "router_miss", "passive"),
        Some(1.0)
    );
}

#[test]
fn real_upstream_request_corroborates_its_client_request() {
    let mut h = Harness::new(
        PipelineConfig {
            known_hosts: vec!["rec.example.test".into()],
            ..PipelineConfig::default()
        },
        1,
    );
    let o = origin(1);
    h.data(o, 5, Direction::Read, &fixture("traefik_rec_200.req.bin"));
    h.data(
        o,
        9,
        Direction::Write,
        &fixture("traefik_upstream_request.bin"),
    );
    h.data(
        o,
        5,
        Direction::Write,
        &fixture("go_backend_direct_notfound_404.bin"),
    );
    // The captured request carries an older agent's unsigned probe marker: no tag this
    // agent signed, so it counts as passive traffic (and as a forged tag).
    assert_eq!(
        h.http("traefik-1", "rec.example.test", "client_error", "passive"),
        Some(1.0)
    );
    assert_eq!(h.pipeline("forged_probe_tags", &[]), 1.0);
    assert_eq!(h.pipeline("signature_with_upstream", &[]), 1.0);
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    // What the pipelined capture's client sent, in one read; Traefik's answers in one write.
    let mut reqs = client_request(TERM, "/a", "curl/8");
    reqs.extend(client_request(APP, "/ok", "curl/8"));
    h.data(o, 5, Direction::Read, &reqs);
    h.data(o, 9, Direction::Write, &upstream_request(APP, "/ok"));
    h.data(
        o,
        5,
        Direction::Write,
        &fixture("traefik_pipelined_miss_then_ok.bin"),
    );
    assert_eq!(
        h.http("traefik-1", TERM, "router_miss", "passive"),
        Some(1.0)
    );
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(1.0));
}

#[test]
fn departed_replicas_lose_their_series_after_grace() {
    let mut h = Harness::new(
        PipelineConfig {
            known_hosts: vec![APP.into()],
            series_grace: Duration::from_secs(120),
            ..PipelineConfig::default()
        },
        2,
    );
    h.missed(origin(1), 5, APP, "/");
    h.missed(origin(2), 5, APP, "/");
    h.p.set_targets(TargetSet::new(vec![target(2)]));
    let t0 = h.ts;
    h.p.tick(t0);
    h.p.tick(t0 + 119 * S);
    assert_eq!(
        h.http("traefik-1", APP, "router_miss", "passive"),
        Some(1.0)
    );
    h.p.tick(t0 + 120 * S);
    assert_eq!(h.http("traefik-1", APP, "router_miss", "passive"), None);
    assert!(!h.text().contains("traefik-1"));
    assert_eq!(
        h.http("traefik-2", APP, "router_miss", "passive"),
        Some(1.0)
    );
}
