//! The Go backend (`tests/backend/main.go`): built on demand, cached by source hash.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::paths;
use crate::process::ManagedChild;
use crate::tls::Certificate;

/// Compiled into the test bed so the binary can rebuild the backend wherever it runs.
const SOURCE: &str = include_str!("../backend/main.go");

/// FNV-1a: a stable content hash (std's hasher may change between Rust releases, which
/// would only cost a rebuild, but a stable key keeps the cache readable).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Builds the backend when its source (or the Go toolchain) changed and returns the
/// binary's path.
pub fn build() -> Result<PathBuf> {
    let go = paths::go_binary()?;
    let go_version = Command::new(&go)
        .arg("version")
        .output()
        .with_context(|| format!("running {} version", go.display()))?;
    let key = fnv1a(&[SOURCE.as_bytes(), &go_version.stdout].concat());
    let dir = paths::cache_dir().join("backend");
    let bin = dir.join(format!("routeskew-backend-{key:016x}"));
    if bin.is_file() {
        return Ok(bin);
    }
    let src_dir = dir.join(format!("src-{key:016x}"));
    std::fs::create_dir_all(&src_dir).with_context(|| format!("creating {}", src_dir.display()))?;
    std::fs::write(src_dir.join("main.go"), SOURCE)?;
    // A private GOCACHE: root's HOME may be unset under CI, and the backend is stdlib
    // only, so nothing may be downloaded (GOPROXY=off makes that explicit).
    let tmp_bin = dir.join(format!(".build-{}", std::process::id()));
    let out = Command::new(&go)
        .current_dir(&src_dir)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(&tmp_bin)
        .arg("main.go")
        .output()
        .context("running go build")?;
    if !out.status.success() {
        bail!(
            "go build of the test backend failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Rename is atomic: parallel test processes never run a half-written binary.
    std::fs::rename(&tmp_bin, &bin)?;
    Ok(bin)
}

pub struct Backend {
    pub addr: SocketAddr,
    pub child: ManagedChild,
}

impl Backend {
    /// Starts the backend on a kernel-chosen loopback port and learns the port from the
    /// line it prints, so no port is picked and then raced for.
    pub fn start(bin: &Path, log: &Path) -> Result<Self> {
        Self::spawn(Command::new(bin), log, None)
    }

    /// The same server inside the cgroup v2 directory `cgroup`.
    pub fn start_in(bin: &Path, log: &Path, cgroup: &Path) -> Result<Self> {
        Self::spawn(Command::new(bin), log, Some(cgroup))
    }

    /// The same server speaking HTTPS (Go's crypto/tls) with `cert`, inside `cgroup`
    /// when given.
    pub fn start_tls(
        bin: &Path,
        log: &Path,
        cert: &Certificate,
        cgroup: Option<&Path>,
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("-tls-cert")
            .arg(&cert.cert)
            .arg("-tls-key")
            .arg(&cert.key);
        Self::spawn(cmd, log, cgroup)
    }

    fn spawn(mut cmd: Command, log: &Path, cgroup: Option<&Path>) -> Result<Self> {
        cmd.args(["-listen", "127.0.0.1:0"]);
        let mut child = ManagedChild::spawn("backend", cmd, log, cgroup)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.strip_prefix("listening "))
                .and_then(|a| a.trim().parse().ok())
            {
                return Ok(Backend { addr, child });
            }
            if let Some(status) = child.try_exited() {
                bail!("backend exited ({status}):\n{}", child.log_tail(4096));
            }
            if Instant::now() > deadline {
                bail!(
                    "backend did not report its address:\n{}",
                    child.log_tail(4096)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
