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

pub(super) fn http_class(status: u16, miss: bool) -> HttpClass {
    match status {
        100..=399 => HttpClass::Ok,
        404 if miss => HttpClass::RouterMiss,
        421 => HttpClass::Misdirected,
        400..=499 => HttpClass::ClientError,
        _ => HttpClass::ServerError,
    }
}

pub(super) fn ws_outcome(status: u16, version: Version, class: HttpClass) -> WsOutcome {
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
mod tests;
