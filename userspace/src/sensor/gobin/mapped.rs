//! A read-only shared mapping of a whole file, guarded against the file shrinking.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    ptr::NonNull,
};

use super::{sigbus, GoBinError};

/// Largest binary resolved: a Traefik release is 185 MB; past this a file is refused
/// before it is mapped (issue 16, item 2).
pub(super) const MAX_FILE_LEN: u64 = 1 << 30;

/// A read-only shared mapping of a whole file. Binaries are mapped instead of read:
/// Traefik is 185 MB, and resolution only touches its tables and a few functions.
pub(super) struct Mapped {
    ptr: NonNull<u8>,
    len: usize,
    path: PathBuf,
    /// Reads past the file's end (it shrank) see zeros and mark this ([`sigbus`]);
    /// released in [`Drop`] before the unmap.
    guard: Option<sigbus::Guard>,
}

// SAFETY: the mapping is read-only and owned; nothing aliases it mutably.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    pub(super) fn open(path: &Path) -> Result<Mapped, GoBinError> {
        let io_err = |source| GoBinError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len > MAX_FILE_LEN {
            return Err(GoBinError::TooLarge {
                path: path.to_owned(),
                len,
                max: MAX_FILE_LEN,
            });
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| GoBinError::Empty {
                path: path.to_owned(),
            })?;
        // Shared, not private: the kernel installs every active uprobe's INT3 into each
        // private mapping of a file that may execute, read-only ones included
        // (`valid_vma` in kernel/events/uprobes.c skips only VM_MAYSHARE mappings), so a
        // private mapping shows 0xcc instead of `push rbp` wherever a probe is attached,
        // ours or another tracer's. A shared mapping (and read(2)) shows the file.
        //
        // SAFETY: a fresh mapping of an open fd, checked for failure. The files mapped
        // are executables of running processes, which the kernel refuses to open for
        // writing (ETXTBSY); should one exit and its file shrink meanwhile, reads past
        // the new end see zeros instead of raising SIGBUS ([`sigbus`]) and the mapping
        // reports it. The fd is read-only, so the mapping cannot write to the file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err(io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io_err(io::Error::other("mmap returned NULL")))?;
        let mut mapped = Mapped {
            ptr,
            len,
            path: path.to_owned(),
            guard: None,
        };
        mapped.guard = Some(sigbus::guard(ptr.as_ptr() as usize, len).ok_or_else(|| {
            GoBinError::Unguarded {
                path: path.to_owned(),
                max: sigbus::SLOTS,
            }
        })?);
        Ok(mapped)
    }

    /// `Err` when the file shrank while mapped: what was read of it may be zeros.
    pub(super) fn intact(&self) -> Result<(), GoBinError> {
        match &self.guard {
            Some(g) if g.faulted() => Err(GoBinError::Shrank {
                path: self.path.clone(),
            }),
            _ => Ok(()),
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live PROT_READ mapping of `len` bytes until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // No fault can be ours once the range is unmapped: unregister first.
        drop(self.guard.take());
        // SAFETY: unmapping exactly what `open` mapped; no borrow of it outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
