//! Just enough of a BTF reader to find member offsets of one kernel struct (`struct
//! pt_regs`) in `/sys/kernel/btf/vmlinux`.
//!
//! aya-ebpf has no CO-RE, so the raw `sys_exit` program reads the saved user registers at
//! offsets the agent passes in `Config`; they must come from the running kernel, not from
//! headers. aya-obj parses BTF but keeps its type accessors private, hence this reader
//! (format: Documentation/bpf/btf.rst).
//!
//! This module reads the blob (header, type and string sections, one entry per type id);
//! `lookup` answers questions about structs.

mod lookup;
#[cfg(test)]
pub(crate) mod tests;

use std::borrow::Cow;

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;
const TYPE_HEADER: usize = 12;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("not a little-endian BTF blob (bad magic or header)")]
    BadHeader,
    #[error("BTF {section} section lies outside the blob")]
    BadSection { section: &'static str },
    #[error("BTF type {id} has unknown kind {kind}: cannot walk past it")]
    UnknownKind { id: u32, kind: u32 },
    #[error("BTF type data is truncated at type {id}")]
    Truncated { id: u32 },
    #[error("no struct {name} in BTF")]
    NoStruct { name: String },
    #[error("struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("struct {strukt} member {member} is a bitfield")]
    Bitfield { strukt: String, member: String },
    #[error("struct {strukt} member {member} is {size} bytes, expected {expected}")]
    MemberSize {
        strukt: String,
        member: String,
        size: u64,
        expected: &'static str,
    },
    #[error("BTF type {0} is unresolvable (bad id or modifier loop)")]
    BadType(u32),
}

struct Type {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    size_or_type: u32,
    /// Offset of the kind-specific data that follows the common header.
    extra: usize,
}

/// A parsed BTF blob: types indexed by id (id 0 is `void`).
pub struct Btf<'a> {
    data: &'a [u8],
    types: Vec<Type>,
    strings: &'a [u8],
}

/// A struct member found by [`Btf::member`]: its byte offset (anonymous struct/union
/// members flattened) and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u64,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if u16_at(data, 0) != Some(MAGIC) {
            return Err(BtfError::BadHeader);
        }
        let hdr = |off| u32_at(data, off).ok_or(BtfError::BadHeader);
        let hdr_len = hdr(4)? as usize;
        if hdr_len < HEADER_MIN {
            return Err(BtfError::BadHeader);
        }
        let (type_off, type_len) = (hdr(8)? as usize, hdr(12)? as usize);
        let (str_off, str_len) = (hdr(16)? as usize, hdr(20)? as usize);
        let section = |off: usize, len: usize, section| {
            let start = hdr_len
                .checked_add(off)
                .ok_or(BtfError::BadSection { section })?;
            let end = start
                .checked_add(len)
                .ok_or(BtfError::BadSection { section })?;
            data.get(start..end)
                .map(|_| (start, end))
                .ok_or(BtfError::BadSection { section })
        };
        let (types_start, types_end) = section(type_off, type_len, "type")?;
        let (str_start, str_end) = section(str_off, str_len, "string")?;

        // Id 0 is void and has no entry in the section.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            vlen: 0,
            kind_flag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut pos = types_start;
        while pos < types_end {
            let id = types.len() as u32;
            let field = |off| {
                u32_at(data, pos + off)
                    .filter(|_| pos + TYPE_HEADER <= types_end)
                    .ok_or(BtfError::Truncated { id })
            };
            let (name_off, info, size_or_type) = (field(0)?, field(4)?, field(8)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                other => return Err(BtfError::UnknownKind { id, kind: other }),
            };
            let extra = pos + TYPE_HEADER;
            if extra + extra_len > types_end {
                return Err(BtfError::Truncated { id });
            }
            types.push(Type {
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 != 0,
                size_or_type,
                extra,
            });
            pos = extra + extra_len;
        }
        Ok(Btf {
            data,
            types,
            strings: &data[str_start..str_end],
        })
    }

    fn name(&self, off: u32) -> Cow<'a, str> {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end])
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        self.types.get(id as usize).ok_or(BtfError::BadType(id))
    }
}
