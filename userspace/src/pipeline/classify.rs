//! Turns paired exchanges into the observations the metrics count.
//!
//! The one subtle rule is the router miss. Traefik answers a request no router matched with
//! Go's `http.NotFound`, written by its own server, so the head is exactly:
//!
//! ```text
//! HTTP/1.1 404 Not Found
//! Content-Type: text/plain; charset=utf-8
//! X-Content-Type-Options: nosniff
//! Date: …
//! Content-Length: 19
//!
//! 404 page not found\n
//! ```
//!
//! Go's server appends a `Connection` header when it closes or keeps alive a connection
//! against the protocol's default, and echoes an HTTP/1.0 request's version; both variants
//! were captured from Traefik 3.7.15 and are accepted. A 404 relayed from a backend comes out
//! of Traefik's reverse proxy with the headers sorted by name and never matches. A Go backend
//! reached directly (not through Traefik) does produce the same bytes, which is why a match
//! is also checked against the upstream requests Traefik wrote for the same request: if
//! there was one, Traefik routed it and the 404 is not a router miss.
//!
//! Over HTTP/2 (decoded by [`crate::pipeline::flows::h2`]) the same handler's answer, as Go's h2 server
//! writes it, is `:status 404`, `content-type`, `x-content-type-options`,
//! `content-length: 19`, `date`, then a DATA frame with the same body (captured from
//! Traefik 3.7.15 in `h2/fixtures/traefik_h2_router_miss.bin`). A backend's 404 relayed over
//! h2, including a Go backend's own `http.NotFound`, comes out with `date` before
//! `x-content-type-options` or without it, and never matches.

use crate::event::{Origin, UpstreamFailureReason};
use crate::hosts::Host;
use crate::pipeline::flows::exchange::FlowEvent;
use crate::pipeline::http::{HeaderId, ResponseHead, Version};
use crate::pipeline::metrics::PipelineMetrics;

pub const ROUTER_MISS_BODY: &[u8] = b"404 page not found\n";
const ROUTER_MISS_HEADERS: [HeaderId; 4] = [
    HeaderId::ContentType,
    HeaderId::XContentTypeOptions,
    HeaderId::Date,
    HeaderId::ContentLength,
];
/// Go's h2 server writes the handler's headers first, then the length and date it adds.
const ROUTER_MISS_HEADERS_H2: [HeaderId; 4] = [
    HeaderId::ContentType,
    HeaderId::XContentTypeOptions,
    HeaderId::ContentLength,
    HeaderId::Date,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Passive,
    Probe,
}

impl Source {
    pub const ALL: [Source; 2] = [Self::Passive, Self::Probe];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passive => "passive",
            Self::Probe => "probe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpClass {
    Ok,
    RouterMiss,
    Misdirected,
    ClientError,
    ServerError,
}

impl HttpClass {
    pub const ALL: [HttpClass; 5] = [
        Self::Ok,
        Self::RouterMiss,
        Self::Misdirected,
        Self::ClientError,
        Self::ServerError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::RouterMiss => "router_miss",
            Self::Misdirected => "misdirected",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WsOutcome {
    Upgraded,
    RouterMiss,
    Rejected,
    Failed,
    Reset,
}

impl WsOutcome {
    pub const ALL: [WsOutcome; 5] = [
        Self::Upgraded,
        Self::RouterMiss,
        Self::Rejected,
        Self::Failed,
        Self::Reset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upgraded => "upgraded",
            Self::RouterMiss => "router_miss",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
            Self::Reset => "reset",
        }
    }
}

/// How well a response matches Traefik's own 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    NoMatch,
    /// Status line, header sequence and values match, and the body was captured and matches.
    Full,
    /// Everything captured matches but the body was not (fully) captured: HEAD responses,
    /// or a capture cut short.
    HeadersOnly,
}

/// Compare a response with Traefik's router-miss 404.
pub fn router_miss_signature(r: &ResponseHead) -> Signature {
    let (headers_match, reason_match) = if r.version == Version::H2 {
        // No reason phrase, no connection-specific headers in HTTP/2.
        (r.headers.as_slice() == ROUTER_MISS_HEADERS_H2, true)
    } else {
        let headers = match r.headers.as_slice() {
            [a, b, c, d] => [*a, *b, *c, *d] == ROUTER_MISS_HEADERS,
            [a, b, c, d, HeaderId::Connection] => [*a, *b, *c, *d] == ROUTER_MISS_HEADERS,
            _ => false,
        };
        (headers, r.reason.as_str() == "Not Found")
    };
    if r.status != 404
        || r.truncated
        || !reason_match
        || !headers_match
        // Compared as bytes: no UTF-8 check on the per-response path.
        || r.content_type.as_ref().map(|v| v.as_bytes())
            != Some(b"text/plain; charset=utf-8".as_slice())
        || r.x_content_type_options.as_ref().map(|v| v.as_bytes()) != Some(b"nosniff".as_slice())
        || r.content_length != Some(ROUTER_MISS_BODY.len() as u64)
        || r.chunked
    {
        return Signature::NoMatch;
    }
    if r.body_prefix.as_slice() == ROUTER_MISS_BODY {
        Signature::Full
    } else if ROUTER_MISS_BODY.starts_with(&r.body_prefix) {
        Signature::HeadersOnly
    } else {
        Signature::NoMatch
    }
}

