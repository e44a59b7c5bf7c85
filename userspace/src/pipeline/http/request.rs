//! Reading one request head: the few headers the pipeline keeps (Host,
//! X-Forwarded-Host, the WebSocket upgrade, the probe tag, body framing), and the request
//! line alone when the rest was cut or malformed.

use super::fields::{
    complete_lines, has_token, header_slots, is_chunked, map_err, parse_content_length, version_of,
};
use super::head::{target_hash, Message, Method, ParseError, RequestHead, Version};
use super::probe_tag::{probe_ref_of, ProbeRef};
use crate::hosts::{normalize_host, Host};

/// Request header names the parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestHeader {
    Host,
    XForwardedHost,
    Upgrade,
    Connection,
    UserAgent,
    ContentLength,
    TransferEncoding,
    Other,
}

impl RequestHeader {
    fn from_name(name: &str) -> Self {
        let (want, id) = match name.len() {
            4 => ("host", Self::Host),
            7 => ("upgrade", Self::Upgrade),
            10 if name.as_bytes()[0].eq_ignore_ascii_case(&b'c') => {
                ("connection", Self::Connection)
            }
            10 => ("user-agent", Self::UserAgent),
            14 => ("content-length", Self::ContentLength),
            16 => ("x-forwarded-host", Self::XForwardedHost),
            17 => ("transfer-encoding", Self::TransferEncoding),
            _ => return Self::Other,
        };
        if name.eq_ignore_ascii_case(want) {
            id
        } else {
            Self::Other
        }
    }
}

/// Host of an absolute-form target (`http://host/path`), which takes precedence over the
/// Host header (RFC 9112 §3.2.2).
fn absolute_form_host(target: &[u8]) -> Option<&[u8]> {
    let lower = |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
    let rest = if lower(b"http://") {
        &target[7..]
    } else if lower(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Parse one request head at the start of `buf`. Returns the head and, when the head ended
/// inside `buf`, its length.
pub(super) fn parse_request_at(buf: &[u8]) -> Result<(Message, Option<usize>), ParseError> {
    let mut headers = header_slots();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => {
            Ok((Message::Request(request_from(&req, false)), Some(n)))
        }
        Ok(httparse::Status::Partial) => {
            let patched = complete_lines(buf);
            let mut headers = header_slots();
            let mut req = httparse::Request::new(&mut []);
            match patched
                .as_deref()
                .map(|p| req.parse_with_uninit_headers(p, &mut headers))
            {
                Some(Ok(httparse::Status::Complete(_))) => {
                    Ok((Message::Request(request_from(&req, true)), None))
                }
                // No complete line at all, or the last complete line is unusable: fall back
                // to the request line alone.
                Some(Ok(httparse::Status::Partial)) | None => {
                    request_line_only(buf, true).map(|r| (Message::Request(r), None))
                }
                Some(Err(e)) => Err(map_err(e)),
            }
        }
        Err(
            e @ (httparse::Error::HeaderName
            | httparse::Error::HeaderValue
            | httparse::Error::NewLine),
        ) if buf.contains(&b'\n') => {
            // The request line was fine but a header was not (control characters in a Host,
            // say). The server will answer it (400), so keep it in the pipeline with an
            // invalid Host instead of losing the pairing; the caller counts the malformed
            // head through `RequestHead::host`.
            let _ = e;
            let mut r = request_line_only(buf, false)?;
            r.host = Host::Invalid;
            let head_end = find_head_end(buf);
            r.truncated = head_end.is_none();
            Ok((Message::Request(r), head_end))
        }
        Err(e) => Err(map_err(e)),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// A request whose line was all that could be read (cut by the capture, or followed by
/// malformed headers).
fn request_line_only(buf: &[u8], truncated: bool) -> Result<RequestHead, ParseError> {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return Err(ParseError::Malformed);
    }
    let Some(target) = parts.next().filter(|t| !t.is_empty()) else {
        return Err(ParseError::TooShort);
    };
    if target.iter().any(|b| b.is_ascii_control()) {
        return Err(ParseError::Malformed);
    }
    let version = match parts.next() {
        Some(b"HTTP/1.1") => Some(Version::Http11),
        Some(b"HTTP/1.0") => Some(Version::Http10),
        Some(v) if truncated && b"HTTP/1.1".starts_with(v) => None,
        None => None,
        Some(_) => return Err(ParseError::Malformed),
    };
    Ok(RequestHead {
        method: Method::from_token(method),
        version,
        host: absolute_form_host(target).map_or(Host::Missing, normalize_host),
        forwarded_host: Host::Missing,
        target: target_hash(method, target),
        websocket: false,
        probe: false,
        probe_ref: ProbeRef::None,
        content_length: None,
        chunked: false,
        truncated,
    })
}

fn request_from(req: &httparse::Request<'_, '_>, truncated: bool) -> RequestHead {
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let mut host: Option<Host> = absolute_form_host(target.as_bytes()).map(normalize_host);
    let from_uri = host.is_some();
    let mut forwarded_host = Host::Missing;
    // The raw value `host` is the normalisation of, if any.
    let mut host_raw: Option<&[u8]> = None;
    let mut upgrade_ws = false;
    let mut connection_upgrade = false;
    let mut probe = false;
    let mut probe_ref = ProbeRef::None;
    let mut content_length = None;
    let mut chunked = false;
    let mut bad_framing = false;
    for h in req.headers.iter() {
        match RequestHeader::from_name(h.name) {
            RequestHeader::Host => {
                if from_uri {
                    continue;
                }
                let v = normalize_host(h.value);
                // Several Host headers are a smuggling attempt unless they all agree.
                let agrees = host.as_ref().is_none_or(|prev| *prev == v);
                host_raw = agrees.then_some(h.value);
                host = Some(if agrees { v } else { Host::Invalid });
            }
            RequestHeader::XForwardedHost => {
                // A list when several proxies were crossed: the first is the client's.
                let first = h.value.split(|&b| b == b',').next().unwrap_or_default();
                // Traefik repeats the Host it forwards: reuse its normalisation.
                forwarded_host = match (host_raw, &host) {
                    (Some(raw), Some(h)) if raw == first => h.clone(),
                    _ => normalize_host(first),
                };
            }
            RequestHeader::Upgrade => upgrade_ws |= has_token(h.value, "websocket"),
            RequestHeader::Connection => connection_upgrade |= has_token(h.value, "upgrade"),
            RequestHeader::UserAgent => {
                probe_ref = probe_ref_of(h.value);
                // Only this agent's own signed tags: an imitation is passive traffic.
                probe = probe_ref.is_own();
            }
            RequestHeader::ContentLength => match parse_content_length(h.value, content_length) {
                Ok(n) => content_length = n,
                Err(_) => bad_framing = true,
            },
            RequestHeader::TransferEncoding => chunked = is_chunked(h.value),
            RequestHeader::Other => {}
        }
    }
    if bad_framing {
        // The server rejects such a request without reading a body.
        content_length = None;
    }
    RequestHead {
        method: Method::from_token(method.as_bytes()),
        version: version_of(req.version),
        host: host.unwrap_or(Host::Missing),
        forwarded_host,
        target: target_hash(method.as_bytes(), target.as_bytes()),
        websocket: upgrade_ws && connection_upgrade,
        probe,
        probe_ref,
        content_length,
        chunked,
        truncated,
    }
}
