//! Outgoing TCP connection failures of watched processes: `sock/inet_sock_set_state`,
//! `tcp/tcp_receive_reset`, `sock/inet_sk_error_report`.
//!
//! Only `CLOSE -> SYN_SENT` runs in the connecting process's context, so that is where
//! the cgroup filter applies; the other two fire in softirq context and are filtered by
//! membership in `TCP_SOCKS`, and their events carry the owner recorded there.
//!
//! With BTF the error of a still-connecting socket that closes without a reset is read
//! from the socket itself (`sk_err`, stored before the CLOSE on every kernel); 0 means the
//! application gave up. Without BTF: `inet_sk_error_report` has no socket address, so
//! such a socket is matched to its error report by address tuple, through per-CPU
//! slots (the two happen back to back on one CPU). Order seen on 6.18: refused = reset,
//! CLOSE, report(111); ICMP unreachable = report(0), CLOSE, report(113); SYN timeout =
//! CLOSE, report(110); the application giving up = CLOSE inside its close(2), no report.
//! Kernels before 6.10 report ICMP errors before the CLOSE; `SK_ERR_SLOT` covers that.
//!
//! `inet_sock_set_state` also ends the connections the socket tracepoints captured
//! (`SOCK_CONNS`, keyed by socket so that a reused fd number never inherits a mark): that
//! path has no close(2) hook, so the socket's end is reported as the close of its fd.

use aya_ebpf::{
    bindings::BPF_ANY, helpers::bpf_probe_read_kernel, macros::tracepoint,
    programs::TracePointContext,
};
use routeskew_common::{
    config_flags, conn_flags, Program, RecordKind, SockTupleFields, TcpSock, UpstreamEvent,
    UpstreamReason,
};

use crate::{
    emit::{self, header, now, Closed, Owner},
    filter::{pid_tgid, watched_cgroup},
    maps::{
        cfg, count, Counter, SockErr, SynClose, Tuple, CLOSING, CONFIG, SK_ERR_SLOT, SOCK_CONNS,
        SYN_CLOSE_SLOT, TCP_SOCKS,
    },
    regs,
};

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_FIN_WAIT1: u32 = 4;
const TCP_CLOSE: u32 = 7;
const TCP_LAST_ACK: u32 = 9;

const ENETUNREACH: i32 = 101;
const ECONNRESET: i32 = 104;
const ETIMEDOUT: i32 = 110;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub(crate) fn rs_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    on_set_state(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub(crate) fn rs_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    on_receive_reset(&ctx);
    0
}

#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub(crate) fn rs_inet_sk_error_report(ctx: TracePointContext) -> u32 {
    on_error_report(&ctx);
    0
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, off: &u32) -> Option<T> {
    unsafe { ctx.read_at::<T>(cfg(off) as usize) }.ok()
}

/// Whether a `sock/*` record is about a TCP socket (both tracepoints fire for others too).
#[inline(always)]
fn is_tcp(ctx: &TracePointContext, t: &SockTupleFields) -> bool {
    read::<u16>(ctx, &t.protocol) == Some(IPPROTO_TCP)
}

#[inline(always)]
fn read_daddr(ctx: &TracePointContext, family: u16, t: &SockTupleFields) -> [u8; 16] {
    let mut daddr = [0u8; 16];
    if family == AF_INET {
        if let Some(a) = read::<[u8; 4]>(ctx, &t.daddr) {
            daddr[0] = a[0];
            daddr[1] = a[1];
            daddr[2] = a[2];
            daddr[3] = a[3];
        }
    } else if let Some(a) = read::<[u8; 16]>(ctx, &t.daddr_v6) {
        daddr = a;
    }
    daddr
}

#[inline(always)]
fn tuple(family: u16, sport: u16, dport: u16, daddr: &[u8; 16]) -> Tuple {
    Tuple {
        family,
        sport,
        dport,
        _pad: 0,
        daddr: *daddr,
    }
}

// Word-wise so the comparison compiles to plain loads instead of a memcmp call.
#[inline(always)]
fn same_tuple(a: &Tuple, b: &Tuple) -> bool {
    let wa = unsafe { core::ptr::read_unaligned((a as *const Tuple).cast::<[u64; 3]>()) };
    let wb = unsafe { core::ptr::read_unaligned((b as *const Tuple).cast::<[u64; 3]>()) };
    wa[0] == wb[0] && wa[1] == wb[1] && wa[2] == wb[2]
}

