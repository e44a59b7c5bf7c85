//! Syscall hooks for kernels without the socket tracepoints (`sockio.rs`, >= 6.3).
//!
//! Second choice: one raw tracepoint on `sys_exit`. It runs for every syscall of every
//! process, so it first reads the syscall number from the saved user registers and
//! returns unless it is read/write/recvfrom/sendto; only then does it check the cgroup.
//! The arguments are still in the saved registers at exit, so no enter hook and no
//! per-thread map are needed. Classic `syscalls/*` tracepoints would build a perf record
//! for every hit before the program even runs.
//!
//! Last resort (no BTF for `struct pt_regs`, no syscall numbers for this architecture, or
//! the raw tracepoint cannot be attached): the classic `sys_{enter,exit}_*` pairs, where
//! enter remembers (fd, buffer) per thread for the exit.
//!
//! On both, close(2) is seen at the classic `sys_enter_close`: at exit the fd number is
//! already free and another thread may have reused it, so the close event (and the
//! removal of the connection's state) must happen at entry. While only few syscall
//! tracepoints are enabled, their per-syscall cost beyond the slow syscall path (which the
//! raw tracepoint needs anyway) is a bitmap test; the record is only built for close
//! itself. Without BTF, entry also sets the "inside close(2)" mark `inet_sock_set_state`
//! reads, and the classic `sys_exit_close` removes it.

use aya_ebpf::{
    bindings::BPF_ANY,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use routeskew_common::{config_flags, conn_flags, ConnKey, Direction, PendingIo, Program};

use crate::{
    capture::{take, worth_a_look, Conn, Transfer},
    emit::{self, Closed, Owner},
    filter::{captured_cgroup, pid_tgid},
    maps::{cfg, count, Counter, CLOSING, CONFIG, CONNS, PENDING_IO},
    regs,
};

// ---------------------------------------------------------------------------------------
// Raw tracepoint path
// ---------------------------------------------------------------------------------------

/// `TP_PROTO(struct pt_regs *regs, long ret)`. The registers are read with
/// `bpf_probe_read_kernel`: measured cheaper here than the two helper calls that get a BTF
/// pointer to them (`regs::current()`), on a path that runs for every syscall.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub(crate) fn rs_sys_exit(ctx: RawTracePointContext) -> i32 {
    on_raw_exit(ctx.arg::<u64>(0), ctx.arg::<i64>(1));
    0
}

#[inline(always)]
fn on_raw_exit(regs: u64, ret: i64) {
    let c = &CONFIG;
    // The cheapest test first: nearly every syscall system-wide leaves here.
    let Some(nr) = regs::probe(regs, &c.regs.nr) else {
        count(Program::RawSysExit, Counter::ReadFailure);
        return;
    };
    // arm64 keeps the number in an int followed by padding: compare the low half only.
    let nr = nr as u32;
    let numbers = &c.numbers;
    let (prog, dir) = if nr == cfg(&numbers.read) {
        (Program::SysExitRead, Direction::Read)
    } else if nr == cfg(&numbers.write) {
        (Program::SysExitWrite, Direction::Write)
    } else if nr == cfg(&numbers.recvfrom) {
        (Program::SysExitRecvfrom, Direction::Read)
    } else if nr == cfg(&numbers.sendto) {
        (Program::SysExitSendto, Direction::Write)
    } else {
        // close(2) needs nothing here: the close event is sent at entry, and this path
        // always has BTF, so `inet_sock_set_state` reads the registers instead of a mark.
        return;
    };
    // Go's non-blocking reads return EAGAIN constantly: filtered before the cgroup.
    if !worth_a_look(dir, ret) {
        return;
    }
    let Some(cgroup_id) = captured_cgroup() else {
        return;
    };
    let (Some(fd), Some(buf)) = (
        regs::probe(regs, &c.regs.arg0),
        regs::probe(regs, &c.regs.arg1),
    ) else {
        count(Program::RawSysExit, Counter::ReadFailure);
        return;
    };
    let (id, fd) = (pid_tgid(), fd as u32);
    take(Transfer {
        prog,
        dir,
        cgroup_id,
        id,
        fd,
        buf,
        ret,
        conn: Conn::Fd(ConnKey {
            tgid: (id >> 32) as u32,
            fd,
        }),
    });
}

