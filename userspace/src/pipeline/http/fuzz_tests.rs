//! Property tests of the HTTP/1 head parser (issue 16): any bytes are parsed without a
//! panic, generated heads read back as generated, and a capture cut short never changes
//! what the complete messages before the cut say.

use proptest::prelude::*;

use super::*;
use crate::fuzz_support::{config, cut_points, cuts, mutated, pick, raw, text_of};

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
];
const STATUSES: [u16; 9] = [200, 201, 204, 301, 304, 404, 500, 502, 503];
const HOST_CHARS: &[u8] = b"abcxyzAZ019-";
/// Bodies may start like a status line: the parser must not take them for one.
const BODY_CHARS: &[u8] = b"HTP/1. \r\nab{}";
const VALUE_CHARS: &[u8] = b"abc ;=/-,019";

/// What a generated message must read back as.
#[derive(Debug, Clone)]
enum Want {
    Request {
        method: Method,
        host: String,
        content_length: usize,
    },
    Response {
        status: u16,
        content_length: usize,
        body: Vec<u8>,
    },
}

fn host() -> impl Strategy<Value = String> {
    (text_of(HOST_CHARS, 1..12), text_of(b"abc", 1..4)).prop_map(|(a, b)| {
        format!(
            "a{}.{}",
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b)
        )
    })
}

fn extra_headers() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (
            proptest::sample::select(&["Accept", "X-Trace", "Content-Type", "Date", "Via"][..]),
            text_of(VALUE_CHARS, 0..10),
        ),
        0..4,
    )
    .prop_map(|hs| {
        hs.iter()
            .map(|(n, v)| format!("{n}: {}\r\n", String::from_utf8_lossy(v)))
            .collect()
    })
}

fn request() -> impl Strategy<Value = (Vec<u8>, Want)> {
    (
        0..METHODS.len(),
        text_of(b"abc/019?=", 0..12),
        any::<bool>(),
        host(),
        extra_headers(),
        text_of(BODY_CHARS, 0..12),
    )
        .prop_map(|(m, path, v11, host, extra, body)| {
            let method = METHODS[m];
            let version = if v11 { "1.1" } else { "1.0" };
            let mut b = format!(
                "{method} /{} HTTP/{version}\r\nHost: {host}\r\n{extra}Content-Length: {}\r\n\r\n",
                String::from_utf8_lossy(&path),
                body.len()
            )
            .into_bytes();
            b.extend_from_slice(&body);
            let want = Want::Request {
                method: Method::from_token(method.as_bytes()),
                host: host.to_ascii_lowercase(),
                content_length: body.len(),
            };
            (b, want)
        })
}

fn response() -> impl Strategy<Value = (Vec<u8>, Want)> {
    (
        0..STATUSES.len(),
        extra_headers(),
        text_of(BODY_CHARS, 0..12),
    )
        .prop_map(|(s, extra, body)| {
            let status = STATUSES[s];
            let body = if (100..200).contains(&status) || status == 204 || status == 304 {
                Vec::new()
            } else {
                body
            };
            let mut b = format!(
                "HTTP/1.1 {status} Some Reason\r\n{extra}Content-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            b.extend_from_slice(&body);
            let want = Want::Response {
                status,
                content_length: body.len(),
                body,
            };
            (b, want)
        })
}

/// One to three pipelined requests, or responses, back to back.
fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<Want>)> {
    let join = |ms: Vec<(Vec<u8>, Want)>| {
        let mut bytes = Vec::new();
        let mut wants = Vec::new();
        for (b, w) in ms {
            bytes.extend(b);
            wants.push(w);
        }
        (bytes, wants)
    };
    prop_oneof![
        proptest::collection::vec(request(), 1..4).prop_map(join),
        proptest::collection::vec(response(), 1..4).prop_map(join),
    ]
}

/// `split`: the body may have been cut by the end of a syscall.
fn check(m: &Message, want: &Want, split: bool) {
    match (m, want) {
        (
            Message::Request(r),
            Want::Request {
                method,
                host,
                content_length,
            },
        ) => {
            assert_eq!(r.method, *method);
            assert_eq!(r.host.name(), Some(host.as_str()));
            assert_eq!(r.content_length, Some(*content_length as u64));
            assert!(!r.truncated);
        }
        (
            Message::Response(r),
            Want::Response {
                status,
                content_length,
                body,
            },
        ) => {
            assert_eq!(r.status, *status);
            assert_eq!(r.reason.as_str(), "Some Reason");
            assert_eq!(r.content_length, Some(*content_length as u64));
            if split {
                assert!(body.starts_with(&r.body_prefix));
            } else {
                assert_eq!(
                    r.body_prefix.as_slice(),
                    &body[..body.len().min(MAX_BODY_PREFIX)]
                );
            }
            assert!(!r.truncated);
        }
        (m, w) => panic!("read {m:?}, generated {w:?}"),
    }
}

