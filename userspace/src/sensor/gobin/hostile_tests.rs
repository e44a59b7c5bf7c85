//! Crafted function tables that cost unbounded work without the caps of issue 16, item 2:
//! each must be refused or searched in well under a second (debug build).

use std::time::{Duration, Instant};

use super::error::PclntabDefect;
use super::pclntab::{Pclntab, HEADER_LEN_FOR_TESTS, MAGIC_GO120, MAX_FUNCTIONS};
use super::GoBinError;

/// A Go 1.20+ table of `nfunc` functions whose records all name one NUL-free name of
/// `name_len` bytes: one `_func` record, every table entry pointing at it.
fn one_name_table(nfunc: usize, name_len: usize) -> Vec<u8> {
    let funcname = HEADER_LEN_FOR_TESTS as u64;
    let pcln = funcname + name_len as u64;
    let mut t = Vec::with_capacity(pcln as usize + 8 * (nfunc + 2));
    t.extend_from_slice(&MAGIC_GO120.to_le_bytes());
    t.extend_from_slice(&[0, 0, 1, 8]);
    for w in [nfunc as u64, 1, 0x40_0000, funcname, 0, 0, 0, pcln] {
        t.extend_from_slice(&w.to_le_bytes());
    }
    t.resize(pcln as usize, b'x');
    let record = 8 * (nfunc as u32 + 1);
    for _ in 0..=nfunc {
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&record.to_le_bytes());
    }
    t.extend_from_slice(&[0; 8]);
    t
}

#[test]
fn a_64_mib_table_of_4m_entries_is_refused_at_once() {
    let t = one_name_table(4 << 20, 32 << 20);
    assert!(t.len() >= 64 << 20);
    let started = Instant::now();
    let r = Pclntab::parse(&t).map(|_| ());
    let took = started.elapsed();
    assert!(
        matches!(
            r,
            Err(GoBinError::BadPclntab {
                defect: PclntabDefect::TooManyFunctions { .. }
            })
        ),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn the_most_functions_allowed_all_naming_one_huge_name_are_searched_quickly() {
    let t = one_name_table(MAX_FUNCTIONS, 1 << 20);
    let table = Pclntab::parse(&t).expect("within the caps");
    let started = Instant::now();
    let found = table.find("crypto/tls.(*Conn).Read");
    let took = started.elapsed();
    assert!(matches!(found, Ok(None)), "{found:?}");
    // Reading a name stops at the cap, not at the end of the 1 MiB name.
    assert!(matches!(
        table.name(0),
        Err(GoBinError::BadPclntab {
            defect: PclntabDefect::NameUnterminated { func: 0 }
        })
    ));
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_file_larger_than_the_cap_is_refused_before_it_is_mapped() {
    struct Removed(std::path::PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let path =
        Removed(std::env::temp_dir().join(format!("routeskew-huge-{}.elf", std::process::id())));
    let f = std::fs::File::create(&path.0).expect("create");
    // Sparse: no disk is used.
    f.set_len(super::mapped::MAX_FILE_LEN + 1).expect("set_len");
    let r = super::GoBinary::open(&path.0).map(|_| ());
    assert!(matches!(r, Err(GoBinError::TooLarge { .. })), "{r:?}");
}
