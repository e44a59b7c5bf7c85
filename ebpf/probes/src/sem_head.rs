//! The semantic sensor's one ring-buffer record per response, and only for the rare
//! ones: the request head of an HTTP/1.x `GET` answered with 300 or more (not 304),
//! copied from the connection's read buffer so that the agent can tell a refused or
//! unrouted WebSocket upgrade from any other answer. Go's request does not keep the
//! `Upgrade` header anywhere cheaper to reach than its header map.
//!
//! `response.conn.bufr` is the `bufio.Reader` the server parsed the head from; on a new
//! connection, or after a request whose bytes were all consumed, the head starts at
//! `buf[0]`, and the buffer is not read again until the handler has returned. The agent
//! checks the copy's `Host` against the hash the counter used and drops a copy that is
//! not this request's (pipelined requests).

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_probe_read_user, generated};
use routeskew_common::{
    sem_flags, GoHttpOffsets, HeadEvent, Program, RecordKind, SemKey, SEM_HEAD_CAP,
};

use crate::{
    emit::{header, now, Owner},
    filter::pid_tgid,
    maps::{count, submit_flags, Counter, EVENTS},
};

/// Whether a response of status `code` with `flags` gets its request head copied.
#[inline(always)]
pub(crate) fn wanted(code: u64, flags: u16) -> bool {
    code >= 300
        && code != 304
        && flags & (sem_flags::H2 | sem_flags::PROBE | sem_flags::HOUSEKEEPING) == 0
}

/// Sends the head of the request answered by the HTTP/1.x response writer `w` under
/// `key`, when it is a `GET`.
#[inline(always)]
pub(crate) fn send(prog: Program, o: &GoHttpOffsets, w: u64, key: &SemKey) {
    let Some((buf, filled)) = read_buffer(o, w) else {
        count(prog, Counter::ReadFailure);
        return;
    };
    // Every WebSocket upgrade is a GET (RFC 6455 §4.1).
    match unsafe { bpf_probe_read_user(buf as *const [u8; 4]) } {
        Ok(start) if start == *b"GET " => {}
        Ok(_) => return,
        Err(_) => {
            count(prog, Counter::ReadFailure);
            return;
        }
    }
    let n = if filled > SEM_HEAD_CAP as u64 {
        SEM_HEAD_CAP as u32
    } else {
        filled as u32
    };
    // The verifier needs the bound right at the call: 1..=SEM_HEAD_CAP.
    let raw = unsafe { core::ptr::read_volatile(&n) };
    let n = (raw.wrapping_sub(1) & (SEM_HEAD_CAP as u32 - 1)) + 1;
    let Some(mut entry) = EVENTS.reserve::<HeadEvent>(0) else {
        count(prog, Counter::Lost);
        return;
    };
    let ev = entry.as_mut_ptr();
    let dst = unsafe { core::ptr::addr_of_mut!((*ev).head) }.cast::<c_void>();
    if unsafe { generated::bpf_probe_read_user(dst, n, buf as *const c_void) } != 0 {
        entry.discard(submit_flags());
        count(prog, Counter::ReadFailure);
        return;
    }
    let owner = Owner::current(pid_tgid(), key.cgroup_id);
    unsafe {
        core::ptr::addr_of_mut!((*ev).header).write(header(RecordKind::Head, prog, owner, now()));
        core::ptr::addr_of_mut!((*ev).host_hash).write(key.host_hash);
        core::ptr::addr_of_mut!((*ev).status).write(key.status);
        core::ptr::addr_of_mut!((*ev).flags).write(key.flags);
        core::ptr::addr_of_mut!((*ev).len).write(n);
    }
    entry.submit(submit_flags());
    count(prog, Counter::Emitted);
}

/// `response.conn.bufr`'s buffer: its address and how many bytes it holds (`w`, at most
/// `len(buf)`); `None` when a read fails or the buffer is empty.
#[inline(always)]
fn read_buffer(o: &GoHttpOffsets, w: u64) -> Option<(u64, u64)> {
    let conn = unsafe { bpf_probe_read_user((w + u64::from(o.h1_conn)) as *const u64) }.ok()?;
    let bufr =
        unsafe { bpf_probe_read_user((conn + u64::from(o.conn_bufr)) as *const u64) }.ok()?;
    let [ptr, len] =
        unsafe { bpf_probe_read_user((bufr + u64::from(o.bufr_buf)) as *const [u64; 2]) }.ok()?;
    let filled = unsafe { bpf_probe_read_user((bufr + u64::from(o.bufr_w)) as *const u64) }.ok()?;
    let filled = if filled > len { len } else { filled };
    (ptr != 0 && filled >= 4).then_some((ptr, filled))
}
