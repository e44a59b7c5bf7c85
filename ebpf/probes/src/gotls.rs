//! Uprobes on Go's `crypto/tls.(*Conn)` methods in watched binaries: the plaintext of TLS
//! connections, which the socket hooks only see encrypted. The agent places them at
//! offsets it resolved from the binary's function table (`sensor/gobin`).
//!
//! Go's register ABI on amd64: arguments in RAX, RBX, RCX, RDI, ..., results in RAX, RBX,
//! ...; R14 always holds the running goroutine's `g`. For `func (c *Conn) Write(b []byte)
//! (int, error)` and `Read`: RAX = `c`, RBX = `b`'s data, RCX = `len(b)`; at `Read`'s
//! RET instructions RAX = `n`.
//!
//! `Read`'s result is read at each of its RET instructions, never with a uretprobe: a
//! uretprobe rewrites the return address on the goroutine stack, which Go moves and walks.
//! The entry stashes the buffer by goroutine (not by thread: a goroutine blocked in `Read`
//! may resume on another thread). A stack growth restarts the function from its entry,
//! which only rewrites the same stash.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use routeskew_common::{conn_flags, Direction, GoroutineKey, Program, TlsConnKey, TlsRead};

use crate::{
    capture::{capture, emit_data, keep_ahead, Conn, Transfer, MIN_LEN},
    emit::{self, Closed, Owner},
    filter::{captured_cgroup, pid_tgid},
    maps::{count, Counter, TLS_CONNS, TLS_READS},
};

#[inline(always)]
fn tls_flags(id: u64, conn: u64) -> Option<u32> {
    let key = TlsConnKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        conn,
    };
    TLS_CONNS.get_ptr(key).map(|s| unsafe { (*s).flags })
}

/// An HTTP/2 connection whose frames are all copied.
#[inline(always)]
fn is_h2(flags: Option<u32>) -> bool {
    matches!(flags, Some(f) if f & (conn_flags::H2 | conn_flags::UPGRADED) == conn_flags::H2)
}

#[inline(always)]
fn tls_key(id: u64, conn: u64) -> Conn {
    Conn::Tls(TlsConnKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        conn,
    })
}

/// Entry of `(*Conn).Write(b)`: the bytes are about to be encrypted and sent.
#[uprobe]
pub(crate) fn rs_go_tls_write(ctx: ProbeContext) -> u32 {
    let Some(cgroup_id) = captured_cgroup() else {
        return 0;
    };
    let regs = unsafe { &*ctx.regs };
    let (conn, buf, len) = (regs.rax, regs.rbx, regs.rcx as i64);
    let id = pid_tgid();
    let t = Transfer {
        prog: Program::GoTlsWrite,
        dir: Direction::Write,
        cgroup_id,
        id,
        fd: 0,
        buf,
        ret: len,
        conn: tls_key(id, conn),
    };
    if len < MIN_LEN {
        // Only an HTTP/2 connection wants short writes (a frame split by Go's buffered
        // writer); the lookup is paid by short writes alone.
        if len > 0 && is_h2(tls_flags(id, conn)) {
            emit_data(t, 0);
        }
        return 0;
    }
    capture(t);
    0
}

/// Entry of `(*Conn).Read(b)`: remember where the plaintext will land.
#[uprobe]
pub(crate) fn rs_go_tls_read(ctx: ProbeContext) -> u32 {
    let Some(cgroup_id) = captured_cgroup() else {
        return 0;
    };
    let regs = unsafe { &*ctx.regs };
    let key = GoroutineKey {
        tgid: (pid_tgid() >> 32) as u32,
        _pad: 0,
        g: regs.r14,
    };
    let read = TlsRead {
        cgroup_id,
        conn: regs.rax,
        buf: regs.rbx,
    };
    if TLS_READS.insert(key, read, 0).is_err() {
        count(Program::GoTlsRead, Counter::MapFull);
    }
    0
}

/// A RET instruction of `(*Conn).Read`: RAX holds `n`.
#[uprobe]
pub(crate) fn rs_go_tls_read_ret(ctx: ProbeContext) -> u32 {
    let regs = unsafe { &*ctx.regs };
    let id = pid_tgid();
    let key = GoroutineKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        g: regs.r14,
    };
    // Only watched processes' entries are stashed: a miss is an unwatched process.
    let Some(read) = TLS_READS.get_ptr(key).map(|r| unsafe { *r }) else {
        return 0;
    };
    let _ = TLS_READS.remove(key);
    let n = regs.rax as i64;
    let conn = TlsConnKey {
        tgid: key.tgid,
        _pad: 0,
        conn: read.conn,
    };
    let prog = Program::GoTlsReadRet;
    // Short reads: an HTTP/2 frame header's rest or a small payload (WINDOW_UPDATE,
    // RST_STREAM), or Go's 1-byte background read of an HTTP/1 connection (see
    // `routeskew_common::READ_AHEAD`). One lookup tells them apart; longer reads get it
    // in `capture`.
    let t = Transfer {
        prog,
        dir: Direction::Read,
        cgroup_id: read.cgroup_id,
        id,
        fd: 0,
        buf: read.buf,
        ret: n,
        conn: Conn::Tls(conn),
    };
    if n > 0 && n < MIN_LEN {
        if is_h2(tls_flags(id, read.conn)) {
            emit_data(t, 0);
        } else if n == 1 {
            keep_ahead(prog, Conn::Tls(conn), read.buf);
        }
    } else if n >= MIN_LEN {
        capture(t);
    }
    0
}

/// Entry of `(*Conn).Close`: the end of a connection that carried captured HTTP.
#[uprobe]
pub(crate) fn rs_go_tls_close(ctx: ProbeContext) -> u32 {
    let Some(cgroup_id) = captured_cgroup() else {
        return 0;
    };
    let regs = unsafe { &*ctx.regs };
    let id = pid_tgid();
    let key = TlsConnKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        conn: regs.rax,
    };
    // Connections that never carried captured HTTP are not reported.
    let Some(flags) = TLS_CONNS.get_ptr(key).map(|s| unsafe { (*s).flags }) else {
        return 0;
    };
    let _ = TLS_CONNS.remove(key);
    emit::close(
        Program::GoTlsClose,
        Owner::current(id, cgroup_id),
        Closed::GoTls(key.conn),
        flags,
    );
    0
}
