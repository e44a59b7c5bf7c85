//! Property tests of the Go binary reader (issue 16): ELF files built here with a
//! `.gopclntab` and a `.text`, damaged in their headers, tables or anywhere, are opened
//! and resolved without a panic; tables, build info and RET-site decoding take any bytes;
//! and a checked-in corpus of damaged binaries is refused quickly.

use std::path::PathBuf;

use proptest::prelude::*;

use super::fuzz_build::{elf, pclntab, word_at, FUNC, TEXT_ADDR};
use super::pclntab::Pclntab;
use super::{buildinfo, retsites, GoBinary};
use crate::fuzz_support::{config, mutated, pick, raw};

const NAMES: [&[u8]; 3] = [b"main.main", b"crypto/tls.(*Conn).Read", b"runtime.x"];

fn valid_table(n: usize, text_start: u64) -> Vec<u8> {
    pclntab(&NAMES[..n], FUNC.len() as u32, text_start, None)
}

fn valid_elf(n: usize) -> (Vec<u8>, usize) {
    let text: Vec<u8> = (0..n).flat_map(|_| FUNC).collect();
    elf(&text, &valid_table(n, TEXT_ADDR))
}

/// A word written over a field: small, edges, and values near the file's size.
fn word() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..4,
        0u64..700,
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        any::<u64>()
    ]
}

