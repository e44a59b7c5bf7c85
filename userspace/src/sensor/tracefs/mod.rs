//! tracefs: finding (or mounting) it, and turning the running kernel's tracepoint `format`
//! files ([`EventFormat`]) into the offsets the kernel programs read their records with
//! ([`layout`]).
//!
//! Tracepoint record layouts change between kernel versions and aya-ebpf has no CO-RE, so
//! the offsets compiled into the object are placeholders; these are the real ones.

mod format;
mod offsets;
#[cfg(test)]
mod tests;

use std::{
    ffi::CString,
    fmt, io,
    path::{Path, PathBuf},
    sync::Mutex,
};

pub use format::{EventFormat, Field, FormatError};
pub use offsets::{layout, Layout};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS: &str = "/sys/kernel/debug";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Why tracefs could not be found or mounted: one entry per attempt.
#[derive(Debug)]
pub struct MountAttempts(Vec<String>);

impl fmt::Display for MountAttempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

fn has_events(root: &Path) -> bool {
    root.join("events").is_dir()
}

fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let (source, target, fstype) = (c(source)?, c(target)?, c(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; no
    // mount data is passed.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The tracefs root (`/sys/kernel/tracing` or `/sys/kernel/debug/tracing`), mounting
/// tracefs when neither is populated: many hosts (and minimal containers) do not mount it.
pub fn ensure_tracefs() -> Result<PathBuf, MountAttempts> {
    // Concurrent starts in one process must not stack mounts on each other.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    for root in [TRACEFS, DEBUGFS_TRACING] {
        if has_events(Path::new(root)) {
            return Ok(PathBuf::from(root));
        }
    }
    let mut attempts = Vec::new();
    match mount("nodev", TRACEFS, "tracefs") {
        Ok(()) if has_events(Path::new(TRACEFS)) => {
            tracing::info!(path = TRACEFS, "mounted tracefs");
            return Ok(PathBuf::from(TRACEFS));
        }
        Ok(()) => attempts.push(format!(
            "mounted tracefs on {TRACEFS} but it has no events/"
        )),
        Err(e) => attempts.push(format!("mount -t tracefs nodev {TRACEFS}: {e}")),
    }
    if !Path::new(DEBUGFS_TRACING).is_dir() {
        // debugfs exposes tracefs under tracing/ (automounted on access).
        if let Err(e) = mount("nodev", DEBUGFS, "debugfs") {
            attempts.push(format!("mount -t debugfs nodev {DEBUGFS}: {e}"));
        }
    }
    if has_events(Path::new(DEBUGFS_TRACING)) {
        tracing::info!(path = DEBUGFS_TRACING, "using tracefs under debugfs");
        return Ok(PathBuf::from(DEBUGFS_TRACING));
    }
    match mount("nodev", DEBUGFS_TRACING, "tracefs") {
        Ok(()) if has_events(Path::new(DEBUGFS_TRACING)) => {
            tracing::info!(path = DEBUGFS_TRACING, "mounted tracefs");
            Ok(PathBuf::from(DEBUGFS_TRACING))
        }
        Ok(()) => {
            attempts.push(format!(
                "mounted tracefs on {DEBUGFS_TRACING} but it has no events/"
            ));
            Err(MountAttempts(attempts))
        }
        Err(e) => {
            attempts.push(format!("mount -t tracefs nodev {DEBUGFS_TRACING}: {e}"));
            Err(MountAttempts(attempts))
        }
    }
}
