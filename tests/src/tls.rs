//! TLS for the test bed: a self-signed certificate made with the `openssl` CLI, and
//! HTTPS requests made with `curl` (HTTP/1.1 or HTTP/2, certificate not verified).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths;

/// PEM files of a self-signed certificate for `*.test`.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certificate {
    /// A fresh P-256 certificate valid for a day, written into `dir`.
    pub fn self_signed(dir: &Path) -> Result<Certificate> {
        let openssl =
            paths::which("openssl").context("openssl not found (apt-get install openssl)")?;
        let cert = dir.join("tls-cert.pem");
        let key = dir.join("tls-key.pem");
        let out = Command::new(openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=routeskew test bed",
                "-addext",
                "subjectAltName=DNS:*.test,DNS:localhost,IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl req")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Certificate { cert, key })
    }
}

/// One `curl --http1.1` run over TLS to `addr` with SNI and Host `host`, fetching every
/// path in turn on one keep-alive connection. Returns the status codes.
pub fn curl_https(addr: SocketAddr, host: &str, paths: &[&str]) -> Result<Vec<u16>> {
    curl_https_as(addr, host, paths, "--http1.1", "1.1")
}

/// Like [`curl_https`] but over HTTP/2 (negotiated with ALPN): every path is a stream of
/// one connection. Fails unless curl really spoke HTTP/2.
pub fn curl_https_h2(addr: SocketAddr, host: &str, paths: &[&str]) -> Result<Vec<u16>> {
    curl_as(addr, host, paths, &["--http2"], "https", "2")
}

/// `paths` as streams of one HTTP/2 connection over TLS, spaced by `--rate` (e.g.
/// `"2/s"`): one connection that lives on between its requests.
pub fn curl_https_h2_paced(
    addr: SocketAddr,
    host: &str,
    paths: &[&str],
    rate: &str,
) -> Result<Vec<u16>> {
    curl_as(
        addr,
        host,
        paths,
        &["--http2", "--rate", rate],
        "https",
        "2",
    )
}

/// `paths` over cleartext HTTP/2 (h2c, prior knowledge).
pub fn curl_h2c(addr: SocketAddr, host: &str, paths: &[&str]) -> Result<Vec<u16>> {
    curl_as(addr, host, paths, &["--http2-prior-knowledge"], "http", "2")
}

fn curl_https_as(
    addr: SocketAddr,
    host: &str,
    paths: &[&str],
    flag: &str,
    want_version: &str,
) -> Result<Vec<u16>> {
    curl_as(addr, host, paths, &[flag], "https", want_version)
}

fn curl_as(
    addr: SocketAddr,
    host: &str,
    paths: &[&str],
    flags: &[&str],
    scheme: &str,
    want_version: &str,
) -> Result<Vec<u16>> {
    let curl = paths::which("curl").context("curl not found (apt-get install curl)")?;
    let mut cmd = Command::new(curl);
    cmd.args(["--silent", "--show-error", "--insecure"])
        .args(flags)
        .args(["--max-time", "10"])
        .arg("--resolve")
        .arg(format!("{host}:{}:{}", addr.port(), addr.ip()))
        .args(["--write-out", "%{http_code} %{http_version}\\n"]);
    for p in paths {
        // One --output per URL: each applies to the next URL only.
        cmd.args(["--output", "/dev/null"])
            .arg(format!("{scheme}://{host}:{}{p}", addr.port()));
    }
    let out = cmd.output().context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (code, version) = l.trim().split_once(' ').unwrap_or((l, ""));
            if version != want_version {
                bail!("curl spoke HTTP/{version}, not HTTP/{want_version}");
            }
            code.parse::<u16>()
                .with_context(|| format!("curl status {l:?}"))
        })
        .collect()
}

/// One WebSocket upgrade request over TLS with `curl --http1.1`, on its own connection.
/// Returns the status. After a `101` curl has no WebSocket support and just waits, so it
/// is stopped after `hold` (the connection then closes: an early close for the agent).
pub fn curl_wss_upgrade(
    addr: SocketAddr,
    host: &str,
    path: &str,
    hold: std::time::Duration,
) -> Result<u16> {
    let curl = paths::which("curl").context("curl not found (apt-get install curl)")?;
    let out = Command::new(curl)
        .args(["--silent", "--show-error", "--insecure", "--http1.1"])
        .arg("--max-time")
        .arg(format!("{:.3}", hold.as_secs_f64()))
        .arg("--resolve")
        .arg(format!("{host}:{}:{}", addr.port(), addr.ip()))
        .args([
            "-H",
            "Upgrade: websocket",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "-H",
            "Sec-WebSocket-Version: 13",
        ])
        .args(["--output", "/dev/null", "--write-out", "%{http_code}"])
        .arg(format!("https://{host}:{}{path}", addr.port()))
        .output()
        .context("running curl")?;
    let code: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("curl status {:?}", String::from_utf8_lossy(&out.stdout)))?;
    // 28: the time limit, which is how an upgraded connection ends here.
    let timed_out_upgraded = code == 101 && out.status.code() == Some(28);
    if !out.status.success() && !timed_out_upgraded {
        bail!(
            "curl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(code)
}
