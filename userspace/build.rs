//! Embeds the kernel object built by `cargo xtask build-ebpf` when it exists, so the agent
//! binary is self-contained. Without it the crate still builds (plain `cargo build` needs
//! no eBPF toolchain) and the sensor asks for an object path at run time.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(routeskew_embedded_ebpf)");
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let ebpf_dir = manifest
        .parent()
        .expect("userspace/ lives inside the workspace")
        .join("target")
        .join("ebpf");
    let object = ebpf_dir.join("routeskew-probes.o");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("routeskew-probes.o");

    if object.is_file() {
        println!("cargo::rerun-if-changed={}", object.display());
        fs::copy(&object, &out)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", object.display(), out.display()));
        println!("cargo::rustc-cfg=routeskew_embedded_ebpf");
    } else {
        // A missing file would make cargo rerun this script (and rebuild the crate) on
        // every build; the directory the object will appear in is watched instead, or,
        // before any eBPF build, only this script.
        if ebpf_dir.is_dir() {
            println!("cargo::rerun-if-changed={}", ebpf_dir.display());
        } else {
            println!("cargo::rerun-if-changed=build.rs");
        }
        let _ = fs::remove_file(&out);
    }
}