/// The table's and the section headers' words: where damage gets past the first checks.
fn damaged_elf() -> impl Strategy<Value = Vec<u8>> {
    (
        1..=3usize,
        proptest::collection::vec((any::<u32>(), word()), 0..3),
    )
        .prop_map(|(n, writes)| {
            let (mut f, sh_off) = valid_elf(n);
            let table_at = 64 + 56 + n * FUNC.len();
            let mut fields: Vec<usize> = (0..8).map(|i| table_at + word_at(i)).collect();
            // Every section header's addr, offset and size; the ELF header's shoff/phoff.
            for s in 1..4 {
                fields.extend([16, 24, 32].map(|o| sh_off + 64 * s + o));
            }
            fields.extend([32, 40, 64 + 8, 64 + 32]);
            for (at, v) in writes {
                let at = fields[pick(at, fields.len())];
                f[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            f
        })
}

/// A file of this test thread's own, rewritten for each case.
fn scratch() -> PathBuf {
    let t = std::thread::current();
    std::env::temp_dir().join(format!(
        "routeskew-fuzz-{}-{}.elf",
        std::process::id(),
        t.name().unwrap_or("t").replace("::", "-")
    ))
}

/// Opens `bytes` as a binary and resolves what the agent resolves; checks what holds of
/// any answer.
fn open_and_resolve(bytes: &[u8]) {
    let path = scratch();
    std::fs::write(&path, bytes).expect("write scratch file");
    let Ok(bin) = GoBinary::open(&path) else {
        return;
    };
    if let Ok(fs) = bin.functions() {
        assert!(fs.len() <= bytes.len() / 8);
    }
    let _ = bin.text();
    let _ = bin.function_at(TEXT_ADDR + 3);
    for name in NAMES {
        let Ok(f) = bin.function(std::str::from_utf8(name).unwrap_or_default()) else {
            continue;
        };
        let end = f.entry_offset + f.size;
        assert!(end <= bytes.len() as u64);
        assert!(f.probe_offset >= f.entry_offset && f.probe_offset < end.max(1));
        for r in f.ret_offsets {
            assert!(r >= f.entry_offset && r < end);
            // The site is the RET's first byte, prefixes included (`rep ret`).
            let mut d = iced_x86::Decoder::with_ip(
                64,
                &bytes[r as usize..end as usize],
                0,
                iced_x86::DecoderOptions::NONE,
            );
            assert_eq!(d.decode().mnemonic(), iced_x86::Mnemonic::Ret);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_gobin_elf(bytes in prop_oneof![
        3 => damaged_elf(),
        2 => mutated((1..=3usize).prop_map(|n| valid_elf(n).0), 4),
        1 => raw(80),
    ]) {
        open_and_resolve(&bytes);
    }

    #[test]
    fn fuzz_gobin_pclntab(
        table in prop_oneof![
            mutated((1..=3usize, any::<u64>()).prop_map(|(n, t)| valid_table(n, t)), 5),
            raw(120),
        ],
        off in any::<u64>(),
    ) {
        let Ok(t) = Pclntab::parse(&table) else { return Ok(()) };
        prop_assert!(t.len() * 8 <= table.len());
        for f in t.functions() {
            let Ok((name, r)) = f else { break };
            prop_assert!(name.len() < table.len());
            prop_assert!(r.entry_off + r.size <= u64::from(u32::MAX));
        }
        let _ = t.find("runtime.x");
        if let Ok(Some(i)) = t.containing(off % 64) {
            prop_assert!(i < t.len());
        }
        let _ = t.text_len();
    }

    #[test]
    fn fuzz_gobin_buildinfo(blob in prop_oneof![
        mutated(Just(inline_blob()), 6),
        raw(64).prop_map(|b| [buildinfo::MAGIC.as_slice(), &b].concat()),
    ]) {
        let _ = buildinfo::version(&blob, |addr, len| {
            let at = usize::try_from(addr).ok()?;
            blob.get(at..at.checked_add(len)?)
        });
        if let Some(info) = buildinfo::module_info(&blob) {
            let _ = buildinfo::dependency_version(&info, "github.com/x/y");
        }
        if let Ok(v) = std::str::from_utf8(&blob) {
            let _ = buildinfo::major_minor(v);
        }
    }

    #[test]
    fn fuzz_gobin_ret_sites(code in prop_oneof![raw(48), mutated(Just(FUNC.repeat(2)), 4)], ip in any::<u64>()) {
        let ip = ip & 0x7fff_ffff_ffff;
        if let Ok(rets) = retsites::ret_sites(&code, ip) {
            for r in rets {
                prop_assert!(r >= ip && r < ip + code.len() as u64);
            }
        }
        let p = retsites::after_stack_check(&code, ip);
        prop_assert!(p >= ip && p <= ip + code.len() as u64);
    }
}

/// A Go 1.18+ build info blob: header, inline version, framed module lines.
fn inline_blob() -> Vec<u8> {
    let mut b = buildinfo::MAGIC.to_vec();
    b.extend_from_slice(&[8, 2]);
    b.resize(32, 0);
    let v = b"go1.26.9";
    b.push(v.len() as u8);
    b.extend_from_slice(v);
    let lines = "path\tx\ndep\tgithub.com/x/y\tv1.2.3\n";
    let framed = [&[0x30u8; 16][..], lines.as_bytes(), &[0xf9; 16]].concat();
    b.push(framed.len() as u8);
    b.extend_from_slice(&framed);
    b
}

#[test]
fn the_built_binary_resolves() {
    let (f, _) = valid_elf(3);
    let path = scratch();
    std::fs::write(&path, &f).expect("write");
    let bin = GoBinary::open(&path).expect("opens");
    let fun = bin.function("crypto/tls.(*Conn).Read").expect("resolves");
    assert_eq!(fun.address, TEXT_ADDR + 16);
    assert_eq!(fun.ret_offsets, [fun.entry_offset + 8]);
    assert_eq!(fun.probe_offset, fun.entry_offset + 6);
    assert_eq!(bin.function_count().expect("count"), 3);
    let _ = std::fs::remove_file(path);
}

#[path = "fuzz_corpus.rs"]
mod corpus;

/// Found by `fuzz_gobin_elf`: a `.gopclntab` section header whose offset lies past the end
/// of the file was sliced without a bounds check (a panic on any such binary).
#[test]
fn a_table_section_past_the_end_is_an_error() {
    let (mut f, sh_off) = valid_elf(1);
    let at = sh_off + 2 * 64 + 24;
    f[at..at + 8].copy_from_slice(&0xfa6f_ffff_ffff_fffcu64.to_le_bytes());
    let path = scratch();
    std::fs::write(&path, &f).expect("write");
    assert!(matches!(
        GoBinary::open(&path),
        Err(super::GoBinError::NoPclntab)
    ));
    let _ = std::fs::remove_file(path);
}

/// Found by `fuzz_gobin_elf`: a `.gopclntab` at an address near `u64::MAX` overflowed
/// the moduledata search, and a pcHeader `textStart` near it every entry address.
#[test]
fn addresses_near_the_end_of_the_address_space_are_errors() {
    let path = scratch();
    let (mut f, sh_off) = valid_elf(1);
    let at = sh_off + 2 * 64 + 16;
    f[at..at + 8].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
    std::fs::write(&path, &f).expect("write");
    assert!(
        GoBinary::open(&path).is_ok(),
        "the table's address is not needed"
    );
    let text: Vec<u8> = FUNC.to_vec();
    let (f, _) = elf(&text, &valid_table(1, u64::MAX - 100));
    std::fs::write(&path, &f).expect("write");
    assert!(matches!(
        GoBinary::open(&path),
        Err(super::GoBinError::ImplausibleTextStart { .. })
    ));
    let _ = std::fs::remove_file(path);
}

/// Found by `fuzz_gobin_elf`: a segment whose file offset is near `u64::MAX` overflowed
/// the address-to-offset translation.
#[test]
fn a_segment_offset_near_the_end_is_not_in_the_file() {
    let path = scratch();
    let (mut f, _) = valid_elf(1);
    // The program header's p_offset.
    f[64 + 8..64 + 16].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
    std::fs::write(&path, &f).expect("write");
    if let Ok(bin) = GoBinary::open(&path) {
        assert_eq!(bin.file_offset(TEXT_ADDR, 1), None);
        assert!(bin.function("main.main").is_err());
    }
    let _ = std::fs::remove_file(path);
}
