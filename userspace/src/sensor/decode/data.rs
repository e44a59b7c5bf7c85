//! Data records: the leading bytes of one read or write, copied into a shared arena.

use std::mem::{offset_of, size_of};

use bytes::{BufMut, Bytes, BytesMut};
use routeskew_common::{DataEvent, Direction as WireDirection, DATA_CAP, READ_AHEAD};

use super::{conn_id, need, u32_at, u64_at, DecodeError};
use crate::event::{Direction, EventKind};

/// Bytes of captured data copied into one shared allocation before the next one starts.
/// Every event's bytes are a slice of it: one malloc for about a hundred records instead
/// of one each, and none at all once the pipeline has dropped the previous ones (the
/// allocation is then reused in place).
pub(super) const ARENA_CHUNK: usize = 64 * 1024;

/// The arena's next `captured` (after `first`, a byte the kernel kept from the previous
/// read) as its own [`Bytes`].
pub(super) fn take_bytes(arena: &mut BytesMut, first: Option<u8>, captured: &[u8]) -> Bytes {
    let n = captured.len() + usize::from(first.is_some());
    if arena.capacity() < n {
        arena.reserve(ARENA_CHUNK.max(n));
    }
    if let Some(b) = first {
        arena.put_u8(b);
    }
    arena.extend_from_slice(captured);
    arena.split().freeze()
}

pub(super) fn decode_data(rec: &[u8], arena: &mut BytesMut) -> Result<EventKind, DecodeError> {
    need("data record", rec, size_of::<DataEvent>())?;
    let direction = match WireDirection::try_from(u32_at(rec, offset_of!(DataEvent, direction)))? {
        WireDirection::Read => Direction::Read,
        WireDirection::Write => Direction::Write,
    };
    let total_len = u64_at(rec, offset_of!(DataEvent, total_len));
    let captured = u32_at(rec, offset_of!(DataEvent, captured_len));
    if captured as usize > DATA_CAP || u64::from(captured) > total_len {
        return Err(DecodeError::CapturedLen {
            captured,
            total: total_len,
            cap: DATA_CAP,
        });
    }
    let source = u32_at(rec, offset_of!(DataEvent, source));
    let fd = u32_at(rec, offset_of!(DataEvent, fd));
    let conn = conn_id(source, fd, u64_at(rec, offset_of!(DataEvent, tls_conn)))?;
    let data = offset_of!(DataEvent, data);
    let captured = &rec[data..data + captured as usize];
    let ahead = u32_at(rec, offset_of!(DataEvent, ahead));
    // With READ_AHEAD, the message's first byte came in the previous read (Go's
    // background read).
    let first = (ahead & READ_AHEAD != 0).then_some(ahead as u8);
    Ok(EventKind::Data {
        conn,
        direction,
        // Saturating: a corrupt record may claim a transfer of u64::MAX bytes.
        total_len: total_len.saturating_add(u64::from(first.is_some())),
        bytes: take_bytes(arena, first, captured),
    })
}
