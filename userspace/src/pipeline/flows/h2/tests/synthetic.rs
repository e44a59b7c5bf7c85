//! Synthetic frame streams built with an HPACK encoder, for the shapes curl does not
//! produce: padding, gaps, interleaving, resets, WebSocket, garbage and limits.

use super::*;

#[test]
fn continuation_and_padding() {
    let mut peer = Peer::new();
    let req = peer.request("a.test", "/x");
    let (a, b) = req.split_at(4);
    let (b, c) = b.split_at(3);
    let mut reads = frame(kind::HEADERS, flag::END_STREAM, 1, a);
    reads.extend(frame(kind::CONTINUATION, 0, 1, b));
    reads.extend(frame(kind::CONTINUATION, flag::END_HEADERS, 1, c));
    let resp = peer.router_miss();
    // Padded and with priority fields, then a padded DATA frame.
    let mut p = vec![4u8, 0, 0, 0, 0, 16];
    p.extend_from_slice(&resp);
    p.extend_from_slice(&[0; 4]);
    let mut writes = frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::PADDED | flag::PRIORITY,
        1,
        &p,
    );
    let mut d = vec![3u8];
    d.extend_from_slice(crate::pipeline::classify::ROUTER_MISS_BODY);
    d.extend_from_slice(&[0; 3]);
    writes.extend(frame(kind::DATA, flag::PADDED | flag::END_STREAM, 1, &d));
    let r = capture::replay(&[preface(), read(&reads), write(&writes)]);
    assert_eq!(r.desync, None);
    assert!(r.pairs[0].is_get("a.test", "/x"));
    assert_eq!(
        router_miss_signature(r.pairs[0].response.as_ref().unwrap()),
        Signature::Full
    );
    // Something between a HEADERS and its CONTINUATION is a protocol error.
    let mut bad = frame(kind::HEADERS, 0, 3, a);
    bad.extend(frame(8, 0, 0, &[0, 0, 0, 1]));
    let r = capture::replay(&[preface(), read(&bad)]);
    assert_eq!(r.desync, Some(Unclassified::Frame));
}

#[test]
fn gap_inside_data_stays_in_sync() {
    let mut peer = Peer::new();
    let mut records = vec![preface()];
    records.push(read(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &peer.request("a.test", "/big"),
    )));
    let mut w = frame(kind::HEADERS, flag::END_HEADERS, 1, &peer.ok());
    w.extend(frame(kind::DATA, 0, 1, &[b'x'; 16000]));
    // 1 KiB captured of a 16 KiB write: the rest is inside the DATA payload.
    records.push(write_cut(&w, 1024));
    records.push(write(&frame(kind::DATA, flag::END_STREAM, 1, b"end")));
    records.push(read(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        3,
        &peer.request("a.test", "/miss"),
    )));
    let mut w = frame(kind::HEADERS, flag::END_HEADERS, 3, &peer.router_miss());
    w.extend(frame(
        kind::DATA,
        flag::END_STREAM,
        3,
        crate::pipeline::classify::ROUTER_MISS_BODY,
    ));
    records.push(write(&w));
    let r = capture::replay(&records);
    assert_eq!(r.desync, None);
    assert_eq!(statuses(&r), [Some(200), Some(404)]);
    assert_eq!(
        router_miss_signature(r.pairs[1].response.as_ref().unwrap()),
        Signature::Full
    );
}

#[test]
fn gap_in_a_header_block_desyncs_and_counts() {
    let mut peer = Peer::new();
    let mut records = vec![preface()];
    for (id, path) in [(1u32, "/a"), (3, "/b")] {
        records.push(read(&frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            id,
            &peer.request("a.test", path),
        )));
    }
    // Stream 1's response header block is cut by the capture: the response table is lost.
    let big = peer.server.encode([
        (b":status".as_slice(), b"200".as_slice()),
        (b"x-big", &[b'v'; 3000][..]),
    ]);
    let w = frame(kind::HEADERS, flag::END_HEADERS, 1, &big);
    records.push(write_cut(&w, 1024));
    // Stream 3's answer and a later request: never guessed.
    records.push(write(&frame(
        kind::HEADERS,
        flag::END_HEADERS,
        3,
        &peer.ok(),
    )));
    records.push(read(&frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        5,
        &peer.request("a.test", "/c"),
    )));
    records.push(Record::Closed);
    let r = capture::replay(&records);
    assert_eq!(r.desync, Some(Unclassified::HeaderGap));
    assert!(r.pairs.is_empty(), "{:?}", r.pairs);
    assert_eq!(r.metrics.h2_unclassified.get(Unclassified::HeaderGap), 3);
    assert_eq!(r.metrics.skipped_data.get(Skip::H2Desync), 1);
    assert_eq!(r.traffic.desynced_connections, 1);
}

