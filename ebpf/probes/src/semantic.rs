//! The semantic sensor: uprobes at the emulated `push rbp` of Go `net/http`'s
//! per-response funnels and of `net/http.NotFound`, placed by the agent at offsets it
//! resolved and verified for the binary (`sensor/semantic`). The uprobe cookie is the
//! binary's slot in `SEM_BINARIES`, which holds the verified struct offsets.
//!
//! Per response: the status code from a register, `req` and `wroteHeader` from the
//! response writer, the `Host` string from the request, normalised and hashed here, and
//! one per-CPU counter increment. Nothing crosses the ring buffer but the request head
//! of a rare answer ([`sem_head`]).
//!
//! Go's register ABI on amd64: arguments in RAX, RBX, RCX, ...; R14 = the goroutine's `g`.
//! At the probe (before `push rbp`) `[rsp]` is the return address and RBP still the
//! caller's frame pointer, so `[rbp+8]` is the caller's own return address.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::uprobe,
    programs::ProbeContext,
};
use routeskew_common::{
    peer_key, raw_host_hash, sem_flags, sem_peer, GoHttpBinary, MissMark, Program, SemKey,
    SEM_HOST_CAP, SEM_MISS_TTL_NS, SEM_PEER_CAP,
};

use crate::{
    filter::pid_tgid,
    maps::{
        count, Counter, SEM_COUNTS, SEM_HOSTS, SEM_MISSES, SEM_PEERS, SEM_PEERS_ON, SEM_SCRATCH,
    },
    sem_head,
    sem_hit::{goroutine, hit},
    sem_session,
};

/// `net/http.(*response).WriteHeader(code)`: RAX = w, RBX = code.
#[uprobe]
pub(crate) fn rs_sem_h1_write_header(ctx: ProbeContext) -> u32 {
    write_header(&ctx, Program::SemH1WriteHeader, false);
    0
}

/// `net/http.(*http2responseWriterState).writeHeader(code)` (or x/net's): RAX = rws,
/// RBX = code.
#[uprobe]
pub(crate) fn rs_sem_h2_write_header(ctx: ProbeContext) -> u32 {
    write_header(&ctx, Program::SemH2WriteHeader, true);
    0
}

