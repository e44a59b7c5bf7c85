//! WebSocket sessions the semantic sensor saw upgraded: how long each stayed open, for
//! early closes. `handleUpgradeResponse` relays the `101`, copies both ways until one
//! side ends, and closes the hijacked client connection with a deferred `Close` on its
//! own goroutine, the first connection close on it after the upgrade (a `*tls.Conn`
//! closes its `net.conn` there too). So the upgrade marks its goroutine, and the
//! goroutine's next `net.(*conn).Close` ends the session: one record per session, none
//! for any other close (one map lookup).

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use routeskew_common::{Program, RecordKind, UpgradeMark, WsClosedEvent};

use crate::{
    emit::{header, now, send, Owner},
    filter::pid_tgid,
    maps::{count, Counter, SEM_UPGRADES},
    sem_hit::{goroutine, hit},
};

/// Marks the goroutine `g` that relays an upgrade of a request with `host_hash`.
#[inline(always)]
pub(crate) fn mark(prog: Program, g: u64, host_hash: u64) {
    let mark = UpgradeMark {
        host_hash,
        ts_ns: now(),
    };
    if SEM_UPGRADES.insert(goroutine(g), mark, 0).is_err() {
        count(prog, Counter::MapFull);
    }
}

/// `net.(*conn).Close`: R14 = g.
#[uprobe]
pub(crate) fn rs_sem_conn_close(ctx: ProbeContext) -> u32 {
    const PROG: Program = Program::SemConnClose;
    let Some((cgroup_id, _, regs)) = hit(&ctx, PROG) else {
        return 0;
    };
    let key = goroutine(regs.r14);
    let Some(mark) = (unsafe { SEM_UPGRADES.get(key) }).copied() else {
        return 0;
    };
    let _ = SEM_UPGRADES.remove(key);
    let ts = now();
    send(
        PROG,
        WsClosedEvent {
            header: header(
                RecordKind::WsClosed,
                PROG,
                Owner::current(pid_tgid(), cgroup_id),
                ts,
            ),
            host_hash: mark.host_hash,
            open_ns: ts.saturating_sub(mark.ts_ns),
        },
    );
    0
}
