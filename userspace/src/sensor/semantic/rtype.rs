//! Struct layouts from the runtime type descriptors a Go binary carries for reflection and
//! interfaces: stripping (`-ldflags=-s -w`) removes symbols and DWARF, never these, and
//! they hold each field's name, type and offset as the compiler laid it out. That makes
//! them the strongest check of the offset table: the binary's own answer.
//!
//! Layout (`internal/abi/type.go`, identical from Go 1.22 to 1.26, amd64):
//!
//! ```text
//! Type        size 0, ptrBytes 8, hash 16 (u32), tflag 20 (u8), align 21, fieldAlign 22,
//!             kind 23 (u8, low 5 bits), equal 24, gcdata 32, str 40 (i32 nameOff),
//!             ptrToThis 44 (i32)                                        48 bytes
//! PtrType     Type, elem *Type 48
//! StructType  Type, pkgPath Name 48, fields []StructField 56 (ptr, len, cap)   80 bytes
//! StructField name Name 0, typ *Type 8, offset uintptr 16                      24 bytes
//! UncommonType (right after the StructType when tflag has Uncommon): pkgPath nameOff 0
//! Name        *byte to: flags u8, uvarint length, bytes
//! ```
//!
//! `nameOff`s are relative to `runtime.moduledata.types`; pointers are absolute, so PIE
//! builds (whose pointers are relocations, zero in the file) yield nothing here.

use crate::sensor::gobin::GoBinary;

use super::SemanticError;

const TYPE_SIZE: usize = 48;
const STRUCT_TYPE_SIZE: usize = 80;
const FIELD_SIZE: usize = 24;
const TFLAG_UNCOMMON: u8 = 1;
const TFLAG_EXTRA_STAR: u8 = 1 << 1;
const TFLAG_NAMED: u8 = 1 << 2;
const KIND_MASK: u8 = 0x1f;
pub(super) const KIND_BOOL: u8 = 1;
pub(super) const KIND_INT: u8 = 2;
pub(super) const KIND_POINTER: u8 = 22;
pub(super) const KIND_SLICE: u8 = 23;
pub(super) const KIND_STRING: u8 = 24;
const KIND_STRUCT: u8 = 25;
/// Longer is not a struct this code looks for.
const MAX_FIELDS: u64 = 256;
const MAX_NAME: u64 = 1024;

/// A named struct type wanted: package path and the type string (`http.Request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Wanted {
    pub pkg_path: &'static str,
    pub name: &'static str,
}

/// One field as the binary describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Field {
    pub name: String,
    pub offset: u64,
    pub kind: u8,
    /// For pointer fields, the address of the pointed-to type.
    pub elem: Option<u64>,
}

/// A struct type found in the binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Layout {
    /// Address of its type descriptor.
    pub address: u64,
    pub fields: Vec<Field>,
}

impl Layout {
    pub(super) fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

fn i32_at(b: &[u8], off: usize) -> Option<i32> {
    Some(i32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// A `Name` at `address`: flags byte, uvarint length, bytes.
fn name_at(bin: &GoBinary, address: u64) -> Option<&[u8]> {
    // The flags byte and up to 10 varint bytes (fewer at the end of a segment).
    let head = (2..=11).rev().find_map(|n| bin.read(address, n))?;
    let (mut len, mut shift, mut used) = (0u64, 0u32, 0usize);
    for &b in &head[1..] {
        len |= u64::from(b & 0x7f) << shift;
        used += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    if len > MAX_NAME {
        return None;
    }
    bin.read(address + 1 + used as u64, usize::try_from(len).ok()?)
}

/// Every struct type in `[types, etypes)` named as one of `wanted`, per wanted entry.
pub(super) fn find_structs(
    bin: &GoBinary,
    wanted: &[Wanted],
) -> Result<Vec<Vec<Layout>>, SemanticError> {
    let (start, end) = bin.types_range().ok_or(SemanticError::NoTypeData)?;
    let len = usize::try_from(end - start).map_err(|_| SemanticError::NoTypeData)?;
    let types = bin.read(start, len).ok_or(SemanticError::NoTypeData)?;
    let mut found = vec![Vec::new(); wanted.len()];
    let mut at = 0usize;
    while at + STRUCT_TYPE_SIZE + 4 <= types.len() {
        let here = at;
        at += 8;
        let (tflag, kind) = (types[here + 20], types[here + 23]);
        if kind & KIND_MASK != KIND_STRUCT
            || tflag & (TFLAG_NAMED | TFLAG_UNCOMMON) != (TFLAG_NAMED | TFLAG_UNCOMMON)
        {
            continue;
        }
        let Some(str_off) = i32_at(types, here + 40).and_then(|o| u64::try_from(o).ok()) else {
            continue;
        };
        let Some(mut name) = name_at(bin, start + str_off) else {
            continue;
        };
        if tflag & TFLAG_EXTRA_STAR != 0 {
            name = name.strip_prefix(b"*").unwrap_or(name);
        }
        let Some(i) = wanted.iter().position(|w| w.name.as_bytes() == name) else {
            continue;
        };
        let pkg = i32_at(types, here + STRUCT_TYPE_SIZE)
            .and_then(|o| u64::try_from(o).ok())
            .and_then(|o| name_at(bin, start + o));
        if pkg != Some(wanted[i].pkg_path.as_bytes()) {
            continue;
        }
        let layout = fields(bin, types, here).ok_or_else(|| SemanticError::BadTypeData {
            type_name: format!("{}.{}", wanted[i].pkg_path, wanted[i].name),
            address: start + here as u64,
        })?;
        found[i].push(Layout {
            address: start + here as u64,
            fields: layout,
        });
    }
    Ok(found)
}

fn fields(bin: &GoBinary, types: &[u8], at: usize) -> Option<Vec<Field>> {
    let ptr = u64_at(types, at + 56)?;
    let n = u64_at(types, at + 64)?;
    if n > MAX_FIELDS {
        return None;
    }
    let n = usize::try_from(n).ok()?;
    let raw = bin.read(ptr, n * FIELD_SIZE)?;
    raw.chunks_exact(FIELD_SIZE)
        .map(|f| {
            let name = name_at(bin, u64_at(f, 0)?)?;
            let typ = u64_at(f, 8)?;
            let t = bin.read(typ, TYPE_SIZE + 8)?;
            let kind = t[23] & KIND_MASK;
            Some(Field {
                name: String::from_utf8(name.to_vec()).ok()?,
                offset: u64_at(f, 16)?,
                kind,
                elem: (kind == KIND_POINTER)
                    .then(|| u64_at(t, TYPE_SIZE))
                    .flatten(),
            })
        })
        .collect()
}