/// What holds of any outcome, whatever the input.
fn sane(bytes: &[u8], total: u64) -> Option<Parsed> {
    let mut buf = vec![];
    let into = parse_into(bytes, total, &mut buf);
    let p = parse(bytes, total);
    match (&p, into) {
        (Ok(p), Ok(o)) => {
            assert_eq!(p.messages, buf);
            assert_eq!(
                (p.tail, p.error, p.incomplete_at),
                (o.tail, o.error, o.incomplete_at)
            );
            if let Some(at) = p.incomplete_at {
                assert!(at < bytes.len(), "incomplete_at {at} of {}", bytes.len());
                assert_eq!(p.tail, Tail::HeadIncomplete);
            }
            if let Tail::Body(n) = p.tail {
                assert!(n > 0);
            }
            for m in &p.messages {
                if let Message::Response(r) = m {
                    assert!(r.body_prefix.len() as u64 <= r.content_length.unwrap_or(u64::MAX));
                }
            }
        }
        (Err(a), Err(b)) => {
            assert_eq!(*a, b);
            assert!(buf.is_empty(), "nothing appended on error");
        }
        (a, b) => panic!("parse {a:?} but parse_into {b:?}"),
    }
    p.ok()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_http1_any_bytes(
        bytes in prop_oneof![raw(200), mutated(stream().prop_map(|s| s.0), 6)],
        extra in prop_oneof![Just(0u64), 0u64..100, Just(u64::MAX - 1)],
    ) {
        let total = (bytes.len() as u64).saturating_add(extra);
        sane(&bytes, total);
    }

    #[test]
    fn fuzz_http1_generated_heads_read_back((bytes, wants) in stream()) {
        let p = sane(&bytes, bytes.len() as u64).expect("a generated stream parses");
        prop_assert_eq!(p.error, None);
        prop_assert_eq!(p.tail, Tail::Complete);
        prop_assert_eq!(p.messages.len(), wants.len());
        for (m, w) in p.messages.iter().zip(&wants) {
            check(m, w, false);
        }
    }

    /// A capture that stops early (a prefix of the syscall's bytes) reads the messages
    /// before the cut exactly as the whole capture does.
    #[test]
    fn fuzz_http1_capture_cut_anywhere((bytes, _) in stream(), at in any::<u32>()) {
        let whole = sane(&bytes, bytes.len() as u64).expect("a generated stream parses");
        let cut = pick(at, bytes.len());
        let Some(p) = sane(&bytes[..cut], bytes.len() as u64) else { return Ok(()) };
        prop_assert!(p.messages.len() <= whole.messages.len());
        let n = p.messages.len();
        for (i, (a, b)) in p.messages.iter().zip(&whole.messages).enumerate() {
            if i + 1 < n {
                prop_assert_eq!(a, b);
                continue;
            }
            match (a, b) {
                (Message::Response(a), Message::Response(b)) if !a.truncated => {
                    // The last one's body may be cut.
                    prop_assert!(b.body_prefix.starts_with(&a.body_prefix));
                    let mut a = a.clone();
                    a.body_prefix = b.body_prefix.clone();
                    prop_assert_eq!(&a, b);
                }
                (Message::Request(a), Message::Request(b)) if !a.truncated => {
                    prop_assert_eq!(a, b)
                }
                (a, b) => prop_assert_eq!(
                    std::mem::discriminant(a),
                    std::mem::discriminant(b)
                ),
            }
        }
    }

    /// A stream split over syscalls and joined the way the flow tracker joins it (the
    /// incomplete head carried into the next syscall, bodies skipped by length) reads the
    /// same messages as in one syscall.
    #[test]
    fn fuzz_http1_split_anywhere((bytes, wants) in stream(), points in cut_points(4)) {
        let got = read_split(&bytes, &cuts(&points, bytes.len()));
        prop_assert_eq!(got.len(), wants.len(), "{:?}", got);
        for (m, w) in got.iter().zip(&wants) {
            check(m, w, true);
        }
    }
}

/// Reads `bytes` delivered in pieces, one parse per piece: a minimal model of the
/// flow tracker's framing over complete captures.
fn read_split(bytes: &[u8], cuts: &[usize]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut carry: Vec<u8> = Vec::new();
    let mut skip = 0u64;
    for piece in crate::fuzz_support::pieces(bytes, cuts) {
        let mut joined = std::mem::take(&mut carry);
        joined.extend_from_slice(piece);
        if skip >= joined.len() as u64 {
            skip -= joined.len() as u64;
            continue;
        }
        let rest = &joined[skip as usize..];
        skip = 0;
        let p = match parse(rest, rest.len() as u64) {
            Ok(p) => p,
            // Not even a start line yet: it continues in the next piece.
            Err(ParseError::TooShort) => {
                carry = rest.to_vec();
                continue;
            }
            Err(e) => panic!("{e}: {rest:?}"),
        };
        assert_eq!(p.error, None, "{rest:?}");
        out.extend(p.messages);
        match p.tail {
            Tail::HeadIncomplete => {
                let at = p.incomplete_at.expect("an incomplete head has a start");
                if p.incomplete_parsed {
                    out.pop();
                }
                carry = rest[at..].to_vec();
            }
            Tail::Body(n) => skip = n,
            Tail::Complete => {}
            t => panic!("tail {t:?} of {rest:?}"),
        }
    }
    out
}

/// Found by `fuzz_http1_generated_heads_read_back`: a body starting with "H" (here all of
/// it) was taken for the next response's status line, as after a response to HEAD.
#[test]
fn a_body_starting_like_a_status_line_is_a_body() {
    for body in [&b"H"[..], b"HTTP", b"HTTP/1"] {
        let mut b =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        b.extend_from_slice(body);
        let p = parse(&b, b.len() as u64).expect("parses");
        assert_eq!(p.tail, Tail::Complete, "{body:?}");
        let [Message::Response(r)] = &p.messages[..] else {
            panic!("{p:?}")
        };
        assert_eq!(r.body_prefix.as_slice(), body);
    }
}
