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

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::uprobe,
    programs::ProbeContext,
};
use routeskew_common::{
    conn_flags, conn_source, direction, event_kind, program, CloseEvent, EventHeader, GoroutineKey,
    TlsAhead, TlsConnKey, TlsRead, READ_AHEAD,
};

use crate::{
    capture::{capture, emit_data, Conn, MIN_LEN},
    filter::{http_start, pid_tgid, watched_cgroup, Start},
    maps::{count, submit_flags, Counter, EVENTS, TLS_AHEAD, TLS_CONNS, TLS_READS},
};

#[inline(always)]
fn tls_flags(id: u64, conn: u64) -> Option<u32> {
    let key = TlsConnKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        conn,
    };
    TLS_CONNS.get_ptr(&key).map(|s| unsafe { (*s).flags })
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
pub fn rs_go_tls_write(ctx: ProbeContext) -> u32 {
    let Some(cgroup_id) = watched_cgroup() else {
        return 0;
    };
    let regs = unsafe { &*ctx.regs };
    let (conn, buf, len) = (regs.rax, regs.rbx, regs.rcx as i64);
    let id = pid_tgid();
    if len < MIN_LEN {
        // Only an HTTP/2 connection wants short writes (a frame split by Go's buffered
        // writer); the lookup is paid by short writes alone.
        if len > 0 && is_h2(tls_flags(id, conn)) {
            emit_data(
                program::GO_TLS_WRITE,
                direction::WRITE,
                cgroup_id,
                id,
                0,
                buf,
                len as u64,
                tls_key(id, conn),
            );
        }
        return 0;
    }
    capture(
        program::GO_TLS_WRITE,
        direction::WRITE,
        cgroup_id,
        id,
        0,
        buf,
        len,
        tls_key(id, conn),
    );
    0
}

/// Entry of `(*Conn).Read(b)`: remember where the plaintext will land.
#[uprobe]
pub fn rs_go_tls_read(ctx: ProbeContext) -> u32 {
    let Some(cgroup_id) = watched_cgroup() else {
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
    if TLS_READS.insert(&key, &read, 0).is_err() {
        count(program::GO_TLS_READ, Counter::MapFull);
    }
    0
}

/// A RET instruction of `(*Conn).Read`: RAX holds `n`.
#[uprobe]
pub fn rs_go_tls_read_ret(ctx: ProbeContext) -> u32 {
    let regs = unsafe { &*ctx.regs };
    let id = pid_tgid();
    let key = GoroutineKey {
        tgid: (id >> 32) as u32,
        _pad: 0,
        g: regs.r14,
    };
    // Only watched processes' entries are stashed: a miss is an unwatched process.
    let Some(read) = TLS_READS.get_ptr(&key).map(|r| unsafe { *r }) else {
        return 0;
    };
    let _ = TLS_READS.remove(&key);
    let n = regs.rax as i64;
    let conn = TlsConnKey {
        tgid: key.tgid,
        _pad: 0,
        conn: read.conn,
    };
    let prog = program::GO_TLS_READ_RET;
    // A byte left by the previous Read of this connection goes in front of this one.
    let ahead = TLS_AHEAD.get_ptr(&conn).map(|a| unsafe { (*a).byte });
    if ahead.is_some() {
        let _ = TLS_AHEAD.remove(&conn);
    }
    // Short reads: an HTTP/2 frame header's rest or a small payload (WINDOW_UPDATE,
    // RST_STREAM), or Go's 1-byte background read of an HTTP/1 connection. One lookup
    // tells them apart; longer reads get it in `capture`.
    if n == 1 || (ahead.is_none() && n > 0 && n < MIN_LEN) {
        let flags = TLS_CONNS.get_ptr(&conn).map(|s| unsafe { (*s).flags });
        if is_h2(flags) {
            emit_data(
                prog,
                direction::READ,
                read.cgroup_id,
                id,
                0,
                read.buf,
                n as u64,
                Conn::Tls(conn),
            );
        } else if n == 1 {
            keep_ahead(prog, conn, read.buf, flags);
        }
        return 0;
    }
    match ahead {
        Some(byte) if n >= MIN_LEN - 1 => {
            read_after_ahead(prog, read.cgroup_id, id, conn, read.buf, n, byte)
        }
        _ if n >= MIN_LEN => capture(
            prog,
            direction::READ,
            read.cgroup_id,
            id,
            0,
            read.buf,
            n,
            Conn::Tls(conn),
        ),
        _ => {}
    }
    0
}

/// A 1-byte Read on a connection that carried HTTP (Go's background read while a handler
/// runs): keep the byte for the connection's next Read.
#[inline(always)]
fn keep_ahead(prog: u32, conn: TlsConnKey, buf: u64, flags: Option<u32>) {
    let Some(flags) = flags else {
        return;
    };
    if flags & (conn_flags::UPGRADED | conn_flags::H2) != 0 {
        return;
    }
    let Ok(byte) = (unsafe { bpf_probe_read_user(buf as *const u8) }) else {
        count(prog, Counter::ReadFailure);
        return;
    };
    let ahead = TlsAhead {
        byte: u32::from(byte),
        _pad: 0,
    };
    if TLS_AHEAD.insert(&conn, &ahead, 0).is_err() {
        count(prog, Counter::MapFull);
    }
}

/// A Read whose message began with the byte kept from the previous Read: judged with that
/// byte in front, and reported with it in the record's `fd` (the agent puts it back).
#[inline(always)]
fn read_after_ahead(
    prog: u32,
    cgroup_id: u64,
    id: u64,
    conn: TlsConnKey,
    buf: u64,
    n: i64,
    byte: u32,
) {
    let mut head = [0u8; 8];
    head[0] = byte as u8;
    let rc = unsafe {
        generated::bpf_probe_read_user(
            head.as_mut_ptr().add(1).cast::<c_void>(),
            7,
            buf as *const c_void,
        )
    };
    if rc != 0 {
        count(prog, Counter::ReadFailure);
        return;
    }
    // Server side, a client's Read is a request; upstream responses over TLS are not
    // captured.
    if http_start(u64::from_le_bytes(head)) != Start::Request {
        return;
    }
    emit_data(
        prog,
        direction::READ,
        cgroup_id,
        id,
        READ_AHEAD | byte,
        buf,
        n as u64,
        Conn::Tls(conn),
    );
}

/// Entry of `(*Conn).Close`: the end of a connection that carried captured HTTP.
#[uprobe]
pub fn rs_go_tls_close(ctx: ProbeContext) -> u32 {
    let Some(cgroup_id) = watched_cgroup() else {
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
    let Some(flags) = TLS_CONNS.get_ptr(&key).map(|s| unsafe { (*s).flags }) else {
        return 0;
    };
    let _ = TLS_CONNS.remove(&key);
    let prog = program::GO_TLS_CLOSE;
    let Some(mut entry) = EVENTS.reserve::<CloseEvent>(0) else {
        count(prog, Counter::Lost);
        return 0;
    };
    entry.write(CloseEvent {
        header: EventHeader {
            kind: event_kind::CLOSE,
            tgid: key.tgid,
            tid: id as u32,
            program: prog,
            cgroup_id,
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        fd: 0,
        flags,
        source: conn_source::GO_TLS,
        _pad: 0,
        tls_conn: key.conn,
    });
    entry.submit(submit_flags());
    count(prog, Counter::Emitted);
    0
}
