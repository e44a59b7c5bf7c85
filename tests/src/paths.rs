//! Where the test bed finds its tools and keeps its build cache.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The workspace this crate belongs to (its parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (as cargo itself resolves it,
/// relative to the workspace), otherwise `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// Scratch space for things the test bed builds (the Go backend, the Go build cache).
pub fn cache_dir() -> PathBuf {
    target_dir().join("routeskew-testbed")
}

fn from_env_or(var: &str, fallback: PathBuf, what: &str, hint: &str) -> Result<PathBuf> {
    let path = match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => fallback,
    };
    if !path.is_file() {
        bail!("{what} not found at {} (set {var}; {hint})", path.display());
    }
    Ok(path)
}

/// The Traefik release binary: `ROUTESKEW_TRAEFIK`, else where `cargo xtask setup` puts it.
pub fn traefik_binary() -> Result<PathBuf> {
    from_env_or(
        "ROUTESKEW_TRAEFIK",
        workspace_root().join("target/tools/traefik-venv/bin/traefik"),
        "Traefik",
        "`cargo xtask setup` installs it",
    )
}

/// One Traefik release of the version matrix (`cargo xtask test` and `cargo xtask setup`
/// install 3.0.4, 3.3.6, 3.5.3, 3.6.15 and 3.7.15, one per Go minor version 1.22–1.26).
pub fn traefik_release(version: &str) -> Result<PathBuf> {
    let path = workspace_root().join(format!("target/tools/traefik-{version}/bin/traefik"));
    if !path.is_file() {
        bail!(
            "Traefik {version} not found at {} (`cargo xtask setup` installs the release matrix)",
            path.display()
        );
    }
    Ok(path)
}

/// The agent binary: `ROUTESKEW_AGENT`, else the workspace's debug build.
pub fn agent_binary() -> Result<PathBuf> {
    from_env_or(
        "ROUTESKEW_AGENT",
        workspace_root().join("target/debug/routeskew"),
        "routeskew agent",
        "`cargo build -p routeskew` builds it",
    )
}

/// The kernel object the agent should load, when one is given.
pub fn ebpf_object() -> Option<PathBuf> {
    std::env::var_os("ROUTESKEW_EBPF_OBJECT")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The Go toolchain for building the backend.
pub fn go_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ROUTESKEW_GO").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/lib/go/bin"),
            PathBuf::from("/usr/local/go/bin"),
        ])
        .map(|dir| dir.join("go"))
        .find(|p| p.is_file())
        .context("Go toolchain not found (set ROUTESKEW_GO or install golang-go)")
}

/// A program on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The test bed creates cgroups, attaches to other processes and (through the agent)
/// loads kernel programs: all of it needs root, and a test that cannot do its job must
/// say so instead of passing.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!("the routeskew test bed must run as root (euid is {euid}): it creates cgroups and the agent loads eBPF programs");
    }
    Ok(())
}
