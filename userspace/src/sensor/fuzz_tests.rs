//! Property tests of the kernel-metadata parsers (issue 16): BTF blobs (a real-shaped
//! `pt_regs` blob with damaged bytes, or random) and tracefs format files (real ones with
//! damaged bytes, or random) parse or fail without a panic, and lookups in what parsed
//! stay within it.

use proptest::prelude::*;

use super::btf::tests::{aarch64_pt_regs, x86_64_pt_regs};
use super::btf::Btf;
use super::tracefs::EventFormat;
use crate::fuzz_support::{config, mutated, raw};

const FORMAT: &str = include_str!("tracefs/fixtures/inet_sock_set_state.format");

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_btf(blob in prop_oneof![
        3 => mutated(prop_oneof![Just(x86_64_pt_regs()), Just(aarch64_pt_regs())], 4),
        1 => raw(96),
    ]) {
        let Ok(btf) = Btf::parse(&blob) else { return Ok(()) };
        if let Ok(size) = btf.struct_size("pt_regs") {
            prop_assert!(size <= u64::from(u32::MAX));
        }
        for m in ["ip", "sp", "regs", "orig_x0", "nothing"] {
            let _ = btf.member("pt_regs", m);
        }
    }

    #[test]
    fn fuzz_tracefs_format(text in prop_oneof![
        3 => mutated(Just(FORMAT.as_bytes().to_vec()), 6),
        1 => raw(120),
    ]) {
        let text = String::from_utf8_lossy(&text);
        let Ok(f) = EventFormat::parse(&text) else { return Ok(()) };
        for field in ["saddr", "sport", "newstate", "nothing"] {
            if let Ok(off) = f.offset(field, &[2, 4, 16]) {
                prop_assert!(f.fields.iter().any(|x| x.offset == off));
            }
        }
    }
}

/// Found by `fuzz_btf`: an array whose element type is the array itself sent the size
/// computation into unbounded recursion (a stack overflow, which aborts the process);
/// arrays of huge arrays overflowed the size.
#[test]
fn an_array_of_itself_is_a_bad_type() {
    use super::btf::tests::Builder;
    let mut b = Builder::new();
    let int = b.int("int", 4);
    // The next id is the array's own: its element type is itself.
    let own = int + 1;
    let arr = b.array(own, 2);
    assert_eq!(arr, own);
    b.composite(false, "s", 8, &[("a", arr, 0)]);
    let blob = b.finish();
    let btf = Btf::parse(&blob).expect("parses");
    assert!(btf.member("s", "a").is_err());
    let mut b = Builder::new();
    let int = b.int("int", 4);
    let big = b.array(int, u32::MAX);
    let huge = b.array(big, u32::MAX);
    let huger = b.array(huge, u32::MAX);
    b.composite(false, "s", 8, &[("a", huger, 0)]);
    let blob = b.finish();
    let btf = Btf::parse(&blob).expect("parses");
    assert!(btf.member("s", "a").is_err());
}
