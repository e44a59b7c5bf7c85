//! A mapped binary that shrinks under the agent must not kill it.
//!
//! Binaries are mapped, not read (Traefik is 185 MB; resolution touches a few MB of
//! it). Reading a mapped page past the file's new end raises SIGBUS. The executable of a
//! running process cannot be truncated (ETXTBSY), but the process may exit while its
//! binary is being resolved, and a binary on a host path may then be rebuilt in place.
//! So the agent handles SIGBUS itself: a fault inside a registered mapping is answered by
//! mapping a zero page over the faulting page (the read then sees zeros, and the
//! mapping is marked), and the resolution is thrown away when its mapping is marked. A
//! fault anywhere else goes to the handler that was there before (Rust's stack-overflow
//! report, or the default action), as if this one did not exist.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Once, OnceLock,
};

/// Mappings guarded at once; a resolution runs per binary, on its own thread.
pub(super) const SLOTS: usize = 64;

struct Slot {
    used: AtomicBool,
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

#[expect(
    clippy::declare_interior_mutable_const,
    reason = "the constant only initialises the static array; every use is a fresh value"
)]
const FREE: Slot = Slot {
    used: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    faulted: AtomicBool::new(false),
};

static GUARDED: [Slot; SLOTS] = [FREE; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Once = Once::new();

/// A registered mapping; unregistered on drop (before the mapping goes).
pub(super) struct Guard {
    slot: usize,
}

/// Registers `[start, start + len)`; `None` when every slot is taken or the handler
/// could not be installed (the caller then refuses to map).
pub(super) fn guard(start: usize, len: usize) -> Option<Guard> {
    INSTALL.call_once(install);
    PREVIOUS.get()?;
    let slot = GUARDED.iter().position(|s| {
        s.used
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    })?;
    let s = &GUARDED[slot];
    s.faulted.store(false, Ordering::Release);
    s.len.store(len, Ordering::Release);
    s.start.store(start, Ordering::Release);
    Some(Guard { slot })
}

impl Guard {
    /// A read of the mapping hit a page past the file's end since it was registered.
    pub(super) fn faulted(&self) -> bool {
        GUARDED[self.slot].faulted.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let s = &GUARDED[self.slot];
        s.start.store(0, Ordering::Release);
        s.len.store(0, Ordering::Release);
        s.used.store(false, Ordering::Release);
    }
}

fn install() {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Ok(page) = usize::try_from(page) {
        if page.is_power_of_two() {
            PAGE.store(page, Ordering::Release);
        }
    }
    // SAFETY: both structs are zero-initialised plain data that sigaction fills or
    // reads; the handler is an `extern "C"` function of the SA_SIGINFO shape.
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = on_sigbus
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut new.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, &new, &mut old) != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot handle SIGBUS: binaries are not mapped");
            return;
        }
        let _ = PREVIOUS.set(old);
    }
}

/// Only async-signal-safe work: atomic loads and stores, `mmap`, and the previous
/// handler's own contract.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Acquire);
    for s in &GUARDED {
        let start = s.start.load(Ordering::Acquire);
        let len = s.len.load(Ordering::Acquire);
        if start == 0 || addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: the page lies inside a live read-only mapping this module registered;
        // replacing it with an anonymous zero page changes what reads see, nothing else.
        let mapped = unsafe {
            libc::mmap(
                (addr & !(page - 1)) as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            s.faulted.store(true, Ordering::Release);
            return;
        }
    }
    chain(sig, info, ctx);
}

/// Hands the fault to the handler that was installed before, or restores the default
/// action so that the faulting read, run again, ends the process as it would have.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(old) = PREVIOUS.get() else {
        return;
    };
    let handler = old.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: restoring the saved disposition; sigaction is async-signal-safe.
        unsafe { libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut()) };
        return;
    }
    // SAFETY: `handler` is the previous disposition's function, called with the
    // arguments its flags promise.
    unsafe {
        if old.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(handler);
            f(sig, info, ctx);
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
            f(sig);
        }
    }
}
