//! What one uprobe hit costs on this machine, apart from any BPF program: the trap, and
//! for instructions the kernel cannot emulate the out-of-line single step after it.
//!
//! The TLS capture hits five uprobes per HTTP/1.1 request (see BENCHMARKS.md), and
//! `--bpf-stats` only counts the programs' own run time, so this is the rest of their
//! cost. A function of known instructions is called in a loop with no probe, then with
//! a tracefs uprobe event (the cheapest consumer the kernel has) on each of: `push rbp`
//! (emulated since Linux 6.x), `mov rbp, rsp` and `ret` (both single-stepped). The
//! difference per call is the cost of one hit.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use object::{Object, ObjectSegment, ObjectSymbol};

std::arch::global_asm!(
    ".globl routeskew_uprobe_target",
    ".type routeskew_uprobe_target, @function",
    "routeskew_uprobe_target:",
    "push rbp",
    "mov rbp, rsp",
    "lea rax, [rdi + 1]",
    "pop rbp",
    "ret",
    ".size routeskew_uprobe_target, . - routeskew_uprobe_target",
);

unsafe extern "C" {
    fn routeskew_uprobe_target(x: u64) -> u64;
}

const SYMBOL: &str = "routeskew_uprobe_target";
/// The function's bytes, as assembled above.
const CODE: [u8; 10] = [0x55, 0x48, 0x89, 0xe5, 0x48, 0x8d, 0x47, 0x01, 0x5d, 0xc3];
/// Where a probe goes, and how the kernel handles a hit there.
const SITES: [(&str, usize, &str); 3] = [
    ("push rbp", 0, "emulated"),
    ("mov rbp, rsp", 1, "single-stepped"),
    ("ret", 9, "single-stepped"),
];
const GROUP: &str = "routeskew_bench";
const CALLS: u64 = 100_000;
const REPEATS: usize = 3;

/// The cost of one hit at each site, in ns, measured against the unprobed call.
pub(crate) struct Cost {
    pub unprobed_ns: f64,
    pub sites: Vec<(&'static str, &'static str, f64)>,
}

/// Best (lowest) ns per call of `CALLS` calls, over `REPEATS` runs.
fn ns_per_call() -> f64 {
    (0..REPEATS)
        .map(|_| {
            let start = Instant::now();
            let mut acc = 0u64;
            for i in 0..CALLS {
                // SAFETY: a leaf function of the instructions above; it touches only rax,
                // rbp (restored) and the stack.
                acc = acc.wrapping_add(unsafe { routeskew_uprobe_target(std::hint::black_box(i)) });
            }
            std::hint::black_box(acc);
            start.elapsed().as_nanos() as f64 / CALLS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// The file offset of the function in this executable, checked against its bytes.
fn target_offset(exe: &Path) -> Result<u64> {
    let data = std::fs::read(exe).with_context(|| format!("reading {}", exe.display()))?;
    let file = object::File::parse(&*data).context("parsing this executable")?;
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(SYMBOL))
        .with_context(|| format!("no symbol {SYMBOL} in {}", exe.display()))?;
    let addr = sym.address();
    let offset = file
        .segments()
        .find_map(|seg| {
            let (start, size) = seg.file_range();
            (addr >= seg.address() && addr < seg.address() + size)
                .then(|| addr - seg.address() + start)
        })
        .context("the function lies in no file-backed segment")?;
    let at = usize::try_from(offset)?;
    ensure!(
        data.get(at..at + CODE.len()) == Some(&CODE[..]),
        "{SYMBOL} at file offset {offset:#x} does not hold the expected instructions"
    );
    Ok(offset)
}

/// A tracefs uprobe event, removed again on drop.
struct Event {
    tracefs: PathBuf,
    name: String,
}

impl Event {
    fn add(tracefs: &Path, name: &str, exe: &Path, offset: u64) -> Result<Self> {
        let event = Event {
            tracefs: tracefs.to_path_buf(),
            name: name.to_string(),
        };
        event.define(&format!("p:{GROUP}/{name} {}:{offset:#x}", exe.display()))?;
        std::fs::write(event.dir().join("enable"), "1").context("enabling the uprobe event")?;
        Ok(event)
    }

    fn dir(&self) -> PathBuf {
        self.tracefs.join("events").join(GROUP).join(&self.name)
    }

    fn define(&self, line: &str) -> Result<()> {
        OpenOptions::new()
            .append(true)
            .open(self.tracefs.join("uprobe_events"))
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
            .with_context(|| format!("writing {line:?} to uprobe_events"))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir().join("enable"), "0");
        let _ = self.define(&format!("-:{GROUP}/{}", self.name));
    }
}

pub(crate) fn measure() -> Result<Cost> {
    if !cfg!(target_arch = "x86_64") {
        bail!("the uprobe cost probe is x86-64 code");
    }
    let tracefs = routeskew::sensor::tracefs::ensure_tracefs()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("tracefs")?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let offset = target_offset(&exe)?;
    // Warm the code path before the first measurement.
    ns_per_call();
    let unprobed_ns = ns_per_call();
    let mut sites = Vec::new();
    for (i, (insn, at, how)) in SITES.into_iter().enumerate() {
        let event = Event::add(&tracefs, &format!("site{i}"), &exe, offset + at as u64)?;
        let ns = ns_per_call();
        drop(event);
        sites.push((insn, how, ns - unprobed_ns));
    }
    Ok(Cost { unprobed_ns, sites })
}

/// A markdown block for BENCHMARKS.md.
pub(crate) fn report(cost: &Cost) -> String {
    let mut md = String::from(
        "### Cost of one uprobe hit, without a BPF program\n\n\
         A function of known instructions called in a loop (best of 3 × 100,000 calls), with one \
         tracefs uprobe event on one of its instructions at a time.\n\n\
         | probed instruction | kernel handling | µs per hit |\n| --- | --- | ---: |\n",
    );
    for (insn, how, ns) in &cost.sites {
        md.push_str(&format!("| `{insn}` | {how} | {:.2} |\n", ns / 1000.0));
    }
    md.push_str(&format!("\nUnprobed call: {:.1} ns.\n", cost.unprobed_ns));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probed_function_is_found_in_this_executable() {
        let exe = std::env::current_exe().expect("this executable");
        let offset = target_offset(&exe).expect("file offset of the probed function");
        assert!(offset > 0);
        // SAFETY: see ns_per_call.
        assert_eq!(unsafe { routeskew_uprobe_target(41) }, 42);
    }
}
