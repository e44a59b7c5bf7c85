//! The capture decision shared by every data hook: copy the head of a buffer that starts
//! an HTTP/1.x message, keep the per-connection upgrade mark, and keep the byte of a
//! 1-byte read for the connection's next read (see `routeskew_common::READ_AHEAD`). On a
//! Go TLS connection that started with the HTTP/2 client preface, copy every buffer: the
//! frame stream is parsed in userspace (`h2`), where HPACK needs all of it.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{bpf_probe_read_user, generated},
    maps::ring_buf::RingBufEntry,
};
use routeskew_common::{
    config_flags, conn_flags, ConnKey, ConnSource, ConnState, DataEvent, Direction, Program,
    RecordKind, SockConn, TlsConnKey, DATA_CAP, READ_AHEAD,
};

use crate::{
    emit::{header, now, Owner},
    filter::{http_start, is_h2_preface, is_http_response, is_tls_record, Start, STATUS_101},
    maps::{cfg, count, submit_flags, Counter, CONFIG, CONNS, EVENTS, SOCK_CONNS, TLS_CONNS},
};

/// Shorter transfers cannot hold a request line or status line worth classifying, and
/// reading 8 bytes of them could run past the caller's buffer.
pub(crate) const MIN_LEN: i64 = 8;

const EEXIST: i64 = 17;

/// Where a connection's state lives: by (process, fd) on the syscall paths, by socket on
/// the socket-tracepoint path, by (process, `*tls.Conn`) for Go TLS plaintext.
#[derive(Clone, Copy)]
pub(crate) enum Conn {
    Fd(ConnKey),
    /// `struct sock` address.
    Sock(u64),
    Tls(TlsConnKey),
}

/// One read or write a data hook saw: the program reporting it, its direction, whose it
/// is, and where its bytes are.
#[derive(Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) prog: Program,
    pub(crate) dir: Direction,
    pub(crate) cgroup_id: u64,
    /// `bpf_get_current_pid_tgid()`.
    pub(crate) id: u64,
    /// 0 for Go TLS plaintext, which has no fd.
    pub(crate) fd: u32,
    /// The user buffer.
    pub(crate) buf: u64,
    /// Bytes moved (positive).
    pub(crate) ret: i64,
    pub(crate) conn: Conn,
}

/// Whether a transfer of `ret` bytes is worth looking at: long enough to start a message,
/// or a 1-byte read, which may be Go's background read (see [`keep_ahead`]). EAGAIN from
/// non-blocking reads and short transfers leave here, before any lookup.
#[inline(always)]
pub(crate) fn worth_a_look(dir: Direction, ret: i64) -> bool {
    ret >= MIN_LEN || (dir == Direction::Read && ret == 1)
}

/// A transfer [`worth_a_look`] let through, from the syscall and socket hooks: a 1-byte
/// read is kept for the connection's next read, anything longer judged for capture.
#[inline(always)]
pub(crate) fn take(t: Transfer) {
    if t.dir == Direction::Read && t.ret == 1 {
        keep_ahead(t.prog, t.conn, t.buf);
    } else {
        capture(t);
    }
}

/// The state of a connection that carried captured HTTP: its flags, and where its kept
/// read-ahead byte lives (in the map value, updated in place).
#[inline(always)]
fn conn_state(conn: Conn) -> Option<(u32, *mut u32)> {
    // SAFETY: a map value pointer stays valid for the rest of the program's run.
    unsafe {
        match conn {
            Conn::Fd(key) => CONNS
                .get_ptr_mut(key)
                .map(|s| ((*s).flags, core::ptr::addr_of_mut!((*s).ahead))),
            Conn::Sock(sk) => SOCK_CONNS
                .get_ptr_mut(sk)
                .map(|s| ((*s).flags, core::ptr::addr_of_mut!((*s).ahead))),
            Conn::Tls(key) => TLS_CONNS
                .get_ptr_mut(key)
                .map(|s| ((*s).flags, core::ptr::addr_of_mut!((*s).ahead))),
        }
    }
}