/// `net/http.NotFound(w, r)`: RAX, RBX = w (interface), RCX = r. Marks the goroutine so
/// that its following `WriteHeader(404)` counts as a router miss, unless the caller is
/// Traefik's API router.
#[uprobe]
pub(crate) fn rs_sem_not_found(ctx: ProbeContext) -> u32 {
    const PROG: Program = Program::SemNotFound;
    let Some((_, bin, regs)) = hit(&ctx, PROG) else {
        return 0;
    };
    let Ok(caller) = (unsafe { bpf_probe_read_user((regs.rbp + 8) as *const u64) }) else {
        count(PROG, Counter::ReadFailure);
        return 0;
    };
    if !bin.text.contains(caller) {
        count(PROG, Counter::Anomaly);
        return 0;
    }
    let mut i = 0;
    while i < bin.api_callers.len() {
        if bin.api_callers[i].contains(caller) {
            return 0;
        }
        i += 1;
    }
    let req = regs.rcx;
    let Ok(host_ptr) =
        (unsafe { bpf_probe_read_user((req + u64::from(bin.offsets.req_host)) as *const u64) })
    else {
        count(PROG, Counter::ReadFailure);
        return 0;
    };
    let key = goroutine(regs.r14);
    let mark = MissMark {
        host_ptr,
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if SEM_MISSES.insert(key, mark, 0).is_err() {
        count(PROG, Counter::MapFull);
    }
    0
}

/// `net/http/httputil.(*ReverseProxy).handleUpgradeResponse(rw, req, res)`: RAX = p,
/// RBX/RCX = rw (interface), RDI = req, RSI = res. Called only for a backend's `101`,
/// which it relays over the hijacked connection without `WriteHeader`.
#[uprobe]
pub(crate) fn rs_sem_upgrade(ctx: ProbeContext) -> u32 {
    const PROG: Program = Program::SemUpgrade;
    let Some((cgroup_id, bin, regs)) = hit(&ctx, PROG) else {
        return 0;
    };
    let Some(([host_ptr, host_len], remote_addr)) = request_fields(bin, regs.rdi) else {
        count(PROG, Counter::ReadFailure);
        return 0;
    };
    let peer = peer_flags(PROG, remote_addr);
    let host_hash = known_host(PROG, host_ptr, host_len);
    if peer == 0 {
        // The agent's own WebSocket probes close at once: no early close for them.
        sem_session::mark(PROG, regs.r14, host_hash);
    }
    bump(
        PROG,
        SemKey {
            cgroup_id,
            host_hash,
            status: 101,
            flags: sem_flags::UPGRADE | peer,
            tgid: (pid_tgid() >> 32) as u32,
        },
    );
    0
}

/// `PROBE` or `HOUSEKEEPING` when the request came over one of the agent's own
/// connections (its `RemoteAddr`, `(ptr, len)`, is in `SEM_PEERS`), else 0. `None` when
/// the agent has not turned the lookup on (nothing was read for it then).
#[inline(always)]
fn peer_flags(prog: Program, remote_addr: Option<[u64; 2]>) -> u16 {
    let Some([ptr, len]) = remote_addr else {
        return 0;
    };
    if len == 0 || len > SEM_PEER_CAP as u64 {
        return 0;
    }
    let mut words = [0u64; SEM_PEER_CAP / 8];
    let n = (len as u32) & (SEM_PEER_CAP as u32 * 2 - 1);
    if n == 0 || n > SEM_PEER_CAP as u32 {
        return 0;
    }
    let rc = unsafe {
        generated::bpf_probe_read_user(words.as_mut_ptr().cast::<c_void>(), n, ptr as *const c_void)
    };
    if rc != 0 {
        count(prog, Counter::ReadFailure);
        return 0;
    }
    match unsafe { SEM_PEERS.get(peer_key(&words, len)) } {
        Some(&sem_peer::PROBE) => sem_flags::PROBE,
        Some(&sem_peer::HOUSEKEEPING) => sem_flags::HOUSEKEEPING,
        _ => 0,
    }
}

/// Words of a response writer read at once: `req` and `wroteHeader` lie in its first
/// 128 bytes in every table entry (h1: 8 and 40, h2: 8 and 80), and both structs are
/// larger than that.
const WRITER_WORDS: usize = 16;

/// `req` and `wroteHeader` of the response writer at `w`: one user read where both lie
/// in its first [`WRITER_WORDS`] words, two otherwise.
#[inline(always)]
fn writer_fields(w: u64, req_off: u32, wrote_off: u32) -> Option<(u64, u8)> {
    let (req_off, wrote_off) = (req_off as usize, wrote_off as usize);
    // The verifier wants aligned stack reads, so the word index is masked rather than
    // proven aligned by a test the compiler folds into the address. `req` is a pointer
    // field, 8-aligned in every verified plan (offsets match the type descriptors).
    if req_off + 8 <= WRITER_WORDS * 8 && wrote_off < WRITER_WORDS * 8 {
        let win = unsafe { bpf_probe_read_user(w as *const [u64; WRITER_WORDS]) }.ok()?;
        let req = win[(req_off >> 3) & (WRITER_WORDS - 1)];
        let word = win[(wrote_off >> 3) & (WRITER_WORDS - 1)];
        return Some((req, (word >> ((wrote_off & 7) << 3)) as u8));
    }
    let wrote = unsafe { bpf_probe_read_user((w + wrote_off as u64) as *const u8) }.ok()?;
    let req = unsafe { bpf_probe_read_user((w + req_off as u64) as *const u64) }.ok()?;
    Some((req, wrote))
}

/// Words of a request read at once from its `Host`: `RemoteAddr` is 48 bytes after it in
/// every table entry.
const REQUEST_WORDS: usize = 8;

/// The request's `Host` as `(ptr, len)`, and its `RemoteAddr` when the agent's peer
/// lookup is on: one user read where both lie in [`REQUEST_WORDS`] words from `Host`.
#[inline(always)]
fn request_fields(bin: &GoHttpBinary, req: u64) -> Option<([u64; 2], Option<[u64; 2]>)> {
    let host_off = bin.offsets.req_host as usize;
    let ra_off = bin.offsets.req_remote_addr as usize;
    if SEM_PEERS_ON.get(0).is_none_or(|on| *on == 0) {
        let host =
            unsafe { bpf_probe_read_user((req + host_off as u64) as *const [u64; 2]) }.ok()?;
        return Some((host, None));
    }
    if ra_off > host_off && ra_off - host_off + 16 <= REQUEST_WORDS * 8 {
        let win =
            unsafe { bpf_probe_read_user((req + host_off as u64) as *const [u64; REQUEST_WORDS]) }
                .ok()?;
        let i = (ra_off - host_off) >> 3;
        let ra = [
            win[i & (REQUEST_WORDS - 1)],
            win[(i + 1) & (REQUEST_WORDS - 1)],
        ];
        return Some(([win[0], win[1]], Some(ra)));
    }
    let host = unsafe { bpf_probe_read_user((req + host_off as u64) as *const [u64; 2]) }.ok()?;
    let ra = unsafe { bpf_probe_read_user((req + ra_off as u64) as *const [u64; 2]) }.ok()?;
    Some((host, Some(ra)))
}

/// One more response under `key` (per-CPU: no other writer races on this CPU).
#[inline(always)]
fn bump(prog: Program, key: SemKey) {
    match SEM_COUNTS.get_ptr_mut(key) {
        Some(n) => unsafe { *n += 1 },
        None => {
            if SEM_COUNTS.insert(key, 1, 0).is_err() {
                count(prog, Counter::MapFull);
            }
        }
    }
}

#[inline(always)]
fn write_header(ctx: &ProbeContext, prog: Program, h2: bool) {
    let Some((cgroup_id, bin, regs)) = hit(ctx, prog) else {
        return;
    };
    let (w, code) = (regs.rax, regs.rbx);
    // Go ignores 1xx other than 101 here (h1) or writes them and returns (h2).
    if (100..200).contains(&code) && (h2 || code != 101) {
        return;
    }
    if !(101..1000).contains(&code) {
        // checkWriteHeaderCode panics first: nothing is written.
        count(prog, Counter::Anomaly);
        return;
    }
    let (req_off, wrote_off) = if h2 {
        (bin.offsets.h2_req, bin.offsets.h2_wrote_header)
    } else {
        (bin.offsets.h1_req, bin.offsets.h1_wrote_header)
    };
    let Some((req, wrote)) = writer_fields(w, req_off, wrote_off) else {
        count(prog, Counter::ReadFailure);
        return;
    };
    if wrote != 0 {
        // A superfluous WriteHeader: Go drops it.
        return;
    }
    let Some(([host_ptr, host_len], remote_addr)) = request_fields(bin, req) else {
        count(prog, Counter::ReadFailure);
        return;
    };
    let mut flags = peer_flags(prog, remote_addr);
    if h2 {
        flags |= sem_flags::H2;
    }
    if code == 404 && was_not_found(regs.r14, host_ptr) {
        flags |= sem_flags::ROUTER_MISS;
    }
    let key = SemKey {
        cgroup_id,
        host_hash: known_host(prog, host_ptr, host_len),
        status: code as u16,
        flags,
        tgid: (pid_tgid() >> 32) as u32,
    };
    if sem_head::wanted(code, flags) {
        sem_head::send(prog, &bin.offsets, w, &key);
    }
    bump(prog, key);
}

/// Whether `NotFound` marked this goroutine for this request (same Host string: Traefik's
/// middlewares hand shallow copies of the request down, which share it) recently.
#[inline(always)]
fn was_not_found(g: u64, host_ptr: u64) -> bool {
    let key = goroutine(g);
    let Some(mark) = (unsafe { SEM_MISSES.get(key) }) else {
        return false;
    };
    let fresh = unsafe { bpf_ktime_get_ns() }.saturating_sub(mark.ts_ns) < SEM_MISS_TTL_NS;
    let same = mark.host_ptr == host_ptr;
    let _ = SEM_MISSES.remove(key);
    fresh && same
}

/// The host's hash when the agent published it as known, else 0 (`other`). Normalised as
/// the agent does: ASCII lowercase, `:port` (1–5 digits) and a trailing dot stripped, an
/// IPv6 literal kept in its brackets. Anything else hashes to a value no known host has.
#[inline(always)]
fn known_host(prog: Program, ptr: u64, len: u64) -> u64 {
    if len == 0 || len > SEM_HOST_CAP as u64 {
        return 0;
    }
    let Some(buf) = SEM_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let buf = unsafe { &mut *buf };
    let n = (len as u32) & (SEM_HOST_CAP as u32 * 2 - 1);
    if n == 0 || n > SEM_HOST_CAP as u32 {
        return 0;
    }
    let rc = unsafe {
        generated::bpf_probe_read_user(buf.as_mut_ptr().cast::<c_void>(), n, ptr as *const c_void)
    };
    if rc != 0 {
        count(prog, Counter::ReadFailure);
        return 0;
    }
    let hash = raw_host_hash(buf, n as usize);
    match unsafe { SEM_HOSTS.get(hash) } {
        Some(_) => hash,
        None => 0,
    }
}
