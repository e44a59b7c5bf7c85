//! The one place that fills a ring-buffer record's header and sends fixed-size records
//! (close and upstream-failure events); data records are filled in place by `capture`,
//! with the same header.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use routeskew_common::{CloseEvent, ConnSource, EventHeader, Program, RecordKind};

use crate::maps::{count, submit_flags, Counter, EVENTS};

/// Whose a record is.
#[derive(Clone, Copy)]
pub(crate) struct Owner {
    pub(crate) tgid: u32,
    /// 0 when the record is emitted outside the owner's context (softirq).
    pub(crate) tid: u32,
    pub(crate) cgroup_id: u64,
}

impl Owner {
    /// The current thread (`id` is its `bpf_get_current_pid_tgid()`).
    #[inline(always)]
    pub(crate) fn current(id: u64, cgroup_id: u64) -> Owner {
        Owner {
            tgid: (id >> 32) as u32,
            tid: id as u32,
            cgroup_id,
        }
    }

    /// A process recorded earlier, when the current task may be any (softirq).
    #[inline(always)]
    pub(crate) fn recorded(tgid: u32, cgroup_id: u64) -> Owner {
        Owner {
            tgid,
            tid: 0,
            cgroup_id,
        }
    }
}

/// `bpf_ktime_get_ns()`: the records' clock.
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub(crate) fn header(kind: RecordKind, prog: Program, owner: Owner, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        tgid: owner.tgid,
        tid: owner.tid,
        program: prog as u32,
        cgroup_id: owner.cgroup_id,
        ts_ns,
    }
}

/// Reserves, writes and submits one record, counting it as emitted or lost for `prog`.
#[inline(always)]
pub(crate) fn send<T: 'static>(prog: Program, record: T) {
    let Some(mut entry) = EVENTS.reserve::<T>(0) else {
        count(prog, Counter::Lost);
        return;
    };
    entry.write(record);
    entry.submit(submit_flags());
    count(prog, Counter::Emitted);
}

/// The connection a close event ends.
#[derive(Clone, Copy)]
pub(crate) enum Closed {
    Fd(u32),
    /// The `*tls.Conn`.
    GoTls(u64),
}

/// Reports the end of a connection that carried captured HTTP, with its `conn_flags`.
#[inline(always)]
pub(crate) fn close(prog: Program, owner: Owner, conn: Closed, flags: u32) {
    let (fd, source, tls_conn) = match conn {
        Closed::Fd(fd) => (fd, ConnSource::Fd, 0),
        Closed::GoTls(c) => (0, ConnSource::GoTls, c),
    };
    send(
        prog,
        CloseEvent {
            header: header(RecordKind::Close, prog, owner, now()),
            fd,
            flags,
            source: source as u32,
            _pad: 0,
            tls_conn,
        },
    );
}
