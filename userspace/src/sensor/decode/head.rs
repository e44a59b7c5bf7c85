//! The semantic sensor's rare records: the request head it copied for a rare answer, and
//! the end of a WebSocket session it saw upgraded.

use std::mem::{offset_of, size_of};

use bytes::BytesMut;
use routeskew_common::{sem_flags, HeadEvent, WsClosedEvent, SEM_HEAD_CAP};

use super::{data::take_bytes, need, u16_at, u32_at, u64_at, DecodeError};
use crate::event::{CopiedHead, EventKind};

pub(super) fn decode_head(rec: &[u8], arena: &mut BytesMut) -> Result<EventKind, DecodeError> {
    need("head record", rec, size_of::<HeadEvent>())?;
    let len = u32_at(rec, offset_of!(HeadEvent, len));
    if len as usize > SEM_HEAD_CAP {
        return Err(DecodeError::CapturedLen {
            captured: len,
            total: u64::from(len),
            cap: SEM_HEAD_CAP,
        });
    }
    let at = offset_of!(HeadEvent, head);
    let flags = u16_at(rec, offset_of!(HeadEvent, flags));
    Ok(EventKind::Head(CopiedHead {
        host_hash: u64_at(rec, offset_of!(HeadEvent, host_hash)),
        status: u16_at(rec, offset_of!(HeadEvent, status)),
        router_miss: flags & sem_flags::ROUTER_MISS != 0,
        bytes: take_bytes(arena, None, &rec[at..at + len as usize]),
    }))
}

pub(super) fn decode_ws_closed(rec: &[u8]) -> Result<EventKind, DecodeError> {
    need("WebSocket close record", rec, size_of::<WsClosedEvent>())?;
    Ok(EventKind::WsClosed {
        host_hash: u64_at(rec, offset_of!(WsClosedEvent, host_hash)),
        open_ns: u64_at(rec, offset_of!(WsClosedEvent, open_ns)),
    })
}
