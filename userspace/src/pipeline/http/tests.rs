use super::*;
use crate::hosts::Host;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse_all(b: &[u8]) -> Parsed {
    parse(b, b.len() as u64).unwrap()
}

fn one_response(b: &[u8]) -> ResponseHead {
    let p = parse_all(b);
    assert_eq!(p.messages.len(), 1, "{p:?}");
    match p.messages.into_iter().next().unwrap() {
        Message::Response(r) => r,
        m => panic!("not a response: {m:?}"),
    }
}

fn one_request(b: &[u8]) -> RequestHead {
    let p = parse_all(b);
    assert_eq!(p.messages.len(), 1, "{p:?}");
    match p.messages.into_iter().next().unwrap() {
        Message::Request(r) => r,
        m => panic!("not a request: {m:?}"),
    }
}

use HeaderId::*;

#[test]
fn traefik_router_miss_fixture() {
    let r = one_response(&fixture("traefik_router_miss_404_keepalive.bin"));
    assert_eq!(r.status, 404);
    assert_eq!(r.version, Version::Http11);
    assert_eq!(r.reason.as_str(), "Not Found");
    assert_eq!(
        r.headers.as_slice(),
        [ContentType, XContentTypeOptions, Date, ContentLength]
    );
    assert_eq!(r.content_type.as_deref(), Some("text/plain; charset=utf-8"));
    assert_eq!(r.x_content_type_options.as_deref(), Some("nosniff"));
    assert_eq!(r.content_length, Some(19));
    assert_eq!(r.body_prefix.as_slice(), b"404 page not found\n");
    assert!(!r.truncated);
}

