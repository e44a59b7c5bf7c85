//! Each record kind, the arena, and records that must be rejected.

use std::{mem::size_of, net::Ipv6Addr};

use bytes::Bytes;
use routeskew_common::{
    conn_flags, sem_flags, CloseEvent, ConnSource, DataEvent, Direction as WireDirection,
    EventHeader, HeadEvent, RecordKind, UnknownValue, UpstreamEvent, UpstreamReason, WsClosedEvent,
    DATA_CAP, READ_AHEAD, SEM_HEAD_CAP,
};

use super::{
    data::ARENA_CHUNK,
    upstream::{AF_INET, AF_INET6},
    DecodeError, Decoder,
};
use crate::event::{
    ConnId, CopiedHead, Direction, Event, EventKind, Origin, UpstreamFailureReason,
};

fn decode(rec: &[u8]) -> Result<Event, DecodeError> {
    Decoder::default().decode(rec)
}

fn unknown(what: &'static str, value: u32) -> DecodeError {
    DecodeError::Unknown {
        source: UnknownValue { what, value },
    }
}

#[test]
fn events_share_the_arena_and_keep_their_bytes() {
    let mut d = Decoder::default();
    let a = d
        .decode(&bytes_of(&data_event(24, 300, WireDirection::Write)))
        .expect("decode");
    let mut second = data_event(14, 14, WireDirection::Read);
    second.data[..14].copy_from_slice(b"GET / HTTP/1.1");
    let b = d.decode(&bytes_of(&second)).expect("decode");
    let bytes = |e: &Event| match &e.kind {
        EventKind::Data { bytes, .. } => bytes.clone(),
        other => panic!("not data: {other:?}"),
    };
    assert_eq!(&bytes(&a)[..], b"HTTP/1.1 404 Not Found\r\n");
    assert_eq!(&bytes(&b)[..], b"GET / HTTP/1.1");
    // Consecutive in one allocation.
    assert_eq!(
        bytes(&a).as_ptr().wrapping_add(24),
        bytes(&b).as_ptr(),
        "second record's bytes follow the first's"
    );
    // A record larger than what is left starts a new allocation; earlier bytes stay.
    for _ in 0..ARENA_CHUNK / DATA_CAP + 1 {
        d.decode(&bytes_of(&data_event(
            DATA_CAP as u32,
            5000,
            WireDirection::Write,
        )))
        .expect("decode");
    }
    assert_eq!(&bytes(&a)[..], b"HTTP/1.1 404 Not Found\r\n");
    assert_eq!(&bytes(&b)[..], b"GET / HTTP/1.1");
}

pub(super) fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
    // SAFETY: only used with the shared #[repr(C)] record types, which have no padding
    // (pinned by the size assertions in routeskew-common), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

pub(super) fn header(kind: u32) -> EventHeader {
    EventHeader {
        kind,
        tgid: 4242,
        tid: 4243,
        program: 3,
        cgroup_id: 77,
        ts_ns: 123_456,
    }
}

pub(super) fn data_event(captured: u32, total: u64, dir: WireDirection) -> DataEvent {
    let mut data = [0xAAu8; DATA_CAP];
    let msg = b"HTTP/1.1 404 Not Found\r\n";
    data[..msg.len()].copy_from_slice(msg);
    DataEvent {
        header: header(RecordKind::Data as u32),
        fd: 9,
        direction: dir as u32,
        total_len: total,
        captured_len: captured,
        source: ConnSource::Fd as u32,
        tls_conn: 0,
        ahead: 0,
        _pad: 0,
        data,
    }
}

#[test]
fn data_record() {
    let ev = decode(&bytes_of(&data_event(24, 300, WireDirection::Write))).expect("decode");
    assert_eq!(ev.ts_ns, 123_456);
    assert_eq!(
        ev.origin,
        Origin {
            tgid: 4242,
            cgroup_id: 77
        }
    );
    assert_eq!(
        ev.kind,
        EventKind::Data {
            conn: ConnId::Fd(9),
            direction: Direction::Write,
            total_len: 300,
            bytes: Bytes::from_static(b"HTTP/1.1 404 Not Found\r\n"),
        }
    );
    let ev = decode(&bytes_of(&data_event(4, 4, WireDirection::Read))).expect("decode");
    assert!(matches!(
        ev.kind,
        EventKind::Data { direction: Direction::Read, ref bytes, .. } if bytes.as_ref() == b"HTTP"
    ));

    // A plaintext request whose first byte came in an earlier 1-byte read(2).
    let mut ahead = DataEvent {
        ahead: READ_AHEAD | u32::from(b'G'),
        ..data_event(13, 13, WireDirection::Read)
    };
    ahead.data[..13].copy_from_slice(b"ET / HTTP/1.1");
    assert_eq!(
        decode(&bytes_of(&ahead)).expect("decode").kind,
        EventKind::Data {
            conn: ConnId::Fd(9),
            direction: Direction::Read,
            total_len: 14,
            bytes: Bytes::from_static(b"GET / HTTP/1.1"),
        }
    );
}

