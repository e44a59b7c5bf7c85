//! A builder of BTF blobs (shared with the `abi` tests), the `pt_regs` of two
//! architectures, and this kernel's own BTF when it has one.

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
        "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si",
        "di", "orig_ax", "ip", "cs", "flags", "sp", "ss",
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
        Err(BtfError::NoStruct { .. })
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
