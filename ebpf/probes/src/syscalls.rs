//! `syscalls/sys_{enter,exit}_{read,write,recvfrom,sendto}` and `sys_enter_close`.
//!
//! Enter remembers (fd, buffer) per thread; exit, knowing how many bytes moved, copies the
//! head of buffers that start an HTTP/1.x message. Connections that answered `101` are
//! marked in-kernel so their WebSocket frames are never copied.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use routeskew_common::{
    conn_flags, direction, event_kind, program, CloseEvent, ConnKey, ConnState, DataEvent,
    EventHeader, PendingIo, DATA_CAP,
};

use crate::{
    filter::{is_http_response, is_http_start, pid_tgid, watched_cgroup, STATUS_101},
    maps::{cfg, count, Counter, CONFIG, CONNS, EVENTS, PENDING_IO},
};

/// Shorter transfers cannot hold a request line or status line worth classifying, and
/// reading 8 bytes of them could run past the caller's buffer.
const MIN_LEN: i64 = 8;

const EEXIST: i64 = 17;

#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub fn rs_enter_read(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, program::SYS_ENTER_READ);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn rs_exit_read(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, program::SYS_EXIT_READ, direction::READ);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn rs_enter_write(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, program::SYS_ENTER_WRITE);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn rs_exit_write(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, program::SYS_EXIT_WRITE, direction::WRITE);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_recvfrom")]
pub fn rs_enter_recvfrom(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, program::SYS_ENTER_RECVFROM);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_recvfrom")]
pub fn rs_exit_recvfrom(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, program::SYS_EXIT_RECVFROM, direction::READ);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn rs_enter_sendto(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, program::SYS_ENTER_SENDTO);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn rs_exit_sendto(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, program::SYS_EXIT_SENDTO, direction::WRITE);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn rs_enter_close(ctx: TracePointContext) -> u32 {
    on_close(&ctx);
    0
}

#[inline(always)]
fn read_fd(ctx: &TracePointContext) -> Option<u32> {
    // Syscall arguments are stored as 8-byte words; the fd is the low half.
    let fd: u64 = unsafe { ctx.read_at(cfg(&CONFIG.sys_enter_fd_off) as usize) }.ok()?;
    Some(fd as u32)
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, prog: u32) {
    if watched_cgroup().is_none() {
        return;
    }
    let Some(fd) = read_fd(ctx) else { return };
    let Ok(buf) = (unsafe { ctx.read_at::<u64>(cfg(&CONFIG.sys_enter_buf_off) as usize) }) else {
        return;
    };
    let pending = PendingIo { buf, fd, _pad: 0 };
    if PENDING_IO
        .insert(pid_tgid(), pending, u64::from(BPF_ANY))
        .is_err()
    {
        count(prog, Counter::MapFull);
    }
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, prog: u32, dir: u32) {
    let Some(cgroup_id) = watched_cgroup() else {
        return;
    };
    let id = pid_tgid();
    let Some(p) = PENDING_IO.get_ptr(id) else {
        return;
    };
    let pending = unsafe { *p };
    let _ = PENDING_IO.remove(id);
    // buf == 0 is a close(2) marker (or a null buffer, which cannot have moved bytes).
    if pending.buf == 0 {
        return;
    }
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(cfg(&CONFIG.sys_exit_ret_off) as usize) }) else {
        return;
    };
    if ret < MIN_LEN {
        return;
    }
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd: pending.fd,
    };
    let known = match CONNS.get_ptr(key) {
        Some(s) => {
            if unsafe { (*s).flags } & conn_flags::UPGRADED != 0 {
                return;
            }
            true
        }
        None => false,
    };
    let head = match unsafe { bpf_probe_read_user(pending.buf as *const u64) } {
        Ok(h) => h,
        Err(_) => {
            count(prog, Counter::ReadFailure);
            return;
        }
    };
    if !is_http_start(head) {
        return;
    }
    // Decided before copying so that a full ring buffer cannot make the kernel miss the
    // switch to WebSocket frames.
    let mut upgraded = false;
    if ret >= 12 && is_http_response(head) {
        match unsafe { bpf_probe_read_user((pending.buf + 8) as *const u32) } {
            Ok(status) => upgraded = status == STATUS_101,
            Err(_) => count(prog, Counter::ReadFailure),
        }
    }

    emit_data(prog, dir, cgroup_id, id, &pending, ret as u64);

    if upgraded || !known {
        let state = ConnState {
            flags: if upgraded { conn_flags::UPGRADED } else { 0 },
            _pad: 0,
        };
        let flags = if upgraded { BPF_ANY } else { BPF_NOEXIST };
        if let Err(e) = CONNS.insert(key, state, u64::from(flags)) {
            if i64::from(e) != -EEXIST {
                count(prog, Counter::MapFull);
            }
        }
    }
}