/// A read/write-family syscall of a watched process moved `ret >= MIN_LEN` bytes through
/// `buf`: copy the head when it starts an HTTP/1.x message worth reporting. Responses a
/// process reads (its upstreams' answers) are only reported when configured, but a `101`
/// among them still marks the connection.
///
/// Each read of user memory costs about 200 ns here (bpf_stats, 16 bytes), as much as
/// the lookups before it, so the head is copied straight into a reserved record and
/// examined there, one read instead of two for every reported message; a record that
/// turns out not to be reported is discarded. Only when the copy
/// cannot hold the first 16 bytes (a `capture_len` below 16) or the ring is full is the
/// head read on its own first.
#[inline(always)]
pub(crate) fn capture(t: Transfer) {
    let (prog, dir, ret) = (t.prog, t.dir, t.ret);
    let (known, upstream) = match conn_state(t.conn) {
        Some((f, ahead)) => {
            if f & (conn_flags::UPGRADED | conn_flags::CIPHER) != 0 {
                return;
            }
            if f & conn_flags::H2 != 0 {
                emit_data(t, 0);
                return;
            }
            if dir == Direction::Read {
                // SAFETY: points into the map value found above.
                let kept = unsafe { *ahead };
                if kept != 0 {
                    unsafe { *ahead = 0 };
                    read_after_ahead(t, kept);
                    return;
                }
            }
            (true, f & conn_flags::UPSTREAM != 0)
        }
        None => (false, false),
    };
    let n = copy_len(ret as u64);
    // What a process reads from its upstreams is a response, not reported unless
    // configured: judging its first 16 bytes is enough (a `101` must still be seen), and
    // copying the whole head into a record only to discard it costs more. Should the
    // connection turn out to carry a request after all (a stale entry), head_first still
    // reports it.
    let skim = dir == Direction::Read
        && upstream
        && cfg(&CONFIG.flags) & config_flags::UPSTREAM_RESPONSES == 0;
    let outcome = if skim {
        head_first(t, true)
    } else if n >= 16 || u64::from(n) == ret as u64 {
        match EVENTS.reserve::<DataEvent>(0) {
            Some(entry) => copy_first(entry, t, n),
            None => {
                // Ring full: nothing can be reported, but an upgrade must still be seen.
                count(prog, Counter::Lost);
                head_first(t, false)
            }
        }
    } else {
        head_first(t, true)
    };
    let Some((start, reported, upgraded)) = outcome else {
        return;
    };
    if start == Start::TlsRecord {
        if !known {
            remember(t, conn_flags::CIPHER);
        }
        return;
    }
    if upgraded || start == Start::H2Preface || (reported && !known) {
        let upstream = dir == Direction::Write && start == Start::Request;
        let state = if upgraded {
            conn_flags::UPGRADED
        } else if start == Start::H2Preface {
            conn_flags::H2
        } else if upstream {
            conn_flags::UPSTREAM
        } else {
            0
        };
        remember(t, state);
    }
}

/// A 1-byte read on a connection that carried captured HTTP (Go's background read while
/// a handler runs): keep the byte in the connection's state for its next read. Nothing
/// is kept for connections that never carried HTTP, nor for upstream or upgraded ones.
#[inline(always)]
pub(crate) fn keep_ahead(prog: Program, conn: Conn, buf: u64) {
    let Some((flags, ahead)) = conn_state(conn) else {
        return;
    };
    // HTTP/2 frames are all copied as they are; a 1-byte read there is not a
    // background read.
    if flags & (conn_flags::UPGRADED | conn_flags::UPSTREAM | conn_flags::H2) != 0 {
        return;
    }
    let Ok(byte) = (unsafe { bpf_probe_read_user(buf as *const u8) }) else {
        count(prog, Counter::ReadFailure);
        return;
    };
    // SAFETY: points into the map value found above.
    unsafe {
        // A byte still kept was never followed by a read long enough to judge: whatever
        // message it began is lost.
        if *ahead != 0 {
            count(prog, Counter::Lost);
        }
        *ahead = READ_AHEAD | u32::from(byte);
    }
}

/// A read on a connection whose previous read returned one byte: judged with that byte
/// in front, and reported with it in the record's `ahead` (the agent puts it back). Only
/// a request is looked for: bytes are only kept on connections that are not upstreams.
///
/// Nearly every such read is the rest of a client request, so its head is copied
/// straight into a reserved record and judged there, one read of user memory instead of
/// two (see [`capture`]).
#[inline(always)]
fn read_after_ahead(t: Transfer, ahead: u32) {
    let n = copy_len(t.ret as u64);
    if n < 7 {
        read_after_ahead_head_first(t, ahead);
        return;
    }
    let Some(entry) = EVENTS.reserve::<DataEvent>(0) else {
        // Ring full: judged on its own, and counted as lost if it was a request.
        read_after_ahead_head_first(t, ahead);
        return;
    };
    let Some((entry, data)) = copy_into(entry, t, n) else {
        return;
    };
    // The kept byte, then the first 7 copied (the 8th is shifted out; with n == 7 it is
    // a stale byte of the record).
    let copied = unsafe { core::ptr::read_unaligned(data.cast::<u64>()) };
    let head = u64::from(ahead as u8) | (copied << 8);
    if http_start(head) != Start::Request {
        entry.discard(submit_flags());
        return;
    }
    submit(entry, t, n, ahead);
}

