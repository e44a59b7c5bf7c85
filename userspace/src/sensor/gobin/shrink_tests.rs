//! Issue 16, item 2: a binary that shrinks while it is mapped cannot crash the agent
//! (reads past its new end see zeros, the resolution reports it), and a function too long
//! to decode is refused before its code is read.

use std::path::PathBuf;

use super::fuzz_build::{elf, pclntab, FUNC, TEXT_ADDR};
use super::mapped::Mapped;
use super::{GoBinError, GoBinary, MAX_FUNCTION_LEN};

const PAGE: usize = 4096;

/// A scratch file, removed on drop.
struct Scratch(PathBuf);

fn scratch_path(pid: u32, tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("routeskew-shrink-{pid}-{tag}.elf"))
}

impl Scratch {
    fn new(tag: &str, bytes: &[u8]) -> Scratch {
        let path = scratch_path(std::process::id(), tag);
        std::fs::write(&path, bytes).expect("write the scratch file");
        Scratch(path)
    }

    fn truncate(&self, len: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.0)
            .and_then(|f| f.set_len(len))
            .expect("truncate");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_mapping_whose_file_shrinks_reads_zeros_and_says_so() {
    let file = Scratch::new("raw", &vec![0xab; 4 * PAGE]);
    let map = Mapped::open(&file.0).expect("maps");
    assert_eq!(map.bytes()[3 * PAGE], 0xab);
    assert!(map.intact().is_ok());
    file.truncate(PAGE as u64);
    // Without the guard, this read is a SIGBUS and the test process dies.
    let tail = map.bytes()[3 * PAGE..]
        .iter()
        .map(|&b| u64::from(b))
        .sum::<u64>();
    assert_eq!(tail, 0, "the pages past the end read as zeros");
    assert_eq!(
        map.bytes()[0],
        0xab,
        "the page still in the file is unchanged"
    );
    assert!(
        matches!(map.intact(), Err(GoBinError::Shrank { .. })),
        "{:?}",
        map.intact()
    );
    drop(map);
    // A new mapping of the file (same slot, maybe) starts clean.
    let again = Mapped::open(&file.0).expect("maps");
    assert!(again.intact().is_ok());
}

#[test]
fn a_binary_that_shrinks_during_resolution_is_refused() {
    // The function table lies three pages into the file.
    let mut text = FUNC.to_vec();
    text.resize(3 * PAGE, 0xcc);
    let table = pclntab(&[b"main.f"], FUNC.len() as u32, TEXT_ADDR, None);
    let file = Scratch::new("bin", &elf(&text, &table).0);
    let bin = GoBinary::open(&file.0).expect("opens");
    assert_eq!(bin.function("main.f").expect("resolves").address, TEXT_ADDR);
    assert!(bin.intact().is_ok());
    file.truncate(64);
    let r = bin.function("main.f");
    assert!(r.is_err(), "a zeroed table names no function: {r:?}");
    assert!(
        matches!(bin.intact(), Err(GoBinError::Shrank { .. })),
        "{:?}",
        bin.intact()
    );
}

#[test]
fn a_function_longer_than_the_cap_is_not_decoded() {
    let size = u32::try_from(MAX_FUNCTION_LEN + 1).unwrap();
    let table = pclntab(&[b"main.huge", b"main.next"], size, TEXT_ADDR, None);
    let file = Scratch::new("huge-fn", &elf(&FUNC, &table).0);
    let bin = GoBinary::open(&file.0).expect("opens");
    let r = bin.function("main.huge");
    assert!(
        matches!(r, Err(GoBinError::FunctionTooLarge { size: s, .. }) if s == u64::from(size)),
        "{r:?}"
    );
}

/// Set in the child of [`a_fault_outside_the_guarded_mappings_still_kills`].
const CHILD: &str = "ROUTESKEW_SIGBUS_CHILD";

/// The guard swallows only faults in its own mappings: any other SIGBUS still ends the
/// process as before (checked in a child process, the test binary run again).
#[test]
fn a_fault_outside_the_guarded_mappings_still_kills() {
    use std::os::{fd::AsRawFd, unix::process::ExitStatusExt};
    if std::env::var_os(CHILD).is_some() {
        // Install the guard, then fault in a mapping it does not know.
        let guarded = Scratch::new("child-guarded", &[1; PAGE]);
        let _map = Mapped::open(&guarded.0).expect("maps");
        let file = Scratch::new("child-raw", &vec![2; 2 * PAGE]);
        let f = std::fs::File::open(&file.0).expect("open");
        // SAFETY: a fresh read-only mapping, read once below: the SIGBUS is the point.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        file.truncate(0);
        // SAFETY: inside the mapping; the page is past the file's end now.
        let b = unsafe { std::ptr::read_volatile(p.cast::<u8>().add(PAGE)) };
        panic!("read {b} past the end of a shrunk, unguarded mapping");
    }
    let child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "sensor::gobin::shrink_tests::a_fault_outside_the_guarded_mappings_still_kills",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs the child");
    let pid = child.id();
    let out = child.wait_with_output().expect("the child ends");
    // The child died before its scratch files' drops.
    for tag in ["child-guarded", "child-raw"] {
        let _ = std::fs::remove_file(scratch_path(pid, tag));
    }
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGBUS),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
