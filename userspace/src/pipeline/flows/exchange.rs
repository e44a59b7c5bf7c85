//! What the flow tracker produces, from HTTP/1 and HTTP/2 alike: the client request kept
//! while it waits, and the [`FlowEvent`]s the classifier reads. Imports neither the
//! tracker nor [`super::h2`], which both build these.

use crate::event::{ConnId, Origin, UpstreamFailureReason};
use crate::hosts::Host;
use crate::pipeline::http::{Method, ProbeRef, RequestHead, ResponseHead};

/// A connection of one process: `(tgid, fd)`, or `(tgid, *tls.Conn)` for TLS plaintext.
pub type ConnKey = (u32, ConnId);

/// What is kept of a client request while it waits for its response. No path, no headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRequest {
    pub ts_ns: u64,
    pub method: Method,
    pub host: Host,
    pub target: u64,
    pub websocket: bool,
    pub probe: bool,
    pub probe_ref: ProbeRef,
}

impl ClientRequest {
    pub fn from_head(ts_ns: u64, r: &RequestHead) -> Self {
        ClientRequest {
            ts_ns,
            method: r.method,
            host: r.host.clone(),
            target: r.target,
            websocket: r.websocket,
            probe: r.probe,
            probe_ref: r.probe_ref,
        }
    }
}

/// Output of the flow tracker, input of the classifier.
// `Exchange` is both the large and the common variant: boxing it would allocate once per
// response, which is what the inline response head avoids.
#[expect(
    clippy::large_enum_variant,
    reason = "boxing the common variant would allocate per response"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEvent {
    /// Traefik answered a client request.
    Exchange {
        origin: Origin,
        request: ClientRequest,
        response: ResponseHead,
        response_ts_ns: u64,
        /// Traefik wrote an upstream request with the same host and method+path between
        /// the client request and this response. Only computed for 404s, the one status
        /// where it matters.
        upstream_seen: bool,
    },
    /// A WebSocket upgrade request whose connection closed before any response.
    WsReset {
        origin: Origin,
        request: ClientRequest,
        ts_ns: u64,
    },
    /// An upgraded connection that closed within the early-close window.
    WsEarlyClose {
        origin: Origin,
        request: ClientRequest,
        open_ns: u64,
    },
    UpstreamFailure {
        origin: Origin,
        reason: UpstreamFailureReason,
        ts_ns: u64,
    },
}

impl FlowEvent {
    /// The client request the event is about, if any.
    pub fn request(&self) -> Option<&ClientRequest> {
        match self {
            FlowEvent::Exchange { request, .. }
            | FlowEvent::WsReset { request, .. }
            | FlowEvent::WsEarlyClose { request, .. } => Some(request),
            FlowEvent::UpstreamFailure { .. } => None,
        }
    }
}

/// Messages the tracker read, for logs and tests (not exported: what it dropped or could
/// not read is in the pipeline's health counters, incremented in place). Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub client_requests: u64,
    pub client_responses: u64,
    pub upstream_requests: u64,
    pub upstream_responses: u64,
}