#[test]
fn tls_records_name_the_tls_conn() {
    let rec = DataEvent {
        source: ConnSource::GoTls as u32,
        tls_conn: 0xc000_1234_5678,
        ..data_event(24, 300, WireDirection::Read)
    };
    let ev = decode(&bytes_of(&rec)).expect("decode");
    assert!(matches!(
        ev.kind,
        EventKind::Data {
            conn: ConnId::GoTls(0xc000_1234_5678),
            direction: Direction::Read,
            ..
        }
    ));
    let close = CloseEvent {
        header: header(RecordKind::Close as u32),
        fd: 0,
        flags: 0,
        source: ConnSource::GoTls as u32,
        _pad: 0,
        tls_conn: 0xc000_0000_0040,
    };
    assert_eq!(
        decode(&bytes_of(&close)).expect("decode").kind,
        EventKind::Closed {
            conn: ConnId::GoTls(0xc000_0000_0040),
            upgraded: false
        }
    );
    // A request whose first byte came in an earlier 1-byte Read.
    let mut ahead = DataEvent {
        ahead: READ_AHEAD | u32::from(b'G'),
        source: ConnSource::GoTls as u32,
        tls_conn: 0xc000_1234_5678,
        ..data_event(13, 400, WireDirection::Read)
    };
    ahead.data[..13].copy_from_slice(b"ET / HTTP/1.1");
    assert_eq!(
        decode(&bytes_of(&ahead)).expect("decode").kind,
        EventKind::Data {
            conn: ConnId::GoTls(0xc000_1234_5678),
            direction: Direction::Read,
            total_len: 401,
            bytes: Bytes::from_static(b"GET / HTTP/1.1"),
        }
    );
    let bad = DataEvent {
        source: 9,
        ..data_event(24, 300, WireDirection::Read)
    };
    assert_eq!(decode(&bytes_of(&bad)), Err(unknown("ConnSource", 9)));
}

#[test]
fn full_capture_is_accepted() {
    let ev = decode(&bytes_of(&data_event(
        DATA_CAP as u32,
        5000,
        WireDirection::Read,
    )))
    .expect("decode");
    assert!(matches!(ev.kind, EventKind::Data { ref bytes, .. } if bytes.len() == DATA_CAP));
}

#[test]
fn bad_data_records() {
    let over = data_event(DATA_CAP as u32 + 1, 5000, WireDirection::Read);
    assert!(matches!(
        decode(&bytes_of(&over)),
        Err(DecodeError::CapturedLen { .. })
    ));
    let beyond_total = data_event(30, 20, WireDirection::Read);
    assert!(matches!(
        decode(&bytes_of(&beyond_total)),
        Err(DecodeError::CapturedLen { .. })
    ));
    let bad_direction = DataEvent {
        direction: 7,
        ..data_event(10, 10, WireDirection::Read)
    };
    assert_eq!(
        decode(&bytes_of(&bad_direction)),
        Err(unknown("Direction", 7))
    );
    let full = bytes_of(&data_event(10, 10, WireDirection::Read));
    assert!(matches!(
        decode(&full[..full.len() - 1]),
        Err(DecodeError::Short {
            what: "data record",
            ..
        })
    ));
}

#[test]
fn close_record() {
    let rec = CloseEvent {
        header: header(RecordKind::Close as u32),
        fd: 12,
        flags: conn_flags::UPGRADED,
        source: ConnSource::Fd as u32,
        _pad: 0,
        tls_conn: 0,
    };
    let ev = decode(&bytes_of(&rec)).expect("decode");
    assert_eq!(
        ev.kind,
        EventKind::Closed {
            conn: ConnId::Fd(12),
            upgraded: true
        }
    );
    let rec = CloseEvent { flags: 0, ..rec };
    assert_eq!(
        decode(&bytes_of(&rec)).expect("decode").kind,
        EventKind::Closed {
            conn: ConnId::Fd(12),
            upgraded: false
        }
    );
}

pub(super) fn upstream(reason: u32, family: u16, daddr: [u8; 16]) -> UpstreamEvent {
    UpstreamEvent {
        header: header(RecordKind::Upstream as u32),
        reason,
        errno: 111,
        family,
        dport: 8081,
        _pad: 0,
        daddr,
    }
}

