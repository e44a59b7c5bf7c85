use super::*;
use crate::pipeline::flows::ClientRequest;
use crate::pipeline::http::{self, Message, Method};

fn fixture_response(name: &str) -> ResponseHead {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let b = std::fs::read(&path).unwrap();
    match http::parse(&b, b.len() as u64).unwrap().messages.remove(0) {
        Message::Response(r) => r,
        Message::Request(_) => panic!("{name} is a request"),
    }
}

fn response(raw: &[u8]) -> ResponseHead {
    match http::parse(raw, raw.len() as u64)
        .unwrap()
        .messages
        .remove(0)
    {
        Message::Response(r) => r,
        Message::Request(_) => panic!(),
    }
}

#[test]
fn signature_on_real_captures() {
    for (name, want) in [
        ("traefik_router_miss_404.bin", Signature::Full),
        ("traefik_router_miss_404_keepalive.bin", Signature::Full),
        ("traefik_router_miss_404_http10.bin", Signature::Full),
        ("traefik_router_miss_404_head.bin", Signature::HeadersOnly),
        ("traefik_ws_router_miss.bin", Signature::Full),
        // A Go backend reached directly writes the very same head: only corroboration
        // can tell it apart.
        ("go_backend_direct_notfound_404.bin", Signature::Full),
        ("traefik_relayed_go_notfound_404.bin", Signature::NoMatch),
        ("traefik_relayed_backend_404.bin", Signature::NoMatch),
        ("traefik_503_no_server.bin", Signature::NoMatch),
        ("traefik_502_refused.bin", Signature::NoMatch),
        ("traefik_relayed_chunked_200.bin", Signature::NoMatch),
    ] {
        assert_eq!(
            router_miss_signature(&fixture_response(name)),
            want,
            "{name}"
        );
    }
}

#[test]
fn signature_is_strict() {
    let base = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nDate: Sun, 22 Nov 2026 14:41:08 GMT\r\nContent-Length: 19\r\n\r\n404 page not found\n";
    assert_eq!(
        router_miss_signature(&response(base.as_bytes())),
        Signature::Full
    );
    for (from, to) in [
        ("404 Not Found", "404 Nope"),
        ("charset=utf-8", "charset=UTF-8"),
        ("nosniff", "sniff"),
        ("Date: Sun", "Server: x\r\nDate: Sun"),
        ("Content-Length: 19", "Content-Length: 19\r\nVary: Origin"),
        ("404 page not found\n", "404 page not found!"),
        (
            "X-Content-Type-Options: nosniff\r\nDate: Sun, 22 Nov 2026 14:41:08 GMT",
            "Date: Sun, 22 Nov 2026 14:41:08 GMT\r\nX-Content-Type-Options: nosniff",
        ),
    ] {
        let changed = base.replace(from, to);
        assert_eq!(
            router_miss_signature(&response(changed.as_bytes())),
            Signature::NoMatch,
            "{from} -> {to}"
        );
    }
    // Body cut by the capture: headers decide.
    let cut = &base.as_bytes()[..base.len() - 5];
    assert_eq!(
        router_miss_signature(&response(cut)),
        Signature::HeadersOnly
    );
}

fn exchange(status_raw: &[u8], websocket: bool, probe: bool, upstream_seen: bool) -> FlowEvent {
    FlowEvent::Exchange {
        origin: Origin {
            tgid: 1,
            cgroup_id: 1,
        },
        request: ClientRequest {
            ts_ns: 1,
            method: Method::Get,
            host: Host::Name("a.test".into()),
            target: 0,
            websocket,
            probe,
            probe_ref: crate::pipeline::http::ProbeRef::None,
        },
        response: response(status_raw),
        response_ts_ns: 2,
        upstream_seen,
    }
}

fn run(c: &mut Classifier, ev: FlowEvent) -> Vec<(Option<HttpClass>, Option<WsOutcome>, Source)> {
    let mut out = Vec::new();
    c.classify(ev, &mut out);
    out.into_iter()
        .map(|o| match o {
            Observation::Http { class, source, .. } => (Some(class), None, source),
            Observation::Ws {
                outcome, source, ..
            } => (None, Some(outcome), source),
            o => panic!("{o:?}"),
        })
        .collect()
}

#[test]
fn classes_and_ws_outcomes() {
    let miss = std::fs::read(format!(
        "{}/tests/fixtures/traefik_router_miss_404.bin",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let metrics = PipelineMetrics::default();
    let mut c = Classifier::counting(metrics.clone());
    use HttpClass as H;
    use Source::{Passive as P, Probe as Pr};
    use WsOutcome as W;
    assert_eq!(
        run(&mut c, exchange(&miss, false, false, false)),
        [(Some(H::RouterMiss), None, P)]
    );
    assert_eq!(
        run(&mut c, exchange(&miss, false, true, false)),
        [(Some(H::RouterMiss), None, Pr)]
    );
    assert_eq!(metrics.signature_with_upstream.get(), 0);
    assert_eq!(
        run(&mut c, exchange(&miss, false, false, true)),
        [(Some(H::ClientError), None, P)]
    );
    assert_eq!(metrics.signature_with_upstream.get(), 1);
    assert_eq!(
        run(&mut c, exchange(&miss, true, false, false)),
        [
            (None, Some(W::RouterMiss), P),
            (Some(H::RouterMiss), None, P)
        ]
    );
    let cases: [(&[u8], H, W); 8] = [
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            H::Ok,
            W::Upgraded,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            H::Ok,
            W::Rejected,
        ),
        (
            b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n",
            H::Ok,
            W::Rejected,
        ),
        (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            H::ClientError,
            W::Rejected,
        ),
        (
            b"HTTP/1.1 421 Misdirected Request\r\nContent-Length: 0\r\n\r\n",
            H::Misdirected,
            W::Rejected,
        ),
        (
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
            H::ServerError,
            W::Failed,
        ),
        (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            H::ServerError,
            W::Failed,
        ),
        (
            b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\n\r\n",
            H::ServerError,
            W::Failed,
        ),
    ];
    for (raw, class, outcome) in cases {
        assert_eq!(
            run(&mut c, exchange(raw, true, false, false)),
            [(None, Some(outcome), P), (Some(class), None, P)],
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn lifecycle_events() {
    let mut c = Classifier::new();
    let req = ClientRequest {
        ts_ns: 1,
        method: Method::Get,
        host: Host::Invalid,
        target: 0,
        websocket: true,
        probe: true,
        probe_ref: crate::pipeline::http::ProbeRef::None,
    };
    let origin = Origin {
        tgid: 1,
        cgroup_id: 1,
    };
    let mut out = Vec::new();
    c.classify(
        FlowEvent::WsReset {
            origin,
            request: req.clone(),
            ts_ns: 2,
        },
        &mut out,
    );
    c.classify(
        FlowEvent::WsEarlyClose {
            origin,
            request: req,
            open_ns: 5,
        },
        &mut out,
    );
    c.classify(
        FlowEvent::UpstreamFailure {
            origin,
            reason: UpstreamFailureReason::Timeout,
            ts_ns: 3,
        },
        &mut out,
    );
    assert_eq!(
        out,
        [
            Observation::Ws {
                origin,
                host: Host::Invalid,
                outcome: WsOutcome::Reset,
                source: Source::Probe
            },
            Observation::WsEarlyClose {
                origin,
                host: Host::Invalid
            },
            Observation::UpstreamFailure {
                origin,
                reason: UpstreamFailureReason::Timeout
            },
        ]
    );
}