/// This thread left close(2) (classic path): the "inside close" mark set at entry is
/// over. A lookup first, because deleting from an LRU map takes a bucket lock even when
/// the key is absent, and most closes on the machine are not of watched processes.
#[inline(always)]
fn end_close_mark() {
    let id = pid_tgid();
    if unsafe { CLOSING.get(id) }.is_some() {
        let _ = CLOSING.remove(id);
    }
}

// ---------------------------------------------------------------------------------------
// Classic tracepoint fallback
// ---------------------------------------------------------------------------------------

#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub(crate) fn rs_enter_read(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, Program::SysEnterRead);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub(crate) fn rs_exit_read(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, Program::SysExitRead, Direction::Read);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub(crate) fn rs_enter_write(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, Program::SysEnterWrite);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub(crate) fn rs_exit_write(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, Program::SysExitWrite, Direction::Write);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_recvfrom")]
pub(crate) fn rs_enter_recvfrom(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, Program::SysEnterRecvfrom);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_recvfrom")]
pub(crate) fn rs_exit_recvfrom(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, Program::SysExitRecvfrom, Direction::Read);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub(crate) fn rs_enter_sendto(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, Program::SysEnterSendto);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub(crate) fn rs_exit_sendto(ctx: TracePointContext) -> u32 {
    on_exit(&ctx, Program::SysExitSendto, Direction::Write);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_close")]
pub(crate) fn rs_exit_close(_ctx: TracePointContext) -> u32 {
    end_close_mark();
    0
}

#[inline(always)]
fn read_fd(ctx: &TracePointContext) -> Option<u32> {
    // Syscall arguments are stored as 8-byte words; the fd is the low half.
    let fd: u64 = unsafe { ctx.read_at(cfg(&CONFIG.syscalls.enter_fd) as usize) }.ok()?;
    Some(fd as u32)
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, prog: Program) {
    if captured_cgroup().is_none() {
        return;
    }
    let Some(fd) = read_fd(ctx) else { return };
    let Ok(buf) = (unsafe { ctx.read_at::<u64>(cfg(&CONFIG.syscalls.enter_buf) as usize) }) else {
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
fn on_exit(ctx: &TracePointContext, prog: Program, dir: Direction) {
    let Some(cgroup_id) = captured_cgroup() else {
        return;
    };
    let id = pid_tgid();
    let Some(p) = PENDING_IO.get_ptr(id) else {
        return;
    };
    let pending = unsafe { *p };
    let _ = PENDING_IO.remove(id);
    // A null buffer cannot have moved bytes.
    if pending.buf == 0 {
        return;
    }
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(cfg(&CONFIG.syscalls.exit_ret) as usize) }) else {
        return;
    };
    if !worth_a_look(dir, ret) {
        return;
    }
    take(Transfer {
        prog,
        dir,
        cgroup_id,
        id,
        fd: pending.fd,
        buf: pending.buf,
        ret,
        conn: Conn::Fd(ConnKey {
            tgid: (id >> 32) as u32,
            fd: pending.fd,
        }),
    });
}

/// `syscalls/sys_enter_close`, on both syscall paths (see the module comment).
#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub(crate) fn rs_enter_close(ctx: TracePointContext) -> u32 {
    on_close(&ctx);
    0
}

#[inline(always)]
fn on_close(ctx: &TracePointContext) {
    let prog = Program::SysEnterClose;
    let Some(cgroup_id) = captured_cgroup() else {
        return;
    };
    let Some(fd) = read_fd(ctx) else { return };
    let id = pid_tgid();
    // With BTF, inet_sock_set_state reads the registers instead.
    if cfg(&CONFIG.flags) & config_flags::REGS == 0
        && CLOSING.insert(id, fd, u64::from(BPF_ANY)).is_err()
    {
        count(prog, Counter::MapFull);
    }
    let key = ConnKey {
        tgid: (id >> 32) as u32,
        fd,
    };
    let Some(s) = CONNS.get_ptr(key) else { return };
    let flags = unsafe { (*s).flags };
    let _ = CONNS.remove(key);
    if flags & conn_flags::CIPHER != 0 {
        return;
    }
    emit::close(prog, Owner::current(id, cgroup_id), Closed::Fd(fd), flags);
}