#[test]
fn upstream_records() {
    let mut v4 = [0u8; 16];
    v4[..4].copy_from_slice(&[10, 1, 2, 3]);
    let ev = decode(&bytes_of(&upstream(
        UpstreamReason::Refused as u32,
        AF_INET,
        v4,
    )))
    .expect("decode");
    assert_eq!(
        ev.kind,
        EventKind::UpstreamFailure {
            reason: UpstreamFailureReason::Refused,
            errno: 111,
            peer: Some("10.1.2.3:8081".parse().expect("addr")),
        }
    );
    let v6: Ipv6Addr = "fd00::7".parse().expect("addr");
    let ev = decode(&bytes_of(&upstream(
        UpstreamReason::Unreachable as u32,
        AF_INET6,
        v6.octets(),
    )))
    .expect("decode");
    assert!(matches!(
        ev.kind,
        EventKind::UpstreamFailure { reason: UpstreamFailureReason::Unreachable, peer: Some(p), .. }
            if p == "[fd00::7]:8081".parse().expect("addr")
    ));
    let mapped: Ipv6Addr = "::ffff:127.0.0.1".parse().expect("addr");
    let ev = decode(&bytes_of(&upstream(
        UpstreamReason::Timeout as u32,
        AF_INET6,
        mapped.octets(),
    )))
    .expect("decode");
    assert!(matches!(
        ev.kind,
        EventKind::UpstreamFailure { reason: UpstreamFailureReason::Timeout, peer: Some(p), .. }
            if p == "127.0.0.1:8081".parse().expect("addr")
    ));
    let ev = decode(&bytes_of(&upstream(UpstreamReason::Reset as u32, 0, v4))).expect("decode");
    assert!(matches!(
        ev.kind,
        EventKind::UpstreamFailure {
            reason: UpstreamFailureReason::Reset,
            peer: None,
            ..
        }
    ));
    assert_eq!(
        decode(&bytes_of(&upstream(9, AF_INET, v4))),
        Err(unknown("UpstreamReason", 9))
    );
}

#[test]
fn garbage() {
    assert!(matches!(
        decode(&[]),
        Err(DecodeError::Short { what: "header", .. })
    ));
    assert!(matches!(
        decode(&[1u8; 31]),
        Err(DecodeError::Short { what: "header", .. })
    ));
    let mut rec = bytes_of(&header(99));
    rec.resize(2048, 0);
    assert_eq!(decode(&rec), Err(unknown("RecordKind", 99)));
    // A header claiming a data record with no body.
    let rec = bytes_of(&header(RecordKind::Data as u32));
    assert!(matches!(
        decode(&rec),
        Err(DecodeError::Short {
            what: "data record",
            ..
        })
    ));
    let rec = bytes_of(&header(RecordKind::Upstream as u32));
    assert!(matches!(decode(&rec), Err(DecodeError::Short { .. })));
}

pub(super) fn head_record(len: u32, flags: u16) -> HeadEvent {
    let mut head = [0u8; SEM_HEAD_CAP];
    head[..4].copy_from_slice(b"GET ");
    HeadEvent {
        header: header(RecordKind::Head as u32),
        host_hash: 77,
        status: 404,
        flags,
        len,
        head,
    }
}

#[test]
fn head_records_keep_their_length_and_flags() {
    let ev = decode(&bytes_of(&head_record(4, sem_flags::ROUTER_MISS))).expect("decode");
    assert_eq!(
        ev.kind,
        EventKind::Head(CopiedHead {
            host_hash: 77,
            status: 404,
            router_miss: true,
            bytes: Bytes::from_static(b"GET "),
        })
    );
    let EventKind::Head(h) = decode(&bytes_of(&head_record(SEM_HEAD_CAP as u32, 0)))
        .expect("decode")
        .kind
    else {
        panic!("a head");
    };
    assert_eq!((h.bytes.len(), h.router_miss), (SEM_HEAD_CAP, false));
    // A length past the copy bound is a corrupt record, not an over-read.
    assert!(matches!(
        decode(&bytes_of(&head_record(SEM_HEAD_CAP as u32 + 1, 0))),
        Err(DecodeError::CapturedLen { .. })
    ));
    let mut short = bytes_of(&head_record(4, 0));
    short.truncate(size_of::<HeadEvent>() - 1);
    assert!(matches!(
        decode(&short),
        Err(DecodeError::Short {
            what: "head record",
            ..
        })
    ));
}

#[test]
fn ws_closed_records() {
    let rec = WsClosedEvent {
        header: header(RecordKind::WsClosed as u32),
        host_hash: 5,
        open_ns: 1_500_000_000,
    };
    assert_eq!(
        decode(&bytes_of(&rec)).expect("decode").kind,
        EventKind::WsClosed {
            host_hash: 5,
            open_ns: 1_500_000_000
        }
    );
    let mut short = bytes_of(&rec);
    short.pop();
    assert!(matches!(decode(&short), Err(DecodeError::Short { .. })));
}
