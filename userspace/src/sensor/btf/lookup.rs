//! Struct lookups: a struct by name, its size, and where a member sits in it (through
//! typedefs, qualifiers and anonymous members).

use super::{
    u32_at, Btf, BtfError, Member, KIND_ARRAY, KIND_CONST, KIND_ENUM, KIND_ENUM64, KIND_FLOAT,
    KIND_INT, KIND_PTR, KIND_RESTRICT, KIND_STRUCT, KIND_TYPEDEF, KIND_TYPE_TAG, KIND_UNION,
    KIND_VOLATILE,
};

/// Nesting limit for anonymous members and modifier chains: real kernels need 2-3, a
/// corrupt file must not recurse forever.
const MAX_DEPTH: usize = 16;

impl Btf<'_> {
    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::BadType(id))
    }

    fn size_of(&self, id: u32) -> Result<u64, BtfError> {
        self.size_at_depth(id, 0)
    }

    /// `depth`: arrays nested so far (a corrupt file's array may contain itself).
    fn size_at_depth(&self, id: u32, depth: usize) -> Result<u64, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::BadType(id));
        }
        let id = self.resolve(id)?;
        let t = self.ty(id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Ok(u64::from(t.size_or_type))
            }
            KIND_PTR => Ok(8),
            KIND_ARRAY => {
                let elem = u32_at(self.data, t.extra).ok_or(BtfError::BadType(id))?;
                let n = u32_at(self.data, t.extra + 8).ok_or(BtfError::BadType(id))?;
                self.size_at_depth(elem, depth + 1)?
                    .checked_mul(u64::from(n))
                    .ok_or(BtfError::BadType(id))
            }
            _ => Err(BtfError::BadType(id)),
        }
    }

    /// The struct (not union, not forward declaration) called `name`.
    pub fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == name)
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::NoStruct {
                name: name.to_owned(),
            })
    }

    /// Size in bytes of the struct called `name`.
    pub fn struct_size(&self, name: &str) -> Result<u64, BtfError> {
        let id = self.struct_id(name)?;
        Ok(u64::from(self.ty(id)?.size_or_type))
    }

    /// Byte offset and size of `member` of struct `strukt`, looking through anonymous
    /// struct and union members (arm64's `pt_regs` keeps `regs[]` in one).
    pub fn member(&self, strukt: &str, member: &str) -> Result<Member, BtfError> {
        let id = self.struct_id(strukt)?;
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        };
        match self.find_member(id, member, 0, 0)? {
            Some(Found::Member(m)) => Ok(m),
            Some(Found::Bitfield) => Err(BtfError::Bitfield {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            }),
            None => Err(no_member()),
        }
    }

    fn find_member(
        &self,
        id: u32,
        member: &str,
        base_bits: u64,
        depth: usize,
    ) -> Result<Option<Found>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::BadType(id));
        }
        let t = self.ty(id)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return Ok(None);
        }
        for i in 0..t.vlen as usize {
            let m = t.extra + 12 * i;
            let field = |off| u32_at(self.data, m + off).ok_or(BtfError::Truncated { id });
            let (name_off, ty, raw_offset) = (field(0)?, field(4)?, field(8)?);
            // With kind_flag the offset word also carries a bitfield size in its top byte.
            let (bit_offset, bitfield) = if t.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24 != 0)
            } else {
                (raw_offset, false)
            };
            let bits = base_bits + u64::from(bit_offset);
            if name_off == 0 {
                let inner = self.resolve(ty)?;
                if let Some(found) = self.find_member(inner, member, bits, depth + 1)? {
                    return Ok(Some(found));
                }
                continue;
            }
            if self.name(name_off) != member {
                continue;
            }
            if bitfield || !bits.is_multiple_of(8) {
                return Ok(Some(Found::Bitfield));
            }
            let offset = u32::try_from(bits / 8).map_err(|_| BtfError::BadType(id))?;
            return Ok(Some(Found::Member(Member {
                offset,
                size: self.size_of(ty)?,
            })));
        }
        Ok(None)
    }
}

enum Found {
    Member(Member),
    Bitfield,
}
