//! Property tests of the ring-record decoder (issue 16): valid records of every kind with
//! fields overwritten by random values, cut at any length, or raw bytes, decode to an
//! event or an error, never a panic; and a checked-in corpus of damaged records.

use std::mem::{offset_of, size_of};

use proptest::prelude::*;
use routeskew_common::{
    CloseEvent, ConnSource, DataEvent, Direction as WireDirection, EventHeader, HeadEvent,
    RecordKind, UpstreamEvent, WsClosedEvent, DATA_CAP, READ_AHEAD, SEM_HEAD_CAP,
};

use super::tests::{bytes_of, data_event, head_record, header, upstream};
use super::{DecodeError, Decoder};
use crate::event::EventKind;
use crate::fuzz_support::{config, pick, raw};

/// A valid record of each kind.
fn templates() -> Vec<Vec<u8>> {
    let close = CloseEvent {
        header: header(RecordKind::Close as u32),
        fd: 3,
        flags: 0,
        source: ConnSource::Fd as u32,
        _pad: 0,
        tls_conn: 0,
    };
    let ws = WsClosedEvent {
        header: header(RecordKind::WsClosed as u32),
        host_hash: 5,
        open_ns: 9,
    };
    vec![
        bytes_of(&data_event(24, 300, WireDirection::Write)),
        bytes_of(&close),
        bytes_of(&upstream(
            0,
            2,
            [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        )),
        bytes_of(&head_record(4, 0)),
        bytes_of(&ws),
    ]
}

/// The least a record of `kind` must hold.
fn needed(kind: u32) -> Option<usize> {
    Some(match RecordKind::try_from(kind).ok()? {
        RecordKind::Data => size_of::<DataEvent>(),
        RecordKind::Close => size_of::<CloseEvent>(),
        RecordKind::Upstream => size_of::<UpstreamEvent>(),
        RecordKind::Head => size_of::<HeadEvent>(),
        RecordKind::WsClosed => size_of::<WsClosedEvent>(),
    })
}

/// A word written over a record: small values and the edges of each width.
fn word() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..4,
        Just(u64::from(u32::MAX)),
        Just(u64::MAX),
        (0u64..2048),
        any::<u64>(),
        Just(u64::from(READ_AHEAD | u32::from(b'G'))),
    ]
}

/// The (offset, width) of each field of each template, header included.
fn fields(kind: usize) -> Vec<(usize, usize)> {
    let mut f = vec![
        (offset_of!(EventHeader, kind), 4),
        (offset_of!(EventHeader, ts_ns), 8),
    ];
    f.extend_from_slice(&match kind {
        0 => vec![
            (offset_of!(DataEvent, direction), 4),
            (offset_of!(DataEvent, total_len), 8),
            (offset_of!(DataEvent, captured_len), 4),
            (offset_of!(DataEvent, source), 4),
            (offset_of!(DataEvent, ahead), 4),
        ],
        1 => vec![
            (offset_of!(CloseEvent, source), 4),
            (offset_of!(CloseEvent, flags), 4),
        ],
        2 => vec![
            (offset_of!(UpstreamEvent, reason), 4),
            (offset_of!(UpstreamEvent, family), 2),
            (offset_of!(UpstreamEvent, daddr), 8),
        ],
        3 => vec![
            (offset_of!(HeadEvent, len), 4),
            (offset_of!(HeadEvent, flags), 2),
        ],
        _ => vec![(offset_of!(WsClosedEvent, open_ns), 8)],
    });
    f
}

/// A template with a few fields overwritten and maybe cut short.
fn damaged() -> impl Strategy<Value = Vec<u8>> {
    (
        0..5usize,
        proptest::collection::vec((any::<u32>(), word()), 0..4),
        prop_oneof![3 => Just(None), 1 => any::<u32>().prop_map(Some)],
    )
        .prop_map(|(k, writes, cut)| {
            let mut rec = templates().swap_remove(k);
            let fields = fields(k);
            for (at, v) in writes {
                let (at, width) = fields[pick(at, fields.len())];
                rec[at..at + width].copy_from_slice(&v.to_ne_bytes()[..width]);
            }
            if let Some(c) = cut {
                rec.truncate(pick(c, rec.len()));
            }
            rec
        })
}

