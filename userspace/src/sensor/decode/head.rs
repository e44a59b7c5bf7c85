//! Head records: the request head the semantic sensor copied for a rare answer.

use std::mem::{offset_of, size_of};

use bytes::BytesMut;
use routeskew_common::{sem_flags, HeadEvent, SEM_HEAD_CAP};

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
