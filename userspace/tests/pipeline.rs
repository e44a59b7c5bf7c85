//! The post-sensor pipeline driven by canned events, asserting exact exported values.
//!
//! Responses come from `fixtures/`, bytes captured from a real Traefik 3.7.15 and a Go
//! backend (see `fixtures/README.md`); event sequences follow the syscalls Traefik makes
//! (checked with strace): read the client request, write the upstream request, read the
//! upstream response, write the client response, close.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use routeskew::agent::AgentMetrics;
use routeskew::discovery::{Attribution, Replica, Target, TargetSet};
use routeskew::event::{
    ConnId, Direction, Event, EventKind, Origin, ProbeAnswer, ProbeCheck, ProbeReport,
    UpstreamFailureReason,
};
use routeskew::metrics::BuildInfo;
use routeskew::pipeline::http;
use routeskew::pipeline::{Pipeline, PipelineConfig};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const APP: &str = "app.example.test";
const TERM: &str = "terminal.example.test";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn origin(i: u32) -> Origin {
    Origin {
        tgid: 100 + i,
        cgroup_id: 10 + u64::from(i),
    }
}

fn target(i: u32) -> Target {
    Target {
        replica: Replica {
            name: format!("traefik-{i}"),
            namespace: "traefik".into(),
        },
        cgroup_id: 10 + u64::from(i),
        pids: vec![100 + i],
        attribution: Attribution::Cgroup,
        endpoints: Vec::new(),
    }
}

struct Harness {
    p: Pipeline,
    m: AgentMetrics,
    ts: u64,
}

impl Harness {
    fn new(cfg: PipelineConfig, replicas: u32) -> Self {
        let m = AgentMetrics::register(BuildInfo {
            version: "test".into(),
            kernel: "6.18".into(),
        });
        let mut p = Pipeline::new(cfg, m.contract.clone(), m.pipeline.clone());
        p.set_targets(TargetSet::new((1..=replicas).map(target).collect()));
        Harness { p, m, ts: S }
    }

    fn with_hosts(replicas: u32) -> Self {
        Self::new(
            PipelineConfig {
                known_hosts: vec![APP.into(), TERM.into()],
                ..PipelineConfig::default()
            },
            replicas,
        )
    }

    fn step(&mut self) -> u64 {
        self.ts += MS;
        self.ts
    }

    fn data(&mut self, o: Origin, fd: u32, dir: Direction, b: &[u8]) {
        let ts = self.step();
        self.p.handle(&Event::data(ts, o, fd, dir, b));
    }

    /// A capture that holds only the first `captured` bytes of a larger syscall.
    fn data_cut(&mut self, o: Origin, fd: u32, dir: Direction, b: &[u8], captured: usize) {
        let ts = self.step();
        self.p.handle(&Event {
            ts_ns: ts,
            origin: o,
            kind: EventKind::Data {
                conn: ConnId::Fd(fd),
                direction: dir,
                total_len: b.len() as u64,
                bytes: Bytes::copy_from_slice(&b[..captured]),
            },
        });
    }

    fn close(&mut self, o: Origin, fd: u32, upgraded: bool) {
        let ts = self.step();
        self.p.handle(&Event {
            ts_ns: ts,
            origin: o,
            kind: EventKind::Closed {
                conn: ConnId::Fd(fd),
                upgraded,
            },
        });
    }

    fn upstream_failure(&mut self, o: Origin, reason: UpstreamFailureReason) {
        let ts = self.step();
        self.p.handle(&Event {
            ts_ns: ts,
            origin: o,
            kind: EventKind::UpstreamFailure {
                reason,
                errno: 111,
                peer: Some("127.0.0.1:18099".parse().unwrap()),
            },
        });
    }

