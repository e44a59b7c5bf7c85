//! Traefik's JSON access log: the replica's own account of what it answered, used as
//! ground truth next to the agent's kernel-side view.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

/// Traefik 3.7 logs `DownstreamStatus` 0 (and `OriginStatus` 0) for a connection its
/// upstream upgraded: the 101 goes through a hijacked connection it does not account.
pub const UPGRADED_LOGGED_STATUS: u16 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub entrypoint: String,
    pub host: String,
    pub path: String,
    /// Empty when no router matched (Traefik omits the field then).
    pub router: String,
    /// Status sent to the client ([`UPGRADED_LOGGED_STATUS`] for an upgrade).
    pub status: u16,
}

impl Entry {
    /// The status the client saw: 101 for an upgraded connection.
    pub fn client_status(&self) -> u16 {
        if self.status == UPGRADED_LOGGED_STATUS {
            101
        } else {
            self.status
        }
    }

    pub fn router_miss(&self) -> bool {
        self.router.is_empty()
    }
}

/// Every entry of the `web` entrypoint (the API entrypoint logs its own requests too).
pub fn read_web(path: &Path) -> Result<Vec<Entry>> {
    read_entrypoint(path, "web")
}

/// Every entry of one entrypoint (`web`, `websecure`).
pub fn read_entrypoint(path: &Path, entrypoint: &str) -> Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("access log line is not JSON: {line}"))?;
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let entry = Entry {
            entrypoint: s("entryPointName"),
            host: s("RequestHost"),
            path: s("RequestPath"),
            router: s("RouterName"),
            status: v
                .get("DownstreamStatus")
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or(0),
        };
        if entry.entrypoint == entrypoint {
            out.push(entry);
        }
    }
    Ok(out)
}
