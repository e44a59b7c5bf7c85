//! What counts as a successful probe, decided on the prober's own view of the answer
//! with the pipeline's classifier (the sensor may be blind; the verdict must not depend
//! on it).

use bytes::{BufMut, Bytes, BytesMut};

use crate::event::{Origin, ProbeCheck, ProbeReport};
use crate::pipeline::classify::{Classifier, HttpClass, Observation, WsOutcome};
use crate::pipeline::flows::FlowEvent;
use crate::pipeline::probe_report::report_exchange;

/// Bytes of a response body kept for classification (Traefik's 404 body is 19).
pub const BODY_PREFIX: usize = 64;

/// An answer as received: enough to rebuild the response head the replica wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Status line, headers in wire order, blank line, body prefix.
    pub wire: Bytes,
    /// The whole body, up to the caller's cap (router inventory), else the prefix.
    pub body: Bytes,
    /// `X-Next-Page` (router inventory paging).
    pub next_page: Option<u32>,
}

/// Rebuilds a response in HTTP/1.1 wire form from what a client library parsed. Header
/// names come back lower-cased, which the parser accepts; their order is the wire order
/// (hyper keeps it).
pub fn wire_form<'a>(
    status: u16,
    reason: &str,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    body_prefix: &[u8],
) -> Bytes {
    let mut b = BytesMut::with_capacity(256);
    b.put_slice(format!("HTTP/1.1 {status} {reason}\r\n").as_bytes());
    for (name, value) in headers {
        b.put_slice(name.as_bytes());
        b.put_slice(b": ");
        b.put_slice(value);
        b.put_slice(b"\r\n");
    }
    b.put_slice(b"\r\n");
    b.put_slice(&body_prefix[..body_prefix.len().min(BODY_PREFIX)]);
    b.freeze()
}

/// The verdict on one probe check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub success: bool,
    pub class: Option<HttpClass>,
    pub ws: Option<WsOutcome>,
}

/// Judges a probe's report. HTTP: success unless the answer is Traefik's router-miss 404
/// or a 5xx (or there was no answer). WebSocket: success on 101 or on a status the
/// operator declared acceptable (an auth redirect).
pub fn judge(report: &ProbeReport, ws_accept: &[u16]) -> Verdict {
    let origin = Origin {
        tgid: 0,
        cgroup_id: 0,
    };
    let Some(fe) = report_exchange(origin, report, 0) else {
        return Verdict {
            success: false,
            class: None,
            ws: None,
        };
    };
    let status = match &fe {
        FlowEvent::Exchange { response, .. } => response.status,
        _ => 0,
    };
    let mut obs = Vec::new();
    Classifier::new().classify(fe, &mut obs);
    let mut v = Verdict {
        success: false,
        class: None,
        ws: None,
    };
    for o in obs {
        match o {
            Observation::Http { class, .. } => v.class = Some(class),
            Observation::Ws { outcome, .. } => v.ws = Some(outcome),
            _ => {}
        }
    }
    v.success = match report.check {
        ProbeCheck::Http => v
            .class
            .is_some_and(|c| !matches!(c, HttpClass::RouterMiss | HttpClass::ServerError)),
        ProbeCheck::WebSocket => status == 101 || ws_accept.contains(&status),
    };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const MISS: &[u8] = b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\nx-content-type-options: nosniff\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\ncontent-length: 19\r\n\r\n404 page not found\n";

    fn report(check: ProbeCheck, response: Option<&'static [u8]>) -> ProbeReport {
        ProbeReport {
            id: 9,
            check,
            host: "a.test".into(),
            response: response.map(Bytes::from_static),
        }
    }

    #[test]
    fn wire_form_round_trips_through_the_parser() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("content-type", b"text/plain; charset=utf-8"),
            ("x-content-type-options", b"nosniff"),
            ("date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            ("content-length", b"19"),
        ];
        let w = wire_form(
            404,
            "Not Found",
            headers.into_iter(),
            b"404 page not found\n",
        );
        assert_eq!(&w[..], MISS);
    }

    #[test]
    fn http_success_rules() {
        let v = judge(&report(ProbeCheck::Http, Some(MISS)), &[]);
        assert_eq!((v.success, v.class), (false, Some(HttpClass::RouterMiss)));
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert!(judge(&report(ProbeCheck::Http, Some(ok)), &[]).success);
        // A backend's own 404 (sorted headers) is the backend's business: routed, success.
        let backend404 = b"HTTP/1.1 404 Not Found\r\ncontent-length: 19\r\ncontent-type: text/plain; charset=utf-8\r\nx-content-type-options: nosniff\r\n\r\n404 page not found\n";
        let v = judge(&report(ProbeCheck::Http, Some(backend404)), &[]);
        assert_eq!((v.success, v.class), (true, Some(HttpClass::ClientError)));
        let redirect = b"HTTP/1.1 302 Found\r\nlocation: /login\r\ncontent-length: 0\r\n\r\n";
        assert!(judge(&report(ProbeCheck::Http, Some(redirect)), &[]).success);
        let bad = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 11\r\n\r\nBad Gateway";
        let v = judge(&report(ProbeCheck::Http, Some(bad)), &[]);
        assert_eq!((v.success, v.class), (false, Some(HttpClass::ServerError)));
        assert!(!judge(&report(ProbeCheck::Http, None), &[]).success);
        assert!(!judge(&report(ProbeCheck::Http, Some(b"garbage")), &[]).success);
    }

    #[test]
    fn websocket_success_rules() {
        let up = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n";
        let v = judge(&report(ProbeCheck::WebSocket, Some(up)), &[]);
        assert_eq!((v.success, v.ws), (true, Some(WsOutcome::Upgraded)));
        let v = judge(&report(ProbeCheck::WebSocket, Some(MISS)), &[]);
        assert_eq!((v.success, v.ws), (false, Some(WsOutcome::RouterMiss)));
        let redirect = b"HTTP/1.1 302 Found\r\nlocation: /login\r\ncontent-length: 0\r\n\r\n";
        assert!(!judge(&report(ProbeCheck::WebSocket, Some(redirect)), &[]).success);
        assert!(judge(&report(ProbeCheck::WebSocket, Some(redirect)), &[302]).success);
        assert!(!judge(&report(ProbeCheck::WebSocket, None), &[302]).success);
    }
}