#[test]
fn interleaved_streams_pair_by_id() {
    let mut peer = Peer::new();
    let mut reads = Vec::new();
    for (id, path) in [(1u32, "/one"), (3, "/two"), (5, "/three")] {
        reads.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            id,
            &peer.request("a.test", path),
        ));
    }
    let mut w = frame(kind::HEADERS, flag::END_HEADERS, 5, &peer.ok());
    w.extend(frame(
        kind::HEADERS,
        flag::END_HEADERS,
        3,
        &peer.router_miss(),
    ));
    w.extend(frame(kind::DATA, 0, 3, b"404 page "));
    w.extend(frame(
        kind::HEADERS,
        flag::END_HEADERS,
        1,
        &peer.router_miss(),
    ));
    w.extend(frame(kind::DATA, 0, 1, b"404 page not found\n"));
    w.extend(frame(kind::DATA, flag::END_STREAM, 3, b"not found\n"));
    w.extend(frame(kind::DATA, flag::END_STREAM, 1, b""));
    w.extend(frame(kind::DATA, flag::END_STREAM, 5, b"ok"));
    // Split into records at arbitrary points, as Go's buffered writer may.
    let (w1, w2) = w.split_at(50);
    let r = capture::replay(&[preface(), read(&reads), write(w1), write(w2)]);
    assert_eq!(r.desync, None);
    let by_path: Vec<(bool, Option<u16>, Signature)> = ["/one", "/two", "/three"]
        .iter()
        .map(|p| {
            let pair = r.pairs.iter().find(|x| x.is_get("a.test", p)).unwrap();
            let resp = pair.response.as_ref().unwrap();
            (true, pair.status(), router_miss_signature(resp))
        })
        .collect();
    assert_eq!(
        by_path,
        [
            (true, Some(404), Signature::Full),
            (true, Some(404), Signature::Full),
            (true, Some(200), Signature::NoMatch),
        ]
    );
}

#[test]
fn resets_goaway_and_close_end_streams() {
    let mut peer = Peer::new();
    let mut reads = Vec::new();
    for (id, path) in [(1u32, "/reset"), (3, "/late"), (5, "/beyond"), (7, "/open")] {
        reads.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            id,
            &peer.request("a.test", path),
        ));
    }
    let mut w = frame(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]);
    // GOAWAY with last stream 3: 5 and 7 were never processed.
    w.extend(frame(kind::GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]));
    w.extend(frame(
        kind::HEADERS,
        flag::END_HEADERS,
        3,
        &peer.router_miss(),
    ));
    let r = capture::replay(&[preface(), read(&reads), write(&w), Record::Closed]);
    assert_eq!(r.desync, None);
    // Reset, the two above the GOAWAY, then at close the 404 still waiting for its body.
    assert_eq!(r.pairs.len(), 4);
    assert!(r.pairs[0].is_get("a.test", "/reset") && r.pairs[0].response.is_none());
    assert_eq!(r.traffic.resets, 1);
    let late = r
        .pairs
        .iter()
        .find(|p| p.is_get("a.test", "/late"))
        .unwrap();
    assert_eq!(
        router_miss_signature(late.response.as_ref().unwrap()),
        Signature::HeadersOnly
    );
    for p in ["/beyond", "/open"] {
        let x = r.pairs.iter().find(|x| x.is_get("a.test", p)).unwrap();
        assert!(x.response.is_none());
    }
}