#[inline(always)]
fn reason_for(error: i32) -> UpstreamReason {
    match error {
        ECONNREFUSED => UpstreamReason::Refused,
        EHOSTUNREACH | ENETUNREACH => UpstreamReason::Unreachable,
        ECONNRESET => UpstreamReason::Reset,
        ETIMEDOUT => UpstreamReason::Timeout,
        // Errors that only say the connect was abandoned (ECONNABORTED
        // from a socket kill, ...): the errno field keeps the detail.
        _ => UpstreamReason::Timeout,
    }
}

/// Reports a failure of `sock`, on behalf of the process that called connect().
#[inline(always)]
fn emit_upstream(prog: Program, sock: &TcpSock, reason: UpstreamReason, errno: i32, ts_ns: u64) {
    let owner = Owner::recorded(sock.tgid, sock.cgroup_id);
    emit::send(
        prog,
        UpstreamEvent {
            header: header(RecordKind::Upstream, prog, owner, ts_ns),
            reason: reason as u32,
            errno: errno as u32,
            family: sock.family,
            dport: sock.dport,
            _pad: 0,
            daddr: sock.daddr,
        },
    );
}

/// Emits a parked still-connecting close that no error report claimed: the application
/// (or the kernel, without an error) abandoned the connect.
#[inline(always)]
fn flush_syn_close(prog: Program) {
    if let Some(slot) = SYN_CLOSE_SLOT.get_ptr_mut(0) {
        unsafe {
            if (*slot).valid != 0 {
                (*slot).valid = 0;
                let sock = (*slot).sock;
                emit_upstream(prog, &sock, UpstreamReason::Timeout, 0, (*slot).ts_ns);
            }
        }
    }
}

/// Whether the current thread is inside close(2) of the socket owner: the application
/// gave up on its connect, no error report will follow.
#[inline(always)]
fn owner_is_closing(tgid: u32) -> bool {
    let id = pid_tgid();
    if (id >> 32) as u32 != tgid {
        return false;
    }
    let c = &CONFIG;
    if cfg(&c.flags) & config_flags::REGS != 0 {
        // The syscall this thread is in, from its saved registers (the number is not
        // replaced by a return value before the syscall ends).
        regs::load(regs::current(), &c.regs.nr) as u32 == cfg(&c.numbers.close)
    } else {
        unsafe { CLOSING.get(id) }.is_some()
    }
}

/// A socket that carried captured HTTP (socket-tracepoint path) reached its end: the
/// owner closed or shut it down (FIN_WAIT1, LAST_ACK) or it was aborted (CLOSE). Reported
/// as a close of the fd it was captured on, which is still the owner's at this point,
/// except in the instant between close(2) freeing the number and the state change in the
/// same call.
#[inline(always)]
fn end_sock_conn(skaddr: u64, new: u32) {
    if new != TCP_FIN_WAIT1 && new != TCP_LAST_ACK && new != TCP_CLOSE {
        return;
    }
    let Some(s) = SOCK_CONNS.get_ptr(skaddr) else {
        return;
    };
    let conn = unsafe { *s };
    let _ = SOCK_CONNS.remove(skaddr);
    if conn.flags & conn_flags::CIPHER != 0 {
        return;
    }
    // Owner recorded at capture: the current task may be any (softirq).
    emit::close(
        Program::InetSockSetState,
        Owner::recorded(conn.tgid, conn.cgroup_id),
        Closed::Fd(conn.fd),
        conn.flags,
    );
}

#[inline(always)]
fn on_set_state(ctx: &TracePointContext) {
    let prog = Program::InetSockSetState;
    let f = &CONFIG.set_state;
    if !is_tcp(ctx, &f.tuple) {
        return;
    }
    flush_syn_close(prog);
    let Some(skaddr) = read::<u64>(ctx, &f.skaddr) else {
        return;
    };
    let Some(old) = read::<i32>(ctx, &f.oldstate) else {
        return;
    };
    let Some(new) = read::<i32>(ctx, &f.newstate) else {
        return;
    };
    let (old, new) = (old as u32, new as u32);
    end_sock_conn(skaddr, new);

    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        track_connect(ctx, skaddr);
        return;
    }
    let Some(s) = TCP_SOCKS.get_ptr_mut(skaddr) else {
        return;
    };
    if new != TCP_CLOSE {
        unsafe { (*s).state = new };
        return;
    }
    let sock = unsafe { *s };
    let _ = TCP_SOCKS.remove(skaddr);
    if sock.state != TCP_SYN_SENT || sock.reported != 0 {
        return;
    }
    let c = &CONFIG;
    if cfg(&c.flags) & config_flags::SK_ERR_BTF != 0 {
        // The error is stored before the CLOSE: 0 means the owner gave up (close(2)).
        let at = skaddr.wrapping_add(u64::from(cfg(&c.sock_err)));
        let error = unsafe { bpf_probe_read_kernel(at as *const i32) }.unwrap_or(0);
        let reason = if error > 0 {
            reason_for(error)
        } else {
            UpstreamReason::Timeout
        };
        emit_upstream(prog, &sock, reason, error.max(0), now());
        return;
    }
    // The source port is only chosen after the SYN_SENT transition, so it is read now.
    let Some(sport) = read::<u16>(ctx, &f.tuple.sport) else {
        return;
    };
    let t = tuple(sock.family, sport, sock.dport, &sock.daddr);
    let ts_ns = now();

    if let Some(slot) = SK_ERR_SLOT.get_ptr_mut(0) {
        unsafe {
            if (*slot).valid != 0 {
                (*slot).valid = 0;
                if same_tuple(&(*slot).tuple, &t) {
                    let error = (*slot).error as i32;
                    emit_upstream(prog, &sock, reason_for(error), error, ts_ns);
                    return;
                }
            }
        }
    }
    if owner_is_closing(sock.tgid) {
        emit_upstream(prog, &sock, UpstreamReason::Timeout, 0, ts_ns);
        return;
    }
    if let Some(slot) = SYN_CLOSE_SLOT.get_ptr_mut(0) {
        unsafe {
            slot.write(SynClose {
                valid: 1,
                _pad: 0,
                ts_ns,
                tuple: t,
                sock,
            });
        }
    }
}

