//! Ring-buffer records → [`Event`]. Pure: no aya, no kernel.
//!
//! Records are parsed field by field at `offset_of!` positions of the shared `#[repr(C)]`
//! types instead of being cast, so a short or corrupt record is an error, never UB. The
//! header is read here; each record kind's body in its own module (`data`, `close`,
//! `upstream`).

mod close;
mod data;
#[cfg(test)]
mod fuzz_tests;
mod head;
#[cfg(test)]
mod tests;
mod upstream;

use std::mem::{offset_of, size_of};

use bytes::BytesMut;
use routeskew_common::{ConnSource, EventHeader, RecordKind, UnknownValue};

use crate::event::{ConnId, Event, Origin};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than a {what} ({needed} bytes)")]
    Short {
        what: &'static str,
        len: usize,
        needed: usize,
    },
    /// A discriminant (record kind, direction, connection source, failure reason) the
    /// agent does not know.
    #[error(transparent)]
    Unknown {
        #[from]
        source: UnknownValue,
    },
    #[error("captured length {captured} exceeds the buffer ({cap}) or the transfer ({total})")]
    CapturedLen {
        captured: u32,
        total: u64,
        cap: usize,
    },
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn need(what: &'static str, rec: &[u8], needed: usize) -> Result<(), DecodeError> {
    if rec.len() < needed {
        return Err(DecodeError::Short {
            what,
            len: rec.len(),
            needed,
        });
    }
    Ok(())
}

/// Decodes ring-buffer records, copying their captured bytes into a shared arena.
#[derive(Debug, Default)]
pub struct Decoder {
    arena: BytesMut,
}

impl Decoder {
    /// Decodes one ring-buffer record.
    pub fn decode(&mut self, rec: &[u8]) -> Result<Event, DecodeError> {
        decode_with(rec, &mut self.arena)
    }
}

fn decode_with(rec: &[u8], arena: &mut BytesMut) -> Result<Event, DecodeError> {
    need("header", rec, size_of::<EventHeader>())?;
    let kind = u32_at(rec, offset_of!(EventHeader, kind));
    let origin = Origin {
        tgid: u32_at(rec, offset_of!(EventHeader, tgid)),
        cgroup_id: u64_at(rec, offset_of!(EventHeader, cgroup_id)),
    };
    let ts_ns = u64_at(rec, offset_of!(EventHeader, ts_ns));
    let kind = match RecordKind::try_from(kind)? {
        RecordKind::Data => data::decode_data(rec, arena)?,
        RecordKind::Close => close::decode_close(rec)?,
        RecordKind::Upstream => upstream::decode_upstream(rec)?,
        RecordKind::Head => head::decode_head(rec, arena)?,
        RecordKind::WsClosed => head::decode_ws_closed(rec)?,
    };
    Ok(Event {
        ts_ns,
        origin,
        kind,
    })
}

fn conn_id(source: u32, fd: u32, tls_conn: u64) -> Result<ConnId, DecodeError> {
    Ok(match ConnSource::try_from(source)? {
        ConnSource::Fd => ConnId::Fd(fd),
        ConnSource::GoTls => ConnId::GoTls(tls_conn),
    })
}