    /// A request Traefik routed: client request, upstream request and response, relayed
    /// response.
    fn routed(
        &mut self,
        o: Origin,
        client_fd: u32,
        host: &str,
        path: &str,
        upstream: &[u8],
        relayed: &[u8],
    ) {
        self.data(
            o,
            client_fd,
            Direction::Read,
            &client_request(host, path, "curl/8"),
        );
        self.data(o, 900, Direction::Write, &upstream_request(host, path));
        self.data(o, 900, Direction::Read, upstream);
        self.data(o, client_fd, Direction::Write, relayed);
    }

    /// A request no router matched: Traefik answers itself.
    fn missed(&mut self, o: Origin, client_fd: u32, host: &str, path: &str) {
        self.data(
            o,
            client_fd,
            Direction::Read,
            &client_request(host, path, "curl/8"),
        );
        self.data(
            o,
            client_fd,
            Direction::Write,
            &fixture("traefik_router_miss_404_keepalive.bin"),
        );
    }

    fn text(&self) -> String {
        self.m.encode()
    }

    /// The value of one exact series, labels in exposition order; `None` when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let head = if labels.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{}}} ", labels.join(","))
        };
        let text = self.text();
        text.lines()
            .find_map(|l| l.strip_prefix(head.as_str()))
            .map(|v| v.parse().unwrap())
    }

    fn http(&self, replica: &str, host: &str, class: &str, source: &str) -> Option<f64> {
        self.value(
            "routeskew_http_responses_total",
            &[
                ("replica", replica),
                ("namespace", "traefik"),
                ("host", host),
                ("class", class),
                ("source", source),
            ],
        )
    }

    fn ws(&self, replica: &str, host: &str, outcome: &str, source: &str) -> Option<f64> {
        self.value(
            "routeskew_ws_upgrades_total",
            &[
                ("replica", replica),
                ("namespace", "traefik"),
                ("host", host),
                ("outcome", outcome),
                ("source", source),
            ],
        )
    }

    fn pipeline(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(&format!("routeskew_pipeline_{name}_total"), labels)
            .unwrap_or_else(|| {
                panic!(
                    "routeskew_pipeline_{name}_total{labels:?} missing:\n{}",
                    self.text()
                )
            })
    }
}

fn client_request(host: &str, path: &str, ua: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// The request Traefik writes upstream, laid out as in `fixtures/traefik_upstream_request.bin`.
fn upstream_request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: {host}\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Server: traefik-1\r\nX-Real-Ip: 10.0.0.9\r\nAccept-Encoding: gzip\r\n\r\n"
    )
    .into_bytes()
}

fn ws_request(host: &str, ua: &str) -> Vec<u8> {
    format!("GET /ws HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes()
}

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
    // The client request carried the probe marker.
    assert_eq!(
        h.http("traefik-1", "rec.example.test", "client_error", "probe"),
        Some(1.0)
    );
    assert_eq!(h.pipeline("signature_with_upstream", &[]), 1.0);
}

#[test]
fn websocket_outcomes() {
    let mut h = Harness::with_hosts(1);
    let o = origin(1);
    let probe_ua = "routeskew-probe/0.1";
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
    // Upgraded by a probe, closed after 2 s: early close.
    h.data(o, 6, Direction::Read, &ws_request(APP, probe_ua));
    h.data(
        o,
        6,
        Direction::Write,
        &fixture("traefik_ws_upgrade_101.bin"),
    );
    h.ts += 2 * S;
    h.close(o, 6, true);
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
    h.data(o, 11, Direction::Read, &ws_request(TERM, probe_ua));
    h.close(o, 11, false);
    // Rejected by the backend (403).
    h.data(o, 12, Direction::Read, &ws_request(APP, "browser"));
    h.data(
        o,
        12,
        Direction::Write,
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
    );

    assert_eq!(h.ws("traefik-1", APP, "upgraded", "passive"), Some(1.0));
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
    assert_eq!(h.http("traefik-1", APP, "ok", "passive"), Some(1.0));
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

fn probe_report(
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

/// What the prober's HTTP client makes of `raw`: status, headers in wire order, the body
/// that follows.
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