/// What the aggregator counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Http {
        origin: Origin,
        host: Host,
        class: HttpClass,
        source: Source,
    },
    Ws {
        origin: Origin,
        host: Host,
        outcome: WsOutcome,
        source: Source,
    },
    WsEarlyClose {
        origin: Origin,
        host: Host,
    },
    UpstreamFailure {
        origin: Origin,
        reason: UpstreamFailureReason,
    },
}

impl Observation {
    pub fn origin(&self) -> Origin {
        match self {
            Observation::Http { origin, .. }
            | Observation::Ws { origin, .. }
            | Observation::WsEarlyClose { origin, .. }
            | Observation::UpstreamFailure { origin, .. } => *origin,
        }
    }
}

#[derive(Debug, Default)]
pub struct Classifier {
    /// Where `signature_with_upstream` and `signature_without_body` are counted; `None`
    /// for the prober's verdicts, which are not pipeline health.
    metrics: Option<PipelineMetrics>,
}

fn http_class(status: u16, miss: bool) -> HttpClass {
    match status {
        100..=399 => HttpClass::Ok,
        404 if miss => HttpClass::RouterMiss,
        421 => HttpClass::Misdirected,
        400..=499 => HttpClass::ClientError,
        _ => HttpClass::ServerError,
    }
}

fn ws_outcome(status: u16, version: Version, class: HttpClass) -> WsOutcome {
    match (status, class) {
        (101, _) => WsOutcome::Upgraded,
        // RFC 8441: an extended CONNECT is accepted with a 2xx, and the stream carries
        // the WebSocket from then on.
        (200..=299, _) if version == Version::H2 => WsOutcome::Upgraded,
        (_, HttpClass::RouterMiss) => WsOutcome::RouterMiss,
        (_, HttpClass::ServerError) => WsOutcome::Failed,
        // Any other answer, including a 2xx or a redirect to a login page, means the server
        // deliberately declined to upgrade.
        _ => WsOutcome::Rejected,
    }
}

impl Classifier {
    /// A classifier that counts nothing (the prober's verdicts).
    pub fn new() -> Self {
        Self::default()
    }

    /// The pipeline's classifier, which counts the signatures it set aside in `metrics`.
    pub fn counting(metrics: PipelineMetrics) -> Self {
        Classifier {
            metrics: Some(metrics),
        }
    }

    pub fn classify(&mut self, ev: FlowEvent, out: &mut Vec<Observation>) {
        match ev {
            FlowEvent::Exchange {
                origin,
                request,
                response,
                upstream_seen,
                ..
            } => {
                let source = if request.probe {
                    Source::Probe
                } else {
                    Source::Passive
                };
                let sig = router_miss_signature(&response);
                let mut miss = sig != Signature::NoMatch;
                if miss && upstream_seen {
                    if let Some(m) = &self.metrics {
                        m.signature_with_upstream.inc();
                    }
                    miss = false;
                } else if sig == Signature::HeadersOnly {
                    if let Some(m) = &self.metrics {
                        m.signature_without_body.inc();
                    }
                }
                let class = http_class(response.status, miss);
                if request.websocket {
                    out.push(Observation::Ws {
                        origin,
                        host: request.host.clone(),
                        outcome: ws_outcome(response.status, response.version, class),
                        source,
                    });
                }
                out.push(Observation::Http {
                    origin,
                    host: request.host,
                    class,
                    source,
                });
            }
            FlowEvent::WsReset {
                origin, request, ..
            } => out.push(Observation::Ws {
                origin,
                outcome: WsOutcome::Reset,
                source: if request.probe {
                    Source::Probe
                } else {
                    Source::Passive
                },
                host: request.host,
            }),
            FlowEvent::WsEarlyClose {
                origin, request, ..
            } => out.push(Observation::WsEarlyClose {
                origin,
                host: request.host,
            }),
            FlowEvent::UpstreamFailure { origin, reason, .. } => {
                out.push(Observation::UpstreamFailure { origin, reason });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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

    fn run(
        c: &mut Classifier,
        ev: FlowEvent,
    ) -> Vec<(Option<HttpClass>, Option<WsOutcome>, Source)> {
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
}