/// What holds of any decode.
fn check(rec: &[u8]) {
    let result = Decoder::default().decode(rec);
    let kind = (rec.len() >= size_of::<EventHeader>())
        .then(|| u32::from_ne_bytes(rec[..4].try_into().unwrap_or_default()));
    match result {
        Ok(ev) => {
            let need = kind
                .and_then(needed)
                .expect("decoded a record of a known kind");
            assert!(rec.len() >= need, "decoded {} of {need} bytes", rec.len());
            match ev.kind {
                EventKind::Data {
                    total_len, bytes, ..
                } => {
                    assert!(bytes.len() <= DATA_CAP + 1);
                    assert!(bytes.len() as u64 <= total_len);
                }
                EventKind::Head(h) => assert!(h.bytes.len() <= SEM_HEAD_CAP),
                _ => {}
            }
        }
        Err(DecodeError::Short { len, needed, .. }) => {
            assert_eq!(len, rec.len());
            assert!(len < needed);
        }
        Err(DecodeError::Unknown { .. } | DecodeError::CapturedLen { .. }) => {
            if let Some(need) = kind.and_then(needed) {
                assert!(rec.len() >= need, "a short record is reported as short");
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_ring_records(rec in prop_oneof![3 => damaged(), 1 => raw(80)]) {
        check(&rec);
    }
}

/// Every cut of every kind is a `Short` error.
#[test]
fn every_truncation_is_short() {
    for rec in templates() {
        for len in 0..rec.len() {
            assert!(
                matches!(
                    Decoder::default().decode(&rec[..len]),
                    Err(DecodeError::Short { .. })
                ),
                "{len} bytes"
            );
        }
    }
}

/// Found by `fuzz_ring_records`: a read-ahead byte on a transfer of `u64::MAX` bytes
/// overflowed the total length (a panic in debug builds, a wrap to 0 in release).
#[test]
fn read_ahead_on_the_largest_transfer() {
    let rec = DataEvent {
        ahead: READ_AHEAD | u32::from(b'G'),
        ..data_event(4, u64::MAX, WireDirection::Read)
    };
    let ev = Decoder::default().decode(&bytes_of(&rec));
    assert!(
        matches!(ev, Ok(ref e) if matches!(e.kind, EventKind::Data { total_len: u64::MAX, .. })),
        "{ev:?}"
    );
}

/// The checked-in corpus of damaged records (`corpus/`), as built here: rewrite the files
/// with `ROUTESKEW_WRITE_CORPUS=1 cargo test -p routeskew --lib decode::fuzz_tests`.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let data = bytes_of(&data_event(24, 300, WireDirection::Write));
    let past_cap = bytes_of(&data_event(DATA_CAP as u32 + 1, 5000, WireDirection::Read));
    let head_past_cap = bytes_of(&head_record(SEM_HEAD_CAP as u32 + 1, 0));
    let up = bytes_of(&upstream(0, 10, [0xfe; 16]));
    let mut header_only = data.clone();
    header_only.truncate(size_of::<EventHeader>() - 1);
    let mut data_cut = data.clone();
    data_cut.truncate(offset_of!(DataEvent, data) + 10);
    let mut up_cut = up.clone();
    up_cut.pop();
    vec![
        ("header_cut.bin", header_only),
        ("data_cut_in_bytes.bin", data_cut),
        ("data_captured_past_cap.bin", past_cap),
        ("head_len_past_cap.bin", head_past_cap),
        ("upstream_cut.bin", up_cut),
    ]
}

fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sensor/decode/corpus")
}

#[test]
fn corpus_files_are_what_the_builder_makes() {
    crate::fuzz_support::check_corpus(&corpus_dir(), corpus());
}

#[test]
fn corpus_records_are_rejected_quickly() {
    let dir = std::fs::read_dir(corpus_dir()).expect("corpus dir");
    let mut seen = 0;
    for entry in dir {
        let path = entry.expect("corpus entry").path();
        let rec = std::fs::read(&path).expect("read corpus file");
        let t = std::time::Instant::now();
        let r = Decoder::default().decode(&rec);
        assert!(r.is_err(), "{}: {r:?}", path.display());
        assert!(t.elapsed() < std::time::Duration::from_millis(50));
        check(&rec);
        seen += 1;
    }
    assert_eq!(seen, corpus().len());
}
