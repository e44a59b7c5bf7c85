//! Just enough of a BTF reader to find member offsets of one kernel struct (`struct
//! pt_regs`) in `/sys/kernel/btf/vmlinux`.
//!
//! aya-ebpf has no CO-RE, so the raw `sys_exit` program reads the saved user registers at
//! offsets the agent passes in `Config`; they must come from the running kernel, not from
//! headers. aya-obj parses BTF but keeps its type accessors private, hence this reader
//! (format: Documentation/bpf/btf.rst).

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

/// Nesting limit for anonymous members and modifier chains: real kernels need 2-3, a
/// corrupt file must not recurse forever.
const MAX_DEPTH: usize = 16;

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
    #[error("no struct {0} in BTF")]
    NoStruct(String),
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
                Ok(self.size_of(elem)? * u64::from(n))
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
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds BTF blobs for tests: strings and types appended in order.
    #[derive(Default)]
    pub(crate) struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Builder {
                strings: vec![0],
                types: Vec::new(),
                next_id: 1,
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32) -> u32 {
            let name = self.string(name);
            for w in [name, (kind << 24) | vlen, size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, KIND_INT, 0, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        pub(crate) fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.header(name, KIND_TYPEDEF, 0, target)
        }

        pub(crate) fn array(&mut self, elem: u32, n: u32) -> u32 {
            let id = self.header("", KIND_ARRAY, 0, 0);
            for w in [elem, elem, n] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            id
        }

        /// Members as (name, type, byte offset).
        pub(crate) fn composite(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let kind = if union { KIND_UNION } else { KIND_STRUCT };
            let id = self.header(name, kind, members.len() as u32, size);
            for &(m, ty, off) in members {
                let m = self.string(m);
                for w in [m, ty, off * 8] {
                    self.types.extend_from_slice(&w.to_le_bytes());
                }
            }
            id
        }

        pub(crate) fn finish(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            out.extend_from_slice(&(HEADER_MIN as u32).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// x86-64's `struct pt_regs` (21 unsigned longs).
    pub(crate) fn x86_64_pt_regs() -> Vec<u8> {
        let mut b = Builder::new();
        let ul = b.int("long unsigned int", 8);
        let names = [
            "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx",
            "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss",
        ];
        let members: Vec<(&str, u32, u32)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, ul, 8 * i as u32))
            .collect();
        // A union of the same name must not be mistaken for the struct.
        b.composite(true, "pt_regs", 8, &[("x", ul, 0)]);
        b.composite(false, "pt_regs", 168, &members);
        b.finish()
    }

    /// arm64's `struct pt_regs`: `regs[]` inside an anonymous struct inside an anonymous
    /// union, then `orig_x0` and an int `syscallno`.
    pub(crate) fn aarch64_pt_regs() -> Vec<u8> {
        let mut b = Builder::new();
        let u64_ = b.int("long long unsigned int", 8);
        let u64_t = b.typedef("u64", u64_);
        let s32 = b.int("int", 4);
        let regs = b.array(u64_t, 31);
        let user = b.composite(
            false,
            "user_pt_regs",
            272,
            &[("regs", regs, 0), ("sp", u64_t, 248)],
        );
        let anon = b.composite(
            false,
            "",
            272,
            &[("regs", regs, 0), ("sp", u64_t, 248), ("pc", u64_t, 256)],
        );
        let union = b.composite(true, "", 272, &[("user_regs", user, 0), ("", anon, 0)]);
        b.composite(
            false,
            "pt_regs",
            336,
            &[
                ("", union, 0),
                ("orig_x0", u64_t, 272),
                ("syscallno", s32, 280),
            ],
        );
        b.finish()
    }

    #[test]
    fn finds_x86_64_registers() {
        let blob = x86_64_pt_regs();
        let btf = Btf::parse(&blob).expect("parse");
        assert_eq!(
            btf.member("pt_regs", "orig_ax").expect("orig_ax"),
            Member {
                offset: 120,
                size: 8
            }
        );
        assert_eq!(btf.member("pt_regs", "di").expect("di").offset, 112);
        assert_eq!(btf.member("pt_regs", "si").expect("si").offset, 104);
        assert!(matches!(
            btf.member("pt_regs", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member("task_struct", "pid"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn looks_through_anonymous_members() {
        let blob = aarch64_pt_regs();
        let btf = Btf::parse(&blob).expect("parse");
        assert_eq!(
            btf.member("pt_regs", "regs").expect("regs"),
            Member {
                offset: 0,
                size: 248
            }
        );
        assert_eq!(
            btf.member("pt_regs", "syscallno").expect("nr"),
            Member {
                offset: 280,
                size: 4
            }
        );
        assert_eq!(btf.member("pt_regs", "orig_x0").expect("x0").offset, 272);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Btf::parse(&[]).err(), Some(BtfError::BadHeader));
        assert_eq!(Btf::parse(&[0u8; 64]).err(), Some(BtfError::BadHeader));
        let mut blob = x86_64_pt_regs();
        // Cut into the type section: the declared lengths now overrun the blob.
        blob.truncate(HEADER_MIN + 20);
        assert!(matches!(
            Btf::parse(&blob),
            Err(BtfError::BadSection { .. })
        ));
        // An unknown kind cannot be skipped.
        let mut b = Builder::new();
        b.header("x", 31, 0, 0);
        assert!(matches!(
            Btf::parse(&b.finish()),
            Err(BtfError::UnknownKind { id: 1, kind: 31 })
        ));
    }

    /// The running kernel's BTF, when there is one: the parser must walk every real type.
    #[test]
    fn parses_this_kernels_btf_if_present() {
        let Ok(blob) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return;
        };
        let btf = Btf::parse(&blob).expect("vmlinux BTF");
        assert!(btf.struct_id("task_struct").is_ok());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(btf.member("pt_regs", "orig_ax").expect("orig_ax").size, 8);
    }
}