/// Copies the first `n` bytes of the transfer into the record's `data`, which it
/// returns; on failure the record is discarded and the failure counted.
#[inline(always)]
fn copy_into(
    mut entry: RingBufEntry<DataEvent>,
    t: Transfer,
    n: u32,
) -> Option<(RingBufEntry<DataEvent>, *mut u8)> {
    let ev = entry.as_mut_ptr();
    let data = unsafe { core::ptr::addr_of_mut!((*ev).data) }.cast::<u8>();
    let rc =
        unsafe { generated::bpf_probe_read_user(data.cast::<c_void>(), n, t.buf as *const c_void) };
    if rc != 0 {
        entry.discard(submit_flags());
        count(t.prog, Counter::ReadFailure);
        return None;
    }
    Some((entry, data))
}

/// Fills in the rest of a record whose `data` holds `n` bytes, and submits it.
#[inline(always)]
fn submit(mut entry: RingBufEntry<DataEvent>, t: Transfer, n: u32, ahead: u32) {
    unsafe { fill(entry.as_mut_ptr(), t, n, ahead) };
    entry.submit(submit_flags());
    count(t.prog, Counter::Emitted);
}

/// [`read_after_ahead`] reading the head on its own first: when the copy would be too
/// short to judge, or the ring is full.
#[inline(always)]
fn read_after_ahead_head_first(t: Transfer, ahead: u32) {
    let mut head = [0u8; 8];
    head[0] = ahead as u8;
    let rc = unsafe {
        generated::bpf_probe_read_user(
            head.as_mut_ptr().add(1).cast::<c_void>(),
            7,
            t.buf as *const c_void,
        )
    };
    if rc != 0 {
        count(t.prog, Counter::ReadFailure);
        return;
    }
    if http_start(u64::from_le_bytes(head)) != Start::Request {
        return;
    }
    emit_data(t, ahead);
}

/// Bytes to copy: `min(ret, capture_len)` in `[1, DATA_CAP]`, in a form the verifier can
/// bound. The volatile re-read hides the value's range from LLVM so that the mask is not
/// optimised away, and the mask is what the verifier sees.
#[inline(always)]
fn copy_len(ret: u64) -> u32 {
    let cap = u64::from(cfg(&CONFIG.capture_len));
    let len = if ret < cap { ret } else { cap };
    let len32 = if len > DATA_CAP as u64 {
        DATA_CAP as u32
    } else {
        len as u32
    };
    let raw = unsafe { core::ptr::read_volatile(&len32) };
    (raw.wrapping_sub(1) & (DATA_CAP as u32 - 1)) + 1
}

/// Whether a head starts a message, and whether it is a `101` status line. `next` holds
/// bytes 8..12 when `has_status`. The HTTP/2 preface only counts where it is read from a
/// Go TLS connection (the one source whose h2 frames userspace follows).
#[inline(always)]
fn judge(head: u64, next: u32, has_status: bool, dir: Direction, conn: Conn) -> (Start, bool) {
    let start = http_start(head);
    if start == Start::Other
        && dir == Direction::Read
        && matches!(conn, Conn::Tls(_))
        && is_h2_preface(head)
    {
        return (Start::H2Preface, false);
    }
    // Traefik's TLS entrypoints: every read and write of such a socket would be copied and
    // discarded again (a reserved record, a user-memory read) without this mark. Socket
    // path only: there the mark lives exactly as long as the socket, while an fd number
    // closed without close(2) could pass a stale mark to the next connection.
    if start == Start::Other && matches!(conn, Conn::Sock(_)) && is_tls_record(head) {
        return (Start::TlsRecord, false);
    }
    let upgraded = has_status && is_http_response(head) && next == STATUS_101;
    (start, upgraded)
}

#[inline(always)]
fn reported(start: Start, dir: Direction) -> bool {
    start == Start::Request
        || start == Start::H2Preface
        || dir == Direction::Write
        || cfg(&CONFIG.flags) & config_flags::UPSTREAM_RESPONSES != 0
}

/// Copies `n` bytes into `entry`, then judges them there. Returns (start, reported,
/// upgraded), or None when the bytes are no HTTP start (or unreadable).
#[inline(always)]
fn copy_first(entry: RingBufEntry<DataEvent>, t: Transfer, n: u32) -> Option<(Start, bool, bool)> {
    let (entry, data) = copy_into(entry, t, n)?;
    // n >= 8 here (ret >= MIN_LEN and n is 16 or more, or all of ret); bytes past n in
    // the record are stale and never looked at.
    let head = unsafe { core::ptr::read_unaligned(data.cast::<u64>()) };
    let has_status = n >= 12;
    let next = if has_status {
        unsafe { core::ptr::read_unaligned(data.add(8).cast::<u32>()) }
    } else {
        0
    };
    let (start, upgraded) = judge(head, next, has_status, t.dir, t.conn);
    if start == Start::Other {
        entry.discard(submit_flags());
        return None;
    }
    if start == Start::TlsRecord {
        entry.discard(submit_flags());
        return Some((start, false, false));
    }
    let report = reported(start, t.dir);
    if report {
        submit(entry, t, n, 0);
    } else {
        entry.discard(submit_flags());
    }
    Some((start, report, upgraded))
}

