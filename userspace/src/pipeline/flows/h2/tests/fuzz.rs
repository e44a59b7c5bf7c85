//! Property tests of the HTTP/2 frame reader and HPACK path (issue 16): a conversation cut
//! into records anywhere pairs the same requests and responses as one record per
//! direction; damaged and random records never panic; frames are rebuilt within their
//! declared lengths; a checked-in corpus of truncated frames is refused quickly.

use proptest::prelude::*;

use super::frames::{FeedError, Frame, FrameReader, HEADER_LEN};
use super::*;
use crate::fuzz_support::{config, cut_points, cuts, mutated, pick, pieces, raw, text_of};

/// Request and response streams of `turns` (host, status, body) on streams 1, 3, 5…,
/// each side with its own HPACK encoder (dynamic table in use from the second block on).
fn conversation(turns: &[(Vec<u8>, u16, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let mut peer = Peer::new();
    let mut reads = PREFACE.to_vec();
    let mut writes = Vec::new();
    for (i, (host, status, body)) in turns.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        let host = format!("h{}.test", String::from_utf8_lossy(host));
        let block = peer.request(&host, "/p");
        reads.extend(frame(
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            id,
            &block,
        ));
        let status = status.to_string();
        let block = peer.server.encode([
            (b":status".as_slice(), status.as_bytes()),
            (b"content-type", b"text/plain"),
        ]);
        writes.extend(frame(kind::HEADERS, flag::END_HEADERS, id, &block));
        writes.extend(frame(kind::DATA, flag::END_STREAM, id, body));
    }
    (reads, writes)
}

fn turns() -> impl Strategy<Value = Vec<(Vec<u8>, u16, Vec<u8>)>> {
    proptest::collection::vec(
        (
            text_of(b"abc019", 1..8),
            proptest::sample::select(&[200u16, 404, 502][..]),
            text_of(b"404 page notfund\n", 0..24),
        ),
        1..4,
    )
}

/// What the tracker paired, without timestamps (which follow the record count).
fn pairs(r: &capture::Replay) -> Vec<capture::Pair> {
    r.pairs
        .iter()
        .cloned()
        .map(|mut p| {
            p.request.ts_ns = 0;
            p
        })
        .collect()
}

/// Records of one direction from raw parts: (bytes, uncaptured gap after them).
fn records(dir: Direction, parts: Vec<(Vec<u8>, u64)>) -> Vec<Record> {
    parts
        .into_iter()
        .map(|(bytes, gap)| Record::Data {
            direction: dir,
            total_len: bytes.len() as u64 + gap,
            bytes,
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_h2_split_anywhere(
        turns in turns(),
        read_cuts in cut_points(5),
        write_cuts in cut_points(5),
    ) {
        let (reads, writes) = conversation(&turns);
        let whole = capture::replay(&[read(&reads), write(&writes)]);
        prop_assert_eq!(whole.desync, None);
        prop_assert_eq!(whole.pairs.len(), turns.len());
        for (p, (_, status, body)) in whole.pairs.iter().zip(&turns) {
            let r = p.response.as_ref().expect("answered");
            prop_assert_eq!(r.status, *status);
            if *status == 404 {
                prop_assert_eq!(r.body_prefix.as_slice(), &body[..]);
            }
        }
        let mut split: Vec<Record> = pieces(&reads, &cuts(&read_cuts, reads.len()))
            .into_iter()
            .map(read)
            .collect();
        split.extend(pieces(&writes, &cuts(&write_cuts, writes.len())).into_iter().map(write));
        let cut = capture::replay(&split);
        prop_assert_eq!(cut.desync, None);
        prop_assert_eq!(pairs(&cut), pairs(&whole));
    }

    /// Records of a valid conversation damaged, cut short by the capture, or random,
    /// in both directions.
    #[test]
    fn fuzz_h2_damaged_records(
        turns in turns(),
        edits in proptest::collection::vec((any::<bool>(), any::<u32>(), any::<u8>()), 0..4),
        gaps in proptest::collection::vec((any::<bool>(), any::<u32>(), 0u64..40), 0..3),
        noise in raw(24),
    ) {
        let (mut reads, mut writes) = conversation(&turns);
        for (r, at, v) in edits {
            let b = if r { &mut reads } else { &mut writes };
            let i = pick(at, b.len());
            b[i] = v;
        }
        let mut rs = vec![(reads, 0u64)];
        let mut ws = vec![(writes, 0u64), (noise, 0)];
        for (r, at, gap) in gaps {
            let parts = if r { &mut rs } else { &mut ws };
            let (first, _) = parts.remove(0);
            let c = pick(at, first.len());
            // The capture stopped at c and the rest of this record was not copied.
            let rest = first[c..].to_vec();
            parts.insert(0, (first[..c].to_vec(), gap + rest.len() as u64));
        }
        let mut recs = records(Direction::Read, rs);
        recs.extend(records(Direction::Write, ws));
        let r = capture::replay(&recs);
        prop_assert!(r.pairs.len() <= turns.len() + 1);
    }

    /// The frame reader alone: frames end within what was fed, keep at most what they
    /// declare, and a gap is skipped only where the lengths say what it covers.
    #[test]
    fn fuzz_h2_frame_reader(
        parts in proptest::collection::vec(
            (prop_oneof![raw(40), mutated(turns().prop_map(|t| conversation(&t).1), 3)], 0u64..50),
            1..4,
        ),
        max_keep in 0usize..64,
    ) {
        let mut r = FrameReader::default();
        for (bytes, gap) in parts {
            let result = r.feed(&bytes, gap, max_keep, &mut |f: Frame<'_>| -> Result<(), ()> {
                assert!(f.payload.len() <= f.header.len as usize);
                Ok(())
            });
            match result {
                Ok(()) | Err(FeedError::Frame(_)) => {}
                Err(FeedError::Handler(())) => panic!("the handler never fails"),
            }
            if result.is_err() {
                break;
            }
            prop_assert!(r.buffered() <= max_keep.max(64 + 1) + HEADER_LEN + 64);
        }
    }

    #[test]
    fn fuzz_h2_capture_file(bytes in prop_oneof![raw(64), mutated(Just(capture::encode(&[read(b"ab"), Record::Closed, write(b"x")])), 4)]) {
        if let Ok(recs) = capture::decode(&bytes) {
            prop_assert_eq!(capture::encode(&recs), bytes);
        }
    }
}

/// The checked-in corpus of truncated and malformed frames (`corpus/`, in the capture
/// file format of [`capture`]), with the loss of sync each must end in. Rewrite the files
/// with `ROUTESKEW_WRITE_CORPUS=1 cargo test -p routeskew --lib h2::tests::fuzz`.
fn corpus() -> Vec<(&'static str, Vec<Record>, Unclassified)> {
    let mut peer = Peer::new();
    let block = peer.request("a.test", "/x");
    let headers = frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &block,
    );
    let cut = |b: &[u8], n: usize| Record::Data {
        direction: Direction::Read,
        total_len: b.len() as u64,
        bytes: b[..n].to_vec(),
    };
    // A header block fragment declared 16 MiB long, longer than any block kept.
    let mut huge = frame(kind::HEADERS, 0, 1, b"");
    huge[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
    // Padding longer than the frame.
    let padded = frame(
        kind::HEADERS,
        flag::END_HEADERS | flag::PADDED,
        1,
        &[200, 0x82],
    );
    vec![
        (
            "headers_block_cut_by_capture.cap",
            vec![preface(), cut(&headers, HEADER_LEN + 2)],
            Unclassified::HeaderGap,
        ),
        (
            "frame_header_cut_by_capture.cap",
            vec![preface(), cut(&headers, 5)],
            Unclassified::HeaderGap,
        ),
        (
            "block_larger_than_kept.cap",
            vec![preface(), read(&huge)],
            Unclassified::BlockTooLarge,
        ),
        (
            "padding_past_frame.cap",
            vec![preface(), read(&padded)],
            Unclassified::Frame,
        ),
    ]
}

fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pipeline/flows/h2/corpus")
}

#[test]
fn truncated_frame_corpus_loses_sync_quickly() {
    let write = std::env::var_os("ROUTESKEW_WRITE_CORPUS").is_some();
    for (name, records, reason) in corpus() {
        let path = corpus_dir().join(name);
        if write {
            std::fs::write(&path, capture::encode(&records)).expect("write corpus");
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let on_disk = capture::decode(&bytes).expect("a capture file");
        assert_eq!(
            on_disk, records,
            "{name}: rebuild with ROUTESKEW_WRITE_CORPUS=1"
        );
        let t = std::time::Instant::now();
        let r = capture::replay(&on_disk);
        assert!(t.elapsed() < std::time::Duration::from_millis(50), "{name}");
        assert_eq!(r.desync, Some(reason), "{name}");
        assert!(r.pairs.iter().all(|p| p.response.is_none()), "{name}");
    }
}