#[inline(always)]
fn track_connect(ctx: &TracePointContext, skaddr: u64) {
    let Some(cgroup_id) = watched_cgroup() else {
        return;
    };
    let t = &CONFIG.set_state.tuple;
    let Some(family) = read::<u16>(ctx, &t.family) else {
        return;
    };
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let Some(dport) = read::<u16>(ctx, &t.dport) else {
        return;
    };
    let daddr = read_daddr(ctx, family, t);
    let sock = TcpSock {
        cgroup_id,
        tgid: (pid_tgid() >> 32) as u32,
        state: TCP_SYN_SENT,
        reported: 0,
        family,
        dport,
        daddr,
    };
    if TCP_SOCKS.insert(skaddr, sock, u64::from(BPF_ANY)).is_err() {
        count(Program::InetSockSetState, Counter::MapFull);
    }
}

#[inline(always)]
fn on_receive_reset(ctx: &TracePointContext) {
    let Some(skaddr) = read::<u64>(ctx, &CONFIG.receive_reset.skaddr) else {
        return;
    };
    let Some(s) = TCP_SOCKS.get_ptr_mut(skaddr) else {
        return;
    };
    let sock = unsafe { *s };
    if sock.reported != 0 {
        return;
    }
    let (reason, errno) = match sock.state {
        TCP_SYN_SENT => (UpstreamReason::Refused, ECONNREFUSED),
        TCP_ESTABLISHED => (UpstreamReason::Reset, ECONNRESET),
        _ => return,
    };
    unsafe { (*s).reported = 1 };
    emit_upstream(Program::TcpReceiveReset, &sock, reason, errno, now());
}

#[inline(always)]
fn on_error_report(ctx: &TracePointContext) {
    let prog = Program::InetSkErrorReport;
    if cfg(&CONFIG.flags) & config_flags::SK_ERR_BTF != 0 {
        // The CLOSE transition read the error from the socket: nothing to pair.
        return;
    }
    let f = &CONFIG.error_report;
    if !is_tcp(ctx, &f.tuple) {
        return;
    }
    let Some(error) = read::<i32>(ctx, &f.error) else {
        return;
    };
    let f = &f.tuple;
    let Some(family) = read::<u16>(ctx, &f.family) else {
        return;
    };
    let Some(sport) = read::<u16>(ctx, &f.sport) else {
        return;
    };
    let Some(dport) = read::<u16>(ctx, &f.dport) else {
        return;
    };
    let daddr = read_daddr(ctx, family, f);
    let t = tuple(family, sport, dport, &daddr);

    if let Some(slot) = SYN_CLOSE_SLOT.get_ptr_mut(0) {
        unsafe {
            if (*slot).valid != 0 {
                (*slot).valid = 0;
                let sock = (*slot).sock;
                if same_tuple(&(*slot).tuple, &t) {
                    emit_upstream(prog, &sock, reason_for(error), error, now());
                    return;
                }
                emit_upstream(prog, &sock, UpstreamReason::Timeout, 0, (*slot).ts_ns);
            }
        }
    }
    // Kernels before 6.10 report ICMP errors before closing the socket: park the error
    // for the CLOSE transition that follows on this CPU.
    if error > 0 {
        if let Some(slot) = SK_ERR_SLOT.get_ptr_mut(0) {
            unsafe {
                slot.write(SockErr {
                    valid: 1,
                    error: error as u32,
                    tuple: t,
                });
            }
        }
    }
}