/// Reads the first bytes on their own, then (when `may_emit`) copies into a new record.
#[inline(always)]
fn head_first(t: Transfer, may_emit: bool) -> Option<(Start, bool, bool)> {
    let (buf, ret) = (t.buf, t.ret);
    let first = if ret >= 16 {
        unsafe { bpf_probe_read_user(buf as *const [u64; 2]) }
    } else if ret >= 12 {
        unsafe { bpf_probe_read_user(buf as *const [u32; 3]) }
            .map(|w| [u64::from(w[0]) | (u64::from(w[1]) << 32), u64::from(w[2])])
    } else {
        unsafe { bpf_probe_read_user(buf as *const u64) }.map(|h| [h, 0])
    };
    let Ok([head, next]) = first else {
        count(t.prog, Counter::ReadFailure);
        return None;
    };
    let (start, upgraded) = judge(head, next as u32, ret >= 12, t.dir, t.conn);
    if start == Start::Other {
        return None;
    }
    if start == Start::TlsRecord {
        return Some((start, false, false));
    }
    let report = may_emit && reported(start, t.dir);
    if report {
        emit_data(t, 0);
    }
    Some((start, report, upgraded))
}

/// Records the connection: known (so that its close is reported), upgraded (so that its
/// frames are never copied) or HTTP/2 (so that all of it is).
#[inline(always)]
fn remember(t: Transfer, state: u32) {
    let Transfer {
        prog,
        conn,
        cgroup_id,
        id,
        fd,
        ..
    } = t;
    let overrides = state & (conn_flags::UPGRADED | conn_flags::H2) != 0;
    let mode = u64::from(if overrides { BPF_ANY } else { BPF_NOEXIST });
    let inserted = match conn {
        Conn::Fd(key) => CONNS.insert(
            key,
            ConnState {
                flags: state,
                ahead: 0,
            },
            mode,
        ),
        Conn::Sock(sk) => SOCK_CONNS.insert(
            sk,
            SockConn {
                cgroup_id,
                tgid: (id >> 32) as u32,
                fd,
                flags: state,
                ahead: 0,
            },
            mode,
        ),
        Conn::Tls(key) => TLS_CONNS.insert(
            key,
            ConnState {
                flags: state,
                ahead: 0,
            },
            mode,
        ),
    };
    if let Err(e) = inserted {
        if i64::from(e) != -EEXIST {
            count(prog, Counter::MapFull);
        }
    }
}

/// Writes everything but `data` of a record.
///
/// # Safety
/// `ev` points into a reserved ring-buffer record.
#[inline(always)]
unsafe fn fill(ev: *mut DataEvent, t: Transfer, n: u32, ahead: u32) {
    let (source, tls_conn) = match t.conn {
        Conn::Tls(key) => (ConnSource::GoTls, key.conn),
        Conn::Fd(_) | Conn::Sock(_) => (ConnSource::Fd, 0),
    };
    let owner = Owner::current(t.id, t.cgroup_id);
    unsafe {
        core::ptr::addr_of_mut!((*ev).header).write(header(RecordKind::Data, t.prog, owner, now()));
        core::ptr::addr_of_mut!((*ev).fd).write(t.fd);
        core::ptr::addr_of_mut!((*ev).direction).write(t.dir as u32);
        core::ptr::addr_of_mut!((*ev).total_len).write(t.ret as u64);
        core::ptr::addr_of_mut!((*ev).captured_len).write(n);
        core::ptr::addr_of_mut!((*ev).source).write(source as u32);
        core::ptr::addr_of_mut!((*ev).tls_conn).write(tls_conn);
        core::ptr::addr_of_mut!((*ev).ahead).write(ahead);
        core::ptr::addr_of_mut!((*ev)._pad).write(0);
    }
}

/// Copies the head of the transfer into a new record, with the read-ahead byte that
/// belongs in front of it (`ahead`, or 0).
#[inline(always)]
pub(crate) fn emit_data(t: Transfer, ahead: u32) {
    let n = copy_len(t.ret as u64);
    let Some(entry) = EVENTS.reserve::<DataEvent>(0) else {
        count(t.prog, Counter::Lost);
        return;
    };
    if let Some((entry, _)) = copy_into(entry, t, n) {
        submit(entry, t, n, ahead);
    }
}
