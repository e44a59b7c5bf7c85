//! What counts as a successful probe, decided on the prober's own view of the answer
//! with the pipeline's classifier (the sensor may be blind; the verdict must not depend
//! on it).

use bytes::Bytes;

use crate::event::{Origin, ProbeAnswer, ProbeCheck, ProbeReport};
use crate::pipeline::classify::{Classifier, HttpClass, Observation, WsOutcome};
use crate::pipeline::flows::FlowEvent;
use crate::pipeline::probe_report::report_exchange;

/// Bytes of a response body kept for classification (Traefik's 404 body is 19).
pub const BODY_PREFIX: usize = 64;

/// An answer as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// What the pipeline classifies: status, headers in wire order, body prefix.
    pub response: ProbeAnswer,
    /// The whole body, up to the caller's cap (router inventory), else the prefix.
    pub body: Bytes,
    /// `X-Next-Page` (router inventory paging).
    pub next_page: Option<u32>,
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

    /// What the prober's HTTP client makes of `raw`: status, headers in wire order, the
    /// body that follows.
    fn answer(raw: &[u8]) -> ProbeAnswer {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(n) = r.parse(raw).expect("valid response") else {
            panic!("incomplete test response");
        };
        let mut headers = http::HeaderMap::new();
        for h in r.headers.iter() {
            headers.append(
                http::HeaderName::from_bytes(h.name.as_bytes()).expect("name"),
                http::HeaderValue::from_bytes(h.value).expect("value"),
            );
        }
        ProbeAnswer {
            status: r.code.expect("status"),
            reason: r.reason.unwrap_or_default().to_string(),
            headers,
            body_prefix: Bytes::copy_from_slice(&raw[n..]),
        }
    }

    fn report(check: ProbeCheck, response: Option<&'static [u8]>) -> ProbeReport {
        ProbeReport {
            id: 9,
            check,
            host: "a.test".into(),
            response: response.map(answer),
            elapsed: std::time::Duration::from_millis(3),
        }
    }

    #[test]
    fn parts_give_the_head_the_byte_parser_reads() {
        let a = answer(MISS);
        let from_parts = crate::pipeline::http::response_from_parts(
            a.status,
            &a.reason,
            a.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
            &a.body_prefix,
        )
        .expect("valid");
        let parsed = crate::pipeline::http::parse(MISS, MISS.len() as u64).expect("parses");
        let Some(crate::pipeline::http::Message::Response(wire)) =
            parsed.messages.into_iter().next()
        else {
            panic!("no response");
        };
        assert_eq!(from_parts, wire);
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
        // A head the classifier cannot read (two different lengths) is no success.
        let garbled = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok";
        assert!(!judge(&report(ProbeCheck::Http, Some(garbled)), &[]).success);
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