#[test]
fn relayed_404s_have_sorted_headers() {
    let r = one_response(&fixture("traefik_relayed_go_notfound_404.bin"));
    assert_eq!(
        r.headers.as_slice(),
        [
            ContentLength,
            ContentType,
            Date,
            XContentTypeOptions,
            Connection
        ]
    );
    let r = one_response(&fixture("traefik_relayed_backend_404.bin"));
    assert_eq!(
        r.headers.as_slice(),
        [ContentLength, ContentType, Date, Connection]
    );
    assert_eq!(r.body_prefix.as_slice(), br#"{"error":"no such item"}"#);
}

#[test]
fn chunked_response_stops_at_body() {
    let b = fixture("traefik_relayed_chunked_200.bin");
    let p = parse_all(&b);
    assert_eq!(p.tail, Tail::Chunked);
    let Message::Response(r) = &p.messages[0] else {
        panic!()
    };
    assert!(r.chunked);
    assert_eq!(r.content_length, None);
    assert!(r.body_prefix.is_empty());
}

#[test]
fn upgrade_request_and_101() {
    let req = one_request(&fixture("traefik_ws_upgrade_101.req.bin"));
    assert!(req.websocket);
    assert_eq!(req.host, Host::Name("app.example.test".into()));
    assert!(!req.probe);
    let b = fixture("traefik_ws_upgrade_101.bin");
    // Captured at the client: the 101 head followed by the first frame; the parser must
    // not take the frame for a body.
    let p = parse(&b, b.len() as u64).unwrap();
    let Message::Response(r) = &p.messages[0] else {
        panic!()
    };
    assert_eq!(r.status, 101);
    assert_eq!(p.messages.len(), 1);
}

#[test]
fn upstream_request_written_by_traefik() {
    let r = one_request(&fixture("traefik_upstream_request.bin"));
    assert_eq!(r.host, Host::Name("rec.example.test".into()));
    assert_eq!(r.forwarded_host, Host::Name("rec.example.test".into()));
    // Traefik passes the client's User-Agent on: an older agent's unsigned marker.
    assert_eq!(r.probe_ref, ProbeRef::Forged);
    assert!(!r.probe);
    // Same method and path as the client's request: same hash.
    let client = one_request(&fixture("traefik_rec_200.req.bin"));
    assert_eq!(client.target, r.target);
    assert_ne!(client.target, target_hash(b"GET", b"/api/items?id=8"));
}

#[test]
fn http10_and_head_variants() {
    let r = one_response(&fixture("traefik_router_miss_404_http10.bin"));
    assert_eq!(r.version, Version::Http10);
    let r = one_response(&fixture("traefik_router_miss_404_head.bin"));
    assert_eq!(r.content_length, Some(19));
    assert!(r.body_prefix.is_empty());
    let req = one_request(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(req.version, Some(Version::Http10));
    assert_eq!(req.host, Host::Missing);
}

#[test]
fn pipelined_responses_from_traefik() {
    let p = parse_all(&fixture("traefik_pipelined_miss_then_ok.bin"));
    let statuses: Vec<u16> = p
        .messages
        .iter()
        .map(|m| match m {
            Message::Response(r) => r.status,
            Message::Request(_) => 0,
        })
        .collect();
    assert_eq!(statuses, vec![404, 200]);
    assert_eq!(p.tail, Tail::Complete);
}

#[test]
fn pipelined_requests_skip_bodies() {
    let b = b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: b.test\r\n\r\nGET /c HTTP/1.1\r\nHost: c.test\r\n\r\n";
    let p = parse_all(b);
    let hosts: Vec<_> = p
        .messages
        .iter()
        .map(|m| match m {
            Message::Request(r) => r.host.name().unwrap().to_string(),
            Message::Response(_) => String::new(),
        })
        .collect();
    assert_eq!(hosts, ["a.test", "b.test", "c.test"]);
    assert_eq!(p.tail, Tail::Complete);
}

#[test]
fn body_running_past_capture() {
    let b = b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nhello";
    // The syscall moved 60 bytes of body beyond what was captured.
    let p = parse(b, b.len() as u64 + 60).unwrap();
    assert_eq!(p.tail, Tail::Body(100 - 5 - 60));
    let p = parse(b, b.len() as u64 + 95).unwrap();
    assert_eq!(p.tail, Tail::Complete);
    let p = parse(b, b.len() as u64 + 200).unwrap();
    assert_eq!(p.tail, Tail::Unknown);
}

#[test]
fn stops_at_chunked_request_body() {
    let b = b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: b.test\r\n\r\n";
    let p = parse_all(b);
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.tail, Tail::Chunked);
}

#[test]
fn truncated_heads_keep_complete_lines() {
    let full = b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nUser-Agent: routeskew-probe/1\r\n\r\n";
    for cut_at in 1..full.len() - 1 {
        let b = &full[..cut_at];
        // Cut by the capture: the syscall moved the whole head.
        match parse(b, full.len() as u64) {
            Ok(p) => {
                let Message::Request(r) = &p.messages[0] else {
                    panic!()
                };
                assert!(r.truncated, "cut at {cut_at}");
                assert_eq!(p.tail, Tail::Unknown);
                let host_line_end = 18 + "Host: app.example.test\r\n".len();
                if cut_at >= host_line_end {
                    assert_eq!(r.host.name(), Some("app.example.test"), "cut at {cut_at}");
                } else {
                    assert_eq!(r.host, Host::Missing, "cut at {cut_at}");
                }
                let ws_line_end = full
                    .windows(21)
                    .position(|w| w == b"Connection: Upgrade\r\n")
                    .unwrap()
                    + 21;
                assert_eq!(r.websocket, cut_at >= ws_line_end, "cut at {cut_at}");
            }
            Err(e) => {
                assert!(cut_at < 5, "cut at {cut_at}: {e}");
                assert_eq!(e, ParseError::TooShort);
            }
        }
        // Ended by the syscall: the rest of the head comes in the next one.
        if let Ok(p) = parse(b, b.len() as u64) {
            assert_eq!(p.tail, Tail::HeadIncomplete);
            assert_eq!(p.incomplete_at, Some(0));
            assert!(p.incomplete_parsed);
        }
    }
    let resp = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Cont";
    let r = one_response(resp);
    assert!(r.truncated);
    assert_eq!(r.headers.as_slice(), [ContentType]);
    let r = one_response(b"HTTP/1.1 404 No");
    assert_eq!(r.status, 404);
    assert!(r.truncated);
    assert_eq!(parse(b"HTTP/1.1 40", 11), Err(ParseError::TooShort));
}

#[test]
fn garbage_and_binary() {
    assert_eq!(parse(b"", 0), Err(ParseError::Empty));
    assert_eq!(
        parse(b"\x16\x03\x01\x02\x00\x01\x00", 7),
        Err(ParseError::NotHttp)
    );
    assert_eq!(
        parse(&[0x81, 0x02, b'h', b'i'], 4),
        Err(ParseError::NotHttp)
    );
    assert_eq!(parse(b"hello world\r\n", 13), Err(ParseError::NotHttp));
    assert_eq!(
        parse(b"GET\x00/ HTTP/1.1\r\n\r\n", 18),
        Err(ParseError::NotHttp)
    );
    assert_eq!(
        parse(b"HTTP/1.1 abc OK\r\n\r\n", 19),
        Err(ParseError::Malformed)
    );
    assert_eq!(
        parse(b"HTTP/1.9 200 OK\r\n\r\n", 19),
        Err(ParseError::Malformed)
    );
    let many: Vec<u8> = std::iter::once(b"HTTP/1.1 200 OK\r\n".to_vec())
        .chain((0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n").into_bytes()))
        .chain(std::iter::once(b"\r\n".to_vec()))
        .flatten()
        .collect();
    assert_eq!(
        parse(&many, many.len() as u64),
        Err(ParseError::TooManyHeaders)
    );
    // Deterministic pseudo-random junk must never panic.
    let mut x: u32 = 0x1234_5678;
    for len in 0..600 {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = parse(&junk, len as u64 + 3);
        let mut prefixed = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        prefixed.extend_from_slice(&junk);
        let _ = parse(&prefixed, prefixed.len() as u64);
        let mut prefixed = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n".to_vec();
        prefixed.extend_from_slice(&junk);
        let _ = parse(&prefixed, prefixed.len() as u64);
    }
}

#[test]
fn next_message_cut_in_its_first_bytes() {
    let b = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGE";
    let p = parse(b, b.len() as u64).unwrap();
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.error, None);
    assert_eq!(p.tail, Tail::HeadIncomplete);
    assert_eq!(p.incomplete_at, Some(b.len() - 2));
    assert!(!p.incomplete_parsed);
    let p = parse(b, b.len() as u64 + 100).unwrap();
    assert_eq!((p.tail, p.error), (Tail::Unknown, None));
}

#[test]
fn trailing_garbage_after_a_message() {
    let b = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 2xx\r\n\r\n";
    let p = parse_all(b);
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.error, Some(ParseError::TrailingGarbage));
}

#[test]
fn forwarded_host_reuses_the_host_only_when_it_is_its_normalisation() {
    let r =
        one_request(b"GET / HTTP/1.1\r\nHost: A.test:80\r\nX-Forwarded-Host: A.test:80\r\n\r\n");
    assert_eq!(r.host, Host::Name("a.test".into()));
    assert_eq!(r.forwarded_host, Host::Name("a.test".into()));
    // Conflicting Host headers make the Host invalid, not the forwarded one.
    let r = one_request(
        b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nX-Forwarded-Host: b.test\r\n\r\n",
    );
    assert_eq!(r.host, Host::Invalid);
    assert_eq!(r.forwarded_host, Host::Name("b.test".into()));
    let r =
        one_request(b"GET / HTTP/1.1\r\nX-Forwarded-Host: c.test, d.test\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.forwarded_host, Host::Name("c.test".into()));
    // Long names go to the heap and still compare by value.
    let long = format!("{}.test", "x".repeat(100));
    let r = one_request(format!("GET / HTTP/1.1\r\nHost: {long}\r\n\r\n").as_bytes());
    assert_eq!(r.host.name(), Some(long.as_str()));
    assert_eq!(r.host, Host::Name(long.as_str().into()));
}

#[test]
fn inline_values_cut_at_character_boundaries() {
    let v = cut_str::<4>("ab\u{e9}".as_bytes());
    assert_eq!(v.as_str(), "ab\u{e9}");
    // A multi-byte character across the limit is dropped, not split.
    let v = cut_str::<3>("ab\u{e9}".as_bytes());
    assert_eq!(v.as_str(), "ab");
    let v = cut_str::<8>(b"ok\xff\xfe");
    assert_eq!(v.as_str(), "ok");
    let b = cut_bytes::<4>(b"404 page");
    assert_eq!(b.as_slice(), b"404 ");
}

#[test]
fn hostile_host_headers_in_requests() {
    // Control character: httparse rejects the header; the request still counts, with an
    // invalid host, so that the server's 400 pairs with it.
    let r = one_request(b"GET / HTTP/1.1\r\nHost: a\x01b.test\r\n\r\n");
    assert_eq!(r.host, Host::Invalid);
    assert!(!r.truncated);
    let r =
        one_request("GET / HTTP/1.1\r\nHost: \u{441}\u{430}\u{439}\u{442}.test\r\n\r\n".as_bytes());
    assert_eq!(r.host, Host::Invalid);
    let long = format!("GET / HTTP/1.1\r\nHost: {}.test\r\n\r\n", "a".repeat(600));
    assert_eq!(one_request(long.as_bytes()).host, Host::Invalid);
    let r = one_request(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n");
    assert_eq!(r.host, Host::Invalid);
    let r = one_request(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: A.test:80\r\n\r\n");
    assert_eq!(r.host, Host::Name("a.test".into()));
    let r = one_request(b"GET http://b.test:81/x HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(r.host, Host::Name("b.test".into()));
}

#[test]
fn websocket_needs_both_headers() {
    let r = one_request(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    assert!(!r.websocket);
    let r = one_request(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n");
    assert!(r.websocket);
    let r =
        one_request(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n");
    assert!(!r.websocket);
}

#[test]
fn target_hash_depends_on_method_and_path() {
    let a = one_request(b"GET /a HTTP/1.1\r\n\r\n").target;
    assert_eq!(a, one_request(b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n").target);
    assert_ne!(a, one_request(b"HEAD /a HTTP/1.1\r\n\r\n").target);
    assert_ne!(a, one_request(b"GET /b HTTP/1.1\r\n\r\n").target);
}

#[test]
fn bodyless_statuses_and_head_responses() {
    let b = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(parse_all(b).messages.len(), 2);
    let b = b"HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(parse_all(b).messages.len(), 2);
    let b = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(parse(b, b.len() as u64), Err(ParseError::Malformed));
}

#[test]
fn probe_tags_round_trip() {
    let ua = probe_check_user_agent("0.1.0", 0x00ab_cdef_0123_4567);
    assert_eq!(
        probe_ref_of(ua.as_bytes()),
        ProbeRef::Check(0x00ab_cdef_0123_4567)
    );
    let head = format!("GET / HTTP/1.1\r\nHost: a.test\r\nUser-Agent: {ua}\r\n\r\n");
    let r = one_request(head.as_bytes());
    assert!(r.probe);
    assert_eq!(r.probe_ref, ProbeRef::Check(0x00ab_cdef_0123_4567));
    let ua = probe_housekeeping_user_agent("0.1.0");
    assert_eq!(probe_ref_of(ua.as_bytes()), ProbeRef::Housekeeping);
    assert_eq!(
        probe_ref_of(b"curl/8 check/0000000000000001"),
        ProbeRef::None
    );
}

#[test]
fn probe_tags_nobody_else_signed_are_forged() {
    let good = probe_check_user_agent("0.1.0", 7);
    let (head, sig) = good.rsplit_once('.').unwrap();
    let flipped = format!("{head}.{:016x}", u64::from_str_radix(sig, 16).unwrap() ^ 1);
    let hk = probe_housekeeping_user_agent("0.1.0");
    let hk_unsigned = hk.rsplit_once('/').unwrap().0.to_string();
    let other_id = good.replacen("check/0000000000000007", "check/0000000000000008", 1);
    for forged in [
        "routeskew-probe/0.1",
        "routeskew-probe/0.1 check/12",
        "routeskew-probe/0.1 check/zzzzzzzzzzzzzzzz",
        "routeskew-probe/0.1 check/0000000000000001",
        "routeskew-probe/0.1 housekeeping",
        &flipped,
        &hk_unsigned,
        &other_id,
    ] {
        assert_eq!(
            probe_ref_of(forged.as_bytes()),
            ProbeRef::Forged,
            "{forged}"
        );
        let head = format!("GET / HTTP/1.1\r\nHost: a.test\r\nUser-Agent: {forged}\r\n\r\n");
        let r = one_request(head.as_bytes());
        assert!(!r.probe, "{forged}: an imitation is passive traffic");
        assert_eq!(r.probe_ref, ProbeRef::Forged);
    }
}

#[test]
fn probe_marker_is_a_prefix() {
    let ua = probe_check_user_agent("0.1", 3);
    let own = format!("GET / HTTP/1.1\r\nUser-Agent: {ua}\r\n\r\n");
    assert!(one_request(own.as_bytes()).probe);
    let inside = format!("GET / HTTP/1.1\r\nUser-Agent: curl {ua}\r\n\r\n");
    assert!(!one_request(inside.as_bytes()).probe);
    assert_eq!(one_request(inside.as_bytes()).probe_ref, ProbeRef::None);
}