#[test]
fn websocket_over_h2_and_its_reset() {
    let mut peer = Peer::new();
    let connect = |peer: &mut Peer, host: &str| {
        peer.client.encode([
            (b":method".as_slice(), b"CONNECT".as_slice()),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":authority", host.as_bytes()),
            (b":path", b"/ws"),
        ])
    };
    let mut reads = frame(
        kind::HEADERS,
        flag::END_HEADERS,
        1,
        &connect(&mut peer, "ws.test"),
    );
    reads.extend(frame(
        kind::HEADERS,
        flag::END_HEADERS,
        3,
        &connect(&mut peer, "ws.test"),
    ));
    let mut w = frame(kind::HEADERS, flag::END_HEADERS, 1, &peer.ok());
    w.extend(frame(kind::RST_STREAM, 0, 3, &[0, 0, 0, 2]));
    let events = tls_events(&[preface(), read(&reads), write(&w)], 0xc000_3000, 10);
    let mut flows = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
    let mut out = Vec::new();
    for e in &events {
        flows.handle(e, &mut out);
    }
    let mut obs = Vec::new();
    let mut classifier = Classifier::new();
    for e in out {
        if let FlowEvent::Exchange { request, .. } | FlowEvent::WsReset { request, .. } = &e {
            assert!(request.websocket);
        }
        classifier.classify(e, &mut obs);
    }
    let outcomes: Vec<&str> = obs
        .iter()
        .filter_map(|o| match o {
            Observation::Ws { outcome, .. } => Some(outcome.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes, ["upgraded", "reset"]);
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn garbage_is_counted_never_classified() {
    for seed in 0..500u64 {
        let g = noise(seed, 64 + (seed as usize % 900));
        let mut hdr = frame(kind::HEADERS, flag::END_HEADERS, 1, &g[..g.len().min(200)]);
        hdr.truncate(9 + g.len().min(200));
        for records in [
            vec![preface(), read(&g), write(&g)],
            vec![preface(), read(&hdr), write(&g)],
        ] {
            let r = capture::replay(&records);
            // Whatever noise decodes to, nothing comes out with a response unless a
            // request and a response were both decoded for the same stream.
            for p in &r.pairs {
                assert!(
                    r.traffic.requests >= 1 && (p.response.is_none() || r.traffic.responses >= 1)
                );
            }
        }
    }
    // A preface that is not one.
    let r = capture::replay(&[read(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")]);
    assert_eq!(r.desync, Some(Unclassified::Frame));
    // A CONTINUATION out of nowhere.
    let r = capture::replay(&[preface(), read(&frame(kind::CONTINUATION, 4, 1, b"\x82"))]);
    assert_eq!(r.desync, Some(Unclassified::Frame));
    // An index beyond both tables.
    let r = capture::replay(&[
        preface(),
        read(&frame(kind::HEADERS, flag::END_HEADERS, 1, b"\xff\x7f")),
    ]);
    assert_eq!(r.desync, Some(Unclassified::Hpack));
}

#[test]
fn limits_are_counted() {
    // Streams per connection.
    let mut peer = Peer::new();
    let mut reads = Vec::new();
    for i in 0..(conn::MAX_STREAMS as u32 + 3) {
        reads.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            2 * i + 1,
            &peer.request("a.test", "/"),
        ));
    }
    let r = capture::replay(&[preface(), read(&reads)]);
    assert_eq!(r.metrics.h2_unclassified.get(Unclassified::StreamLimit), 3);
    assert_eq!(r.pairs.len(), conn::MAX_STREAMS, "the rest end unanswered");

    // A header block larger than the buffer, in CONTINUATIONs.
    let mut reads = frame(kind::HEADERS, 0, 1, &[0x82; 8000]);
    reads.extend(frame(kind::CONTINUATION, 0, 1, &[0x82; 8000]));
    reads.extend(frame(
        kind::CONTINUATION,
        flag::END_HEADERS,
        1,
        &[0x82; 8000],
    ));
    let r = capture::replay(&[preface(), read(&reads)]);
    assert_eq!(r.desync, Some(Unclassified::BlockTooLarge));

    // Connections with h2 state: the oldest is evicted, its stream counted.
    let metrics = PipelineMetrics::default();
    let mut conns: H2Conns<u32> = H2Conns::new(
        2,
        metrics.clone(),
        crate::pipeline::budget::Budget::unlimited(),
    );
    let mut out = Vec::new();
    for k in 0..3u32 {
        conns.open(k, u64::from(k), &mut out);
        let block = Encoder::new().encode([
            (b":method".as_slice(), b"GET".as_slice()),
            (b":authority", b"a.test"),
            (b":path", b"/"),
        ]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &block,
        ));
        assert!(conns.feed(k, READ, u64::from(k), &bytes, bytes.len() as u64, &mut out));
    }
    assert_eq!(conns.len(), 2);
    assert_eq!(metrics.h2_unclassified.get(Unclassified::ConnLimit), 1);
    assert!(!conns.contains(&0));
}
