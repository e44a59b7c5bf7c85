//! Small Go-like binaries for the fuzz tests and the corpus: a pcHeader with its tables,
//! and an ELF x86-64 file that holds it in a `.gopclntab` section beside a `.text`.

use super::pclntab::MAGIC_GO120;

/// Offset of pcHeader word `i` (nfunc is word 0, textStart word 2, pclnOffset word 7).
pub(super) fn word_at(i: usize) -> usize {
    8 + 8 * i
}

/// A Go 1.20+ table of `names`, each function `size` bytes long from text offset 0;
/// `name_off` overrides every function's name offset (for damaged tables).
pub(super) fn pclntab(
    names: &[&[u8]],
    size: u32,
    text_start: u64,
    name_off: Option<u32>,
) -> Vec<u8> {
    let header = word_at(8);
    let mut funcnames = Vec::new();
    let mut offs = Vec::new();
    for n in names {
        offs.push(name_off.unwrap_or(funcnames.len() as u32));
        funcnames.extend_from_slice(n);
        funcnames.push(0);
    }
    let funcname = header;
    let pcln = funcname + funcnames.len();
    let nfunc = names.len();
    let ftab_len = 8 * (nfunc + 1);
    let mut t = Vec::new();
    t.extend_from_slice(&MAGIC_GO120.to_le_bytes());
    t.extend_from_slice(&[0, 0, 1, 8]);
    let words = [
        nfunc as u64,
        0,
        text_start,
        funcname as u64,
        0,
        0,
        0,
        pcln as u64,
    ];
    for w in words {
        t.extend_from_slice(&w.to_le_bytes());
    }
    t.extend_from_slice(&funcnames);
    for i in 0..=nfunc {
        let entry = size * i as u32;
        let record = if i < nfunc {
            (ftab_len + 8 * i) as u32
        } else {
            0
        };
        t.extend_from_slice(&entry.to_le_bytes());
        t.extend_from_slice(&record.to_le_bytes());
    }
    for (i, off) in offs.iter().enumerate() {
        t.extend_from_slice(&(size * i as u32).to_le_bytes());
        t.extend_from_slice(&off.to_le_bytes());
    }
    t
}

fn push_section(out: &mut Vec<u8>, name: u32, kind: u32, addr: u64, off: u64, size: u64) {
    out.extend_from_slice(&name.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&2u64.to_le_bytes()); // SHF_ALLOC
    for w in [addr, off, size] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(&[0; 8]); // link, info
    out.extend_from_slice(&1u64.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
}

/// Virtual address of the text in [`elf`]'s output.
pub(super) const TEXT_ADDR: u64 = 0x40_1000;

/// An ELF file: header, one PT_LOAD segment over the whole file at [`TEXT_ADDR`] minus
/// the text's offset, `.text` holding `text`, `.gopclntab` holding `table`, and the
/// section headers at the end. Returns the file and the offset of its section headers.
pub(super) fn elf(text: &[u8], table: &[u8]) -> (Vec<u8>, usize) {
    let shstr = b"\0.text\0.gopclntab\0.shstrtab\0";
    let text_off = 64 + 56;
    let table_off = text_off + text.len();
    let shstr_off = table_off + table.len();
    let sh_off = (shstr_off + shstr.len()).next_multiple_of(8);
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&62u16.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&TEXT_ADDR.to_le_bytes());
    f.extend_from_slice(&64u64.to_le_bytes()); // phoff
    f.extend_from_slice(&(sh_off as u64).to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    for h in [64u16, 56, 1, 64, 4, 3] {
        f.extend_from_slice(&h.to_le_bytes());
    }
    let base = TEXT_ADDR - text_off as u64;
    // PT_LOAD, R+X, offset 0, vaddr base, sizes: the whole file.
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&5u32.to_le_bytes());
    let total = (sh_off + 4 * 64) as u64;
    for w in [0, base, base, total, total, 0x1000] {
        f.extend_from_slice(&w.to_le_bytes());
    }
    f.extend_from_slice(text);
    f.extend_from_slice(table);
    f.extend_from_slice(shstr);
    f.resize(sh_off, 0);
    f.extend_from_slice(&[0; 64]);
    push_section(&mut f, 1, 1, TEXT_ADDR, text_off as u64, text.len() as u64);
    push_section(
        &mut f,
        7,
        1,
        base + table_off as u64,
        table_off as u64,
        table.len() as u64,
    );
    push_section(&mut f, 18, 3, 0, shstr_off as u64, shstr.len() as u64);
    (f, sh_off)
}

/// Code of a Go-shaped function: stack check, `push rbp`, `ret`, padded with INT3 to 16.
pub(super) const FUNC: [u8; 16] = [
    0x49, 0x3b, 0x66, 0x10, // cmp rsp, [r14+0x10]
    0x76, 0x02, // jbe +2
    0x55, // push rbp
    0x5d, // pop rbp
    0xc3, // ret
    0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
];
