//! `sock/sock_recv_length` and `sock/sock_send_length` as raw tracepoints (kernel 6.3
//! and later): the preferred hooks.
//!
//! They fire only for socket I/O, from inside `sock_recvmsg`/`sock_sendmsg`, and no
//! syscall tracepoint needs to be enabled at all: enabling any syscall tracepoint puts
//! every thread on the machine on the slow syscall path, and a `sys_exit` program runs
//! for every syscall of every process. The syscall's fd and buffer come from the current
//! task's saved registers (read through a BTF pointer, no helper call per register); the
//! per-connection state is keyed by the socket, and `inet_sock_set_state` reports the
//! end of a captured connection as its close (see `tcp.rs`).

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use routeskew_common::{Direction, Program};

use crate::{
    capture::{take, worth_a_look, Conn, Transfer},
    filter::{captured_cgroup, pid_tgid},
    maps::{cfg, CONFIG},
    regs,
};

const MSG_PEEK: i32 = 2;

/// `TP_PROTO(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub(crate) fn rs_sock_recv(ctx: RawTracePointContext) -> i32 {
    let flags = ctx.arg::<u64>(2) as i32;
    // Peeked bytes are read again by the next recv.
    if flags & MSG_PEEK == 0 {
        on_sock_io(ctx.arg::<u64>(0), ctx.arg::<u64>(1) as i32, Direction::Read);
    }
    0
}

/// `TP_PROTO(struct sock *sk, int ret, int flags)`.
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub(crate) fn rs_sock_send(ctx: RawTracePointContext) -> i32 {
    on_sock_io(
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1) as i32,
        Direction::Write,
    );
    0
}

#[inline(always)]
fn on_sock_io(sk: u64, ret: i32, dir: Direction) {
    // First, for free: no lookup for EAGAIN and short transfers.
    if !worth_a_look(dir, i64::from(ret)) {
        return;
    }
    let Some(cgroup_id) = captured_cgroup() else {
        return;
    };
    let c = &CONFIG;
    let r = regs::current();
    let nr = regs::load(r, &c.regs.nr) as u32;
    let numbers = &c.numbers;
    // Only the syscalls whose (fd, buffer) are the first two arguments; readv/writev and
    // recvmsg/sendmsg are not captured, as on the other paths.
    let prog = if dir == Direction::Read {
        if nr == cfg(&numbers.read) {
            Program::SysExitRead
        } else if nr == cfg(&numbers.recvfrom) {
            Program::SysExitRecvfrom
        } else {
            return;
        }
    } else if nr == cfg(&numbers.write) {
        Program::SysExitWrite
    } else if nr == cfg(&numbers.sendto) {
        Program::SysExitSendto
    } else {
        return;
    };
    take(Transfer {
        prog,
        dir,
        cgroup_id,
        id: pid_tgid(),
        fd: regs::load(r, &c.regs.arg0) as u32,
        buf: regs::load(r, &c.regs.arg1),
        ret: i64::from(ret),
        conn: Conn::Sock(sk),
    });
}
