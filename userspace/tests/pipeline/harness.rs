//! What every topic of the pipeline test shares: canned fixtures, replicas and the
//! harness that feeds events and reads the exposition back.

pub(crate) use std::time::Duration;

pub(crate) use bytes::Bytes;
pub(crate) use routeskew::agent::AgentMetrics;
pub(crate) use routeskew::discovery::{Attribution, Replica, Target, TargetSet};
pub(crate) use routeskew::event::{
    ConnId, Direction, Event, EventKind, Origin, ProbeCheck, ProbeReport, UpstreamFailureReason,
};
pub(crate) use routeskew::metrics::BuildInfo;
pub(crate) use routeskew::pipeline::http;
pub(crate) use routeskew::pipeline::{Pipeline, PipelineConfig};

pub(crate) const S: u64 = 1_000_000_000;
pub(crate) const MS: u64 = 1_000_000;
pub(crate) const APP: &str = "app.example.test";
pub(crate) const TERM: &str = "terminal.example.test";

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub(crate) fn origin(i: u32) -> Origin {
    Origin {
        tgid: 100 + i,
        cgroup_id: 10 + u64::from(i),
    }
}

pub(crate) fn target(i: u32) -> Target {
    Target {
        replica: Replica {
            name: format!("traefik-{i}"),
            namespace: "traefik".into(),
        },
        cgroup_id: 10 + u64::from(i),
        pids: vec![100 + i],
        attribution: Attribution::Cgroup,
        group: "traefik".into(),
        ready_since: None,
        endpoints: Vec::new(),
    }
}

pub(crate) struct Harness {
    pub(crate) p: Pipeline,
    pub(crate) m: AgentMetrics,
    pub(crate) ts: u64,
}

impl Harness {
    pub(crate) fn new(cfg: PipelineConfig, replicas: u32) -> Self {
        let m = AgentMetrics::register(BuildInfo {
            version: "test".into(),
            kernel: "6.18".into(),
        });
        let mut p = Pipeline::new(cfg, m.contract.clone(), m.pipeline.clone());
        p.set_targets(TargetSet::new((1..=replicas).map(target).collect()));
        Harness { p, m, ts: S }
    }

    /// One replica, `APP` the only known host, the rest of the configuration as `tweak`
    /// leaves the defaults.
    pub(crate) fn with_app(tweak: impl FnOnce(&mut PipelineConfig)) -> Self {
        let mut cfg = PipelineConfig {
            known_hosts: vec![APP.into()],
            ..PipelineConfig::default()
        };
        tweak(&mut cfg);
        Harness::new(cfg, 1)
    }

    pub(crate) fn with_hosts(replicas: u32) -> Self {
        Self::new(
            PipelineConfig {
                known_hosts: vec![APP.into(), TERM.into()],
                ..PipelineConfig::default()
            },
            replicas,
        )
    }

    pub(crate) fn step(&mut self) -> u64 {
        self.ts += MS;
        self.ts
    }

    pub(crate) fn data(&mut self, o: Origin, fd: u32, dir: Direction, b: &[u8]) {
        let ts = self.step();
        self.p.handle(&Event::data(ts, o, fd, dir, b));
    }

    /// A capture that holds only the first `captured` bytes of a larger syscall.
    pub(crate) fn data_cut(
        &mut self,
        o: Origin,
        fd: u32,
        dir: Direction,
        b: &[u8],
        captured: usize,
    ) {
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

    pub(crate) fn close(&mut self, o: Origin, fd: u32, upgraded: bool) {
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

    pub(crate) fn upstream_failure(&mut self, o: Origin, reason: UpstreamFailureReason) {
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
    pub(crate) fn routed(
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
    pub(crate) fn missed(&mut self, o: Origin, client_fd: u32, host: &str, path: &str) {
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

    pub(crate) fn text(&self) -> String {
        self.m.encode()
    }

    /// The value of one exact series, labels in exposition order; `None` when absent.
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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

    pub(crate) fn http(&self, replica: &str, host: &str, class: &str, source: &str) -> Option<f64> {
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

    pub(crate) fn ws(&self, replica: &str, host: &str, outcome: &str, source: &str) -> Option<f64> {
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

    pub(crate) fn pipeline(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(&format!("routeskew_pipeline_{name}_total"), labels)
            .unwrap_or_else(|| {
                panic!(
                    "routeskew_pipeline_{name}_total{labels:?} missing:\n{}",
                    self.text()
                )
            })
    }
}

pub(crate) fn client_request(host: &str, path: &str, ua: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\nAccept: */*\r\n\r\n")
        .into_bytes()
}

/// The request Traefik writes upstream, laid out as in `fixtures/traefik_upstream_request.bin`.
pub(crate) fn upstream_request(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.9\r\nX-Forwarded-Host: {host}\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Server: traefik-1\r\nX-Real-Ip: 10.0.0.9\r\nAccept-Encoding: gzip\r\n\r\n"
    )
    .into_bytes()
}

pub(crate) fn ws_request(host: &str, ua: &str) -> Vec<u8> {
    format!("GET /ws HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes()
}
