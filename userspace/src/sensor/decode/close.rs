//! Close records: a watched connection ended.

use std::mem::{offset_of, size_of};

use routeskew_common::{conn_flags, CloseEvent};

use super::{conn_id, need, u32_at, u64_at, DecodeError};
use crate::event::EventKind;

pub(super) fn decode_close(rec: &[u8]) -> Result<EventKind, DecodeError> {
    need("close record", rec, size_of::<CloseEvent>())?;
    let conn = conn_id(
        u32_at(rec, offset_of!(CloseEvent, source)),
        u32_at(rec, offset_of!(CloseEvent, fd)),
        u64_at(rec, offset_of!(CloseEvent, tls_conn)),
    )?;
    Ok(EventKind::Closed {
        conn,
        upgraded: u32_at(rec, offset_of!(CloseEvent, flags)) & conn_flags::UPGRADED != 0,
    })
}