#[inline(always)]
fn emit_data(prog: u32, dir: u32, cgroup_id: u64, id: u64, pending: &PendingIo, ret: u64) {
    let cap = u64::from(cfg(&CONFIG.capture_len));
    let mut len = if ret < cap { ret } else { cap };
    if len > DATA_CAP as u64 {
        len = DATA_CAP as u64;
    }
    if len == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<DataEvent>(0) else {
        count(prog, Counter::Lost);
        return;
    };
    let ev = entry.as_mut_ptr();
    // The verifier needs a provably bounded, non-zero size for the copy. The volatile
    // re-read hides len's range from LLVM so the mask below is not optimised away, and
    // the mask is what the verifier sees: n is in [1, DATA_CAP].
    let len32 = len as u32;
    let raw = unsafe { core::ptr::read_volatile(&len32) };
    let n = (raw.wrapping_sub(1) & (DATA_CAP as u32 - 1)) + 1;
    let rc = unsafe {
        generated::bpf_probe_read_user(
            core::ptr::addr_of_mut!((*ev).data).cast::<c_void>(),
            n,
            pending.buf as *const c_void,
        )
    };
    if rc != 0 {
        entry.discard(0);
        count(prog, Counter::ReadFailure);
        return;
    }
    unsafe {
        core::ptr::addr_of_mut!((*ev).header).write(EventHeader {
            kind: event_kind::DATA,
            tgid: (id >> 32) as u32,
            tid: id as u32,
            program: prog,
            cgroup_id,
            ts_ns: bpf_ktime_get_ns(),
        });
        core::ptr::addr_of_mut!((*ev).fd).write(pending.fd);
        core::ptr::addr_of_mut!((*ev).direction).write(dir);
        core::ptr::addr_of_mut!((*ev).total_len).write(ret);
        core::ptr::addr_of_mut!((*ev).captured_len).write(n);
        core::ptr::addr_of_mut!((*ev)._pad).write(0);
    }
    entry.submit(0);
    count(prog, Counter::Emitted);
}

#[inline(always)]
fn on_close(ctx: &TracePointContext) {
    let prog = program::SYS_ENTER_CLOSE;
    let Some(cgroup_id) = watched_cgroup() else {
        return;
    };
    let Some(fd) = read_fd(ctx) else { return };
    let id = pid_tgid();
    // Lets inet_sock_set_state tell "the application gave up on a connect" from a
    // failure the kernel detected (see tcp::owner_is_closing).
    let marker = PendingIo {
        buf: 0,
        fd,
        _pad: 0,
    };
    if PENDING_IO.insert(id, marker, u64::from(BPF_ANY)).is_err() {
        count(prog, Counter::MapFull);
    }
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd,
    };
    let Some(s) = CONNS.get_ptr(key) else { return };
    let flags = unsafe { (*s).flags };
    let _ = CONNS.remove(key);
    let Some(mut entry) = EVENTS.reserve::<CloseEvent>(0) else {
        count(prog, Counter::Lost);
        return;
    };
    entry.write(CloseEvent {
        header: EventHeader {
            kind: event_kind::CLOSE,
            tgid: (id >> 32) as u32,
            tid: id as u32,
            program: prog,
            cgroup_id,
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        fd,
        flags,
    });
    entry.submit(0);
    count(prog, Counter::Emitted);
}
