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
pub use offsets::{layout, Layout, Unusable};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS: &str = "/sys/kernel/debug";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Why tracefs could not be found or mounted: one entry per attempt.
#[derive(Debug, thiserror::Error)]
#[error("{}", DisplayList(.0))]
pub struct MountAttempts(Vec<MountAttempt>);

/// One way of reaching tracefs that failed.
#[derive(Debug, thiserror::Error)]
pub enum MountAttempt {
    #[error("mounted tracefs on {target} but it has no events/")]
    NoEvents { target: &'static str },
    #[error("mount -t {fstype} nodev {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The attempts, separated by "; ".
struct DisplayList<'a>(&'a [MountAttempt]);

impl fmt::Display for DisplayList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, attempt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{attempt}")?;
        }
        Ok(())
    }
}

fn has_events(root: &Path) -> bool {
    root.join("events").is_dir()
}

fn mount(target: &'static str, fstype: &'static str) -> Result<(), MountAttempt> {
    let failed = |source| MountAttempt::Mount {
        fstype,
        target,
        source,
    };
    let c = |s: &str| CString::new(s).map_err(|e| failed(io::Error::other(e)));
    let (source, target_c, fstype_c) = (c("nodev")?, c(target)?, c(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; no
    // mount data is passed.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(failed(io::Error::last_os_error()))
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
    match mount(TRACEFS, "tracefs") {
        Ok(()) if has_events(Path::new(TRACEFS)) => {
            tracing::info!(path = TRACEFS, "mounted tracefs");
            return Ok(PathBuf::from(TRACEFS));
        }
        Ok(()) => attempts.push(MountAttempt::NoEvents { target: TRACEFS }),
        Err(e) => attempts.push(e),
    }
    if !Path::new(DEBUGFS_TRACING).is_dir() {
        // debugfs exposes tracefs under tracing/ (automounted on access).
        if let Err(e) = mount(DEBUGFS, "debugfs") {
            attempts.push(e);
        }
    }
    if has_events(Path::new(DEBUGFS_TRACING)) {
        tracing::info!(path = DEBUGFS_TRACING, "using tracefs under debugfs");
        return Ok(PathBuf::from(DEBUGFS_TRACING));
    }
    match mount(DEBUGFS_TRACING, "tracefs") {
        Ok(()) if has_events(Path::new(DEBUGFS_TRACING)) => {
            tracing::info!(path = DEBUGFS_TRACING, "mounted tracefs");
            Ok(PathBuf::from(DEBUGFS_TRACING))
        }
        Ok(()) => {
            attempts.push(MountAttempt::NoEvents {
                target: DEBUGFS_TRACING,
            });
            Err(MountAttempts(attempts))
        }
        Err(e) => {
            attempts.push(e);
            Err(MountAttempts(attempts))
        }
    }
}
