//! The semantic sensor's inputs, judged: responses the kernel counted (with its own
//! router-miss evidence: `NotFound` from the router chain before the 404), and request
//! heads it copied for rare answers, which tell a refused or unrouted WebSocket upgrade
//! from any other answer, and the ends of the WebSocket sessions it saw upgraded.

use crate::event::{CopiedHead, Origin, ResponseCount};
use crate::hosts::{normalize_host, Host, KnownHosts};
use crate::pipeline::classify::{http_class, ws_outcome, Observation, Source, WsOutcome};
use crate::pipeline::http::{self, Message, Version};
use crate::pipeline::metrics::HeadResult;

/// The observations of counted responses: the response, and for a relayed `101` the
/// WebSocket upgrade too.
pub fn counted_responses(origin: Origin, counted: &ResponseCount, out: &mut Vec<Observation>) {
    let source = if counted.probe {
        Source::Probe
    } else {
        Source::Passive
    };
    if counted.upgrade {
        out.push(Observation::Ws {
            origin,
            host: counted.host.clone(),
            outcome: WsOutcome::Upgraded,
            source,
        });
    }
    out.push(Observation::Http {
        origin,
        host: counted.host.clone(),
        class: http_class(counted.status, counted.router_miss),
        source,
    });
}

/// A copied head: the WebSocket outcome of its answer when it is an upgrade request of
/// the Host the kernel counted the answer under. Its response is already counted (the
/// kernel copies heads of passive traffic only: the agent's own WebSocket probes are
/// judged from their reports).
pub fn copied_head(
    origin: Origin,
    head: &CopiedHead,
    known: &KnownHosts,
    out: &mut Vec<Observation>,
) -> HeadResult {
    let Ok(parsed) = http::parse(&head.bytes, head.bytes.len() as u64) else {
        return HeadResult::Unparsed;
    };
    let Some(Message::Request(request)) = parsed.messages.first() else {
        return HeadResult::Unparsed;
    };
    if kernel_hash(&request.host, known) != head.host_hash {
        // Not this request's head (the buffer had moved on: pipelined requests).
        return HeadResult::OtherRequest;
    }
    if !request.websocket {
        return if request.truncated {
            HeadResult::Truncated
        } else {
            HeadResult::NotUpgrade
        };
    }
    out.push(Observation::Ws {
        origin,
        host: request.host.clone(),
        outcome: ws_outcome(
            head.status,
            Version::Http11,
            http_class(head.status, head.router_miss),
        ),
        source: Source::Passive,
    });
    HeadResult::WebSocket
}

/// The hash the kernel counts `host` under: its own for a published (known) host, else
/// 0 (`other`).
fn kernel_hash(host: &Host, known: &KnownHosts) -> u64 {
    match host.name() {
        Some(name) if known.index_of(host) != known.other() => {
            routeskew_common::host_hash(name.as_bytes())
        }
        _ => 0,
    }
}

/// The known host the kernel hashed to `hash`, or [`Host::Missing`] (`other`) for 0 or a
/// host no longer known (published hosts are few: a scan, on a rare event).
pub fn host_of(hash: u64, known: &KnownHosts) -> Host {
    if hash == 0 {
        return Host::Missing;
    }
    known
        .hosts()
        .iter()
        .find(|h| routeskew_common::host_hash(h.as_bytes()) == hash)
        .map_or(Host::Missing, |h| normalize_host(h.as_bytes()))
}
