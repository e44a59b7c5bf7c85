//! `cargo xtask build-ebpf`: builds the kernel programs (ebpf/probes) for
//! bpfel-unknown-none and copies the object to `target/ebpf/routeskew-probes.o`, where the
//! agent's build script embeds it from.
//!
//! Two toolchain routes, detected in this order:
//! - rustup nightly with `rust-src`: `cargo +nightly build -Z build-std=core`;
//! - Debian's `rustc-web` (rustc with a prebuilt core for the bpf targets):
//!   `RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc /usr/bin/cargo build`.
//!
//! When neither exists, the Debian route is installed (root on Debian/Ubuntu). bpf-linker
//! comes from PATH or is installed under `target/tools/bpf-linker`.
//!
//! [`clippy`] lints the kernel crate for the bpf target on the same route: clippy-driver
//! is a compiler too and must be built with the rustc whose sysroot holds the bpf core,
//! so the Debian route uses Debian's `rust-web-clippy` (same source version as
//! `rustc-web`, pinned by its dependency on `libstd-rust-web`), never a rustup one.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{bail, Context, Result};

use crate::prereqs::{apt_install, is_root, workspace_root};

const TARGET: &str = "bpfel-unknown-none";
const OBJECT_NAME: &str = "routeskew-probes.o";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
/// From [`DEBIAN_CLIPPY_PACKAGE`]; runs the `clippy-driver` beside it.
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";
const DEBIAN_CLIPPY_PACKAGE: &str = "rust-web-clippy";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const DEBIAN_TOOLCHAIN_PACKAGES: [&str; 8] = [
    "rustc-web",
    "cargo-web",
    DEBIAN_CLIPPY_PACKAGE,
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// What bpf-linker needs to build against the system LLVM 22.
const LLVM_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// How the kernel crate gets compiled on this machine.
#[derive(Debug, Clone)]
enum Route {
    /// rustup nightly with rust-src: core is built from source.
    Nightly,
    /// Debian's rustc with prebuilt core for the bpf targets.
    Debian,
}

fn step(what: &str) {
    eprintln!("==> [build-ebpf] {what}");
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn nightly_with_rust_src() -> bool {
    let Some(sysroot) =
        output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
    else {
        return false;
    };
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

fn debian_rustc_with_bpf_core() -> bool {
    if !Path::new(DEBIAN_CARGO).is_file() {
        return false;
    }
    let Some(sysroot) = output(Command::new(DEBIAN_RUSTC).args(["--print", "sysroot"])) else {
        return false;
    };
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .is_dir()
}

fn detect_route() -> Option<Route> {
    if nightly_with_rust_src() {
        Some(Route::Nightly)
    } else if debian_rustc_with_bpf_core() {
        Some(Route::Debian)
    } else {
        None
    }
}

fn is_debian_like() -> bool {
    Path::new("/etc/debian_version").exists() && Path::new("/usr/bin/apt-get").exists()
}

fn route() -> Result<Route> {
    if let Some(route) = detect_route() {
        step(&format!("toolchain route: {route:?}"));
        return Ok(route);
    }
    if !is_debian_like() || !is_root() {
        bail!(
            "no toolchain can build the eBPF programs. Either\n\
             - rustup nightly with rust-src: `rustup toolchain install nightly --component rust-src`, or\n\
             - Debian's Rust with a prebuilt bpf core (as root): `apt-get install {}`",
            DEBIAN_TOOLCHAIN_PACKAGES.join(" ")
        );
    }
    step("no eBPF-capable toolchain found: installing Debian's rustc-web with the bpf core");
    apt_install(&DEBIAN_TOOLCHAIN_PACKAGES)?;
    match detect_route() {
        Some(route) => {
            step(&format!("toolchain route: {route:?}"));
            Ok(route)
        }
        None => bail!(
            "installed {} but {DEBIAN_RUSTC} still has no {TARGET} core",
            DEBIAN_TOOLCHAIN_PACKAGES.join(" ")
        ),
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A bpf-linker can only read bitcode from an LLVM at least as new as its own. Debian's
/// rustc is LLVM 22, so that route needs a linker dynamically linked to LLVM 22.
fn links_llvm22(linker: &Path) -> bool {
    output(Command::new("ldd").arg(linker)).is_some_and(|libs| libs.contains("libLLVM.so.22"))
}

fn local_linker() -> PathBuf {
    workspace_root().join("target/tools/bpf-linker/bin/bpf-linker")
}

/// Directory holding a bpf-linker suitable for `route`, installing one when needed.
fn bpf_linker(route: &Route) -> Result<PathBuf> {
    let suitable = |p: &Path| matches!(route, Route::Nightly) || links_llvm22(p);
    let candidates = [on_path("bpf-linker"), Some(local_linker())];
    if let Some(found) = candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file() && suitable(p))
    {
        step(&format!("bpf-linker: {}", found.display()));
        return Ok(found.parent().map(Path::to_path_buf).unwrap_or_default());
    }
    install_bpf_linker()?;
    let linker = local_linker();
    if !linker.is_file() {
        bail!(
            "cargo install bpf-linker did not produce {}",
            linker.display()
        );
    }
    Ok(linker.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn install_bpf_linker() -> Result<()> {
    let llvm_config = Path::new(LLVM_PREFIX).join("bin/llvm-config");
    if !llvm_config.is_file() {
        if !is_debian_like() || !is_root() {
            bail!(
                "bpf-linker is missing and cannot be built: it needs LLVM 22 development files \
                 ({} on Debian/Ubuntu) — install them or put a bpf-linker on PATH",
                LLVM_PACKAGES.join(" ")
            );
        }
        step("installing LLVM 22 development files for bpf-linker");
        apt_install(&LLVM_PACKAGES)?;
    }
    let root = workspace_root().join("target/tools/bpf-linker");
    step(&format!(
        "installing bpf-linker (LLVM 22) into {} — about a minute",
        root.display()
    ));
    let cargo = if on_path("cargo").is_some() {
        PathBuf::from("cargo")
    } else {
        PathBuf::from(DEBIAN_CARGO)
    };
    let mut cmd = clean_command(&cargo);
    cmd.args([
        "install",
        "bpf-linker",
        "--no-default-features",
        "--features",
        "llvm-22",
        "--root",
    ])
    .arg(&root)
    .env("PATH", prepend_path(&Path::new(LLVM_PREFIX).join("bin"))?)
    .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    run(cmd, "cargo install bpf-linker")
}

fn prepend_path(dir: &Path) -> Result<OsString> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).context("joining PATH")
}

/// A command without the variables the outer `cargo xtask` run exported: they would point
/// the inner cargo at the host toolchain, profile and target directory.
fn clean_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_")
            || key.starts_with("RUSTUP_")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<()> {
    step(what);
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Makes sure a toolchain that can build the kernel programs is installed.
pub(crate) fn ensure_toolchain() -> Result<()> {
    let route = route()?;
    bpf_linker(&route)?;
    Ok(())
}

/// Builds the kernel programs; returns the path of the object (`target/ebpf/routeskew-probes.o`).
pub(crate) fn build() -> Result<PathBuf> {
    let root = workspace_root();
    let route = route()?;
    let linker_dir = bpf_linker(&route)?;
    let target_dir = root.join("target/ebpf");
    let crate_dir = root.join("ebpf/probes");

    let mut cmd = match route {
        Route::Nightly => {
            let mut cmd = clean_command(Path::new("cargo"));
            cmd.args(["+nightly", "build", "--release", "-Z", "build-std=core"]);
            cmd
        }
        Route::Debian => {
            let mut cmd = clean_command(Path::new(DEBIAN_CARGO));
            // aya-ebpf uses #![feature(asm_experimental_arch)].
            cmd.env("RUSTC_BOOTSTRAP", "1").env("RUSTC", DEBIAN_RUSTC);
            cmd.args(["build", "--release"]);
            cmd
        }
    };
    cmd.args(["--target", TARGET])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("PATH", prepend_path(&linker_dir)?);
    run(
        cmd,
        &format!(
            "cargo build --release --target {TARGET} in {}",
            crate_dir.display()
        ),
    )?;

    let built = target_dir.join(TARGET).join("release/routeskew-probes");
    check_bpf_elf(&built)?;
    let object = target_dir.join(OBJECT_NAME);
    let partial = target_dir.join(format!("{OBJECT_NAME}.partial"));
    fs::copy(&built, &partial).with_context(|| format!("copying {}", built.display()))?;
    fs::rename(&partial, &object).with_context(|| format!("writing {}", object.display()))?;
    step(&format!(
        "kernel object: {} ({} bytes)",
        object.display(),
        fs::metadata(&object)?.len()
    ));

    // The agent's build script only watches target/ebpf once it exists; a crate built
    // before the first eBPF build watches build.rs instead, so make it look changed.
    let build_rs = root.join("userspace/build.rs");
    if let Ok(f) = fs::File::options().append(true).open(&build_rs) {
        let _ = f.set_modified(SystemTime::now());
    }
    Ok(object)
}

/// Debian's cargo-clippy for the Debian route, installed when missing (root on Debian).
fn debian_cargo_clippy() -> Result<PathBuf> {
    let path = PathBuf::from(DEBIAN_CARGO_CLIPPY);
    if path.is_file() {
        return Ok(path);
    }
    if !is_debian_like() || !is_root() {
        bail!(
            "{DEBIAN_CARGO_CLIPPY} is missing: clippy for the bpf target needs the clippy built \
             with {DEBIAN_RUSTC} (as root: `apt-get install {DEBIAN_CLIPPY_PACKAGE}`)"
        );
    }
    step(&format!(
        "installing {DEBIAN_CLIPPY_PACKAGE} (clippy for {DEBIAN_RUSTC})"
    ));
    apt_install(&[DEBIAN_CLIPPY_PACKAGE])?;
    if !path.is_file() {
        bail!("installed {DEBIAN_CLIPPY_PACKAGE} but {DEBIAN_CARGO_CLIPPY} does not exist");
    }
    Ok(path)
}

/// `cargo clippy -- -D warnings` on the kernel crate (and the shared types, as its
/// dependency) for the bpf target.
pub(crate) fn clippy() -> Result<()> {
    let root = workspace_root();
    let route = route()?;
    let crate_dir = root.join("ebpf/probes");
    let mut cmd = match route {
        Route::Nightly => {
            let mut cmd = clean_command(Path::new("cargo"));
            cmd.args(["+nightly", "clippy", "-Z", "build-std=core"]);
            cmd
        }
        Route::Debian => {
            // cargo-clippy runs `$CARGO check` with its own clippy-driver as the
            // workspace wrapper; the other crates are compiled by `$RUSTC`.
            let mut cmd = clean_command(&debian_cargo_clippy()?);
            cmd.arg("clippy")
                .env("CARGO", DEBIAN_CARGO)
                .env("RUSTC_BOOTSTRAP", "1")
                .env("RUSTC", DEBIAN_RUSTC);
            cmd
        }
    };
    cmd.args(["--release", "--target", TARGET, "--", "-D", "warnings"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", root.join("target/ebpf"));
    run(
        cmd,
        &format!(
            "cargo clippy --target {TARGET} -D warnings in {}",
            crate_dir.display()
        ),
    )
}

/// Refuses to publish anything but a little-endian eBPF ELF object.
fn check_bpf_elf(path: &Path) -> Result<()> {
    const EM_BPF: u16 = 247;
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let is_elf64_le =
        bytes.len() > 20 && bytes.starts_with(b"\x7fELF") && bytes[4] == 2 && bytes[5] == 1;
    if !is_elf64_le || u16::from_le_bytes([bytes[18], bytes[19]]) != EM_BPF {
        bail!("{} is not a little-endian eBPF ELF object", path.display());
    }
    Ok(())
}
