//! The checked-in corpus of damaged Go binaries (`corpus/`), as built here: rewrite the
//! files with `ROUTESKEW_WRITE_CORPUS=1 cargo test -p routeskew --lib gobin::fuzz_tests`.

use std::time::{Duration, Instant};

use super::super::fuzz_build::{elf, word_at, FUNC, TEXT_ADDR};
use super::super::pclntab::{Pclntab, MAGIC_GO120};
use super::super::{GoBinError, GoBinary, PclntabDefect};
use super::valid_elf;

/// Functions in the table whose names all start at one unterminated name.
const NFUNC: usize = 300;
const NAME_LEN: usize = 4000;

/// A pcHeader whose `NFUNC` functions all name the same `NAME_LEN` bytes, which run to
/// the end of the section without a NUL (the name table is placed last for that).
fn unterminated_name_table() -> Vec<u8> {
    let header = word_at(8);
    let pcln = header;
    let ftab_len = 8 * (NFUNC + 1);
    let funcname = pcln + ftab_len + 8 * NFUNC;
    let mut t = MAGIC_GO120.to_le_bytes().to_vec();
    t.extend_from_slice(&[0, 0, 1, 8]);
    let words = [
        NFUNC as u64,
        0,
        TEXT_ADDR,
        funcname as u64,
        0,
        0,
        0,
        pcln as u64,
    ];
    for w in words {
        t.extend_from_slice(&w.to_le_bytes());
    }
    for i in 0..=NFUNC {
        let record = if i < NFUNC { ftab_len + 8 * i } else { 0 };
        t.extend_from_slice(&(16 * i as u32).to_le_bytes());
        t.extend_from_slice(&(record as u32).to_le_bytes());
    }
    for i in 0..NFUNC {
        t.extend_from_slice(&(16 * i as u32).to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
    }
    t.extend(std::iter::repeat_n(b'a', NAME_LEN));
    t
}

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    // Section headers of .text and .gopclntab pointing past the end, with sizes that
    // overflow when added to their offsets.
    let (mut past_end, sh_off) = valid_elf(2);
    for (s, off, size) in [
        (1, 0xffff_ff00u64, u64::MAX),
        (2, past_end.len() as u64 - 8, 1 << 40),
    ] {
        let at = sh_off + 64 * s;
        past_end[at + 24..at + 32].copy_from_slice(&off.to_le_bytes());
        past_end[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
    }
    let text: Vec<u8> = FUNC.repeat(2);
    let (unterminated, _) = elf(&text, &unterminated_name_table());
    vec![
        ("sections_past_end.elf", past_end),
        ("pclntab_one_huge_unterminated_name.elf", unterminated),
    ]
}

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sensor/gobin/corpus")
}

#[test]
fn corpus_files_are_what_the_builder_makes() {
    crate::fuzz_support::check_corpus(&dir(), corpus());
}

#[test]
fn sections_past_the_end_are_refused_quickly() {
    let t = Instant::now();
    let r = GoBinary::open(&dir().join("sections_past_end.elf"));
    let took = t.elapsed();
    assert!(r.is_err(), "{r:?}");
    assert!(took < Duration::from_millis(100), "{took:?}");
}

/// Every function names one huge unterminated name: resolving a function must fail
/// without scanning the name once per function (the search compares the wanted name's
/// length per entry), and listing them fails at the first.
#[test]
fn one_huge_unterminated_name_fails_fast() {
    let path = dir().join("pclntab_one_huge_unterminated_name.elf");
    let t = Instant::now();
    let bin = GoBinary::open(&path).expect("the headers are sound");
    let r = bin.function("crypto/tls.(*Conn).Read");
    let all = bin.functions();
    let took = t.elapsed();
    eprintln!("unterminated-name corpus resolved in {took:?}");
    assert!(
        matches!(r, Err(GoBinError::FunctionMissing { .. })),
        "{r:?}"
    );
    assert!(
        matches!(
            all,
            Err(GoBinError::BadPclntab {
                defect: PclntabDefect::NameUnterminated { func: 0 }
            })
        ),
        "{all:?}"
    );
    assert!(took < Duration::from_millis(100), "{took:?}");
    let table = unterminated_name_table();
    let t = Pclntab::parse(&table).expect("parses");
    assert_eq!(t.len(), NFUNC);
    assert!(t.name(NFUNC - 1).is_err());
}
