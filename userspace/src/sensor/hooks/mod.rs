//! The kernel hooks: which program attaches where and on which data path ([`HOOKS`]),
//! what became of each ([`HookStatus`], [`Sensor::hooks`]) and the data path in use
//! ([`Sensor::data_path`]). Attaching them, and choosing the path, is in `attach`; why a
//! hook or a path failed in `error`.

mod attach;
mod error;

use std::fmt::Write as _;

use routeskew_common::Program;

pub(super) use attach::{attach_all, attach_data, require_capture, statuses};
pub(super) use error::describe_program_error;
pub use error::{HookError, PathFailure};

use super::{names, DataPath, Sensor};

/// How a program attaches.
#[derive(Clone, Copy)]
pub(super) enum Attach {
    /// A classic tracepoint `category/event`.
    Tracepoint {
        category: &'static str,
        event: &'static str,
    },
    /// A raw tracepoint.
    Raw { tracepoint: &'static str },
}

/// Which data path a hook belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needed {
    /// On every path.
    Always,
    /// The socket tracepoints.
    Sock,
    /// The raw `sys_exit` program.
    Raw,
    /// The classic syscall tracepoints.
    Classic,
    /// Both syscall paths (raw and classic): `sys_enter_close`.
    Syscalls,
}

/// A kernel program and the hook it attaches to.
pub(super) struct Hook {
    /// Function name in the object.
    pub(super) program: &'static str,
    index: Program,
    pub(super) attach: Attach,
    needed: Needed,
}

impl Hook {
    fn name(&self) -> String {
        match self.attach {
            Attach::Tracepoint { category, event } => format!("{category}/{event}"),
            Attach::Raw { tracepoint } => format!("raw_tracepoint/{tracepoint}"),
        }
    }

    fn wanted_on(&self, path: DataPath) -> bool {
        match self.needed {
            Needed::Always => true,
            Needed::Sock => path == DataPath::SockTracepoints,
            Needed::Raw => path == DataPath::RawSysExit,
            Needed::Classic => path == DataPath::Classic,
            Needed::Syscalls => matches!(path, DataPath::RawSysExit | DataPath::Classic),
        }
    }
}

const fn tp(index: Program, category: &'static str, event: &'static str, needed: Needed) -> Hook {
    Hook {
        program: names::program(index),
        index,
        attach: Attach::Tracepoint { category, event },
        needed,
    }
}

const fn raw(index: Program, tracepoint: &'static str, needed: Needed) -> Hook {
    Hook {
        program: names::program(index),
        index,
        attach: Attach::Raw { tracepoint },
        needed,
    }
}

/// In order of preference for the data hooks, then attach order within a path: each
/// exit before its enter, so an enter never fills a per-thread map (pending I/O, the
/// close mark) without the exit that drains it.
pub(super) const HOOKS: [Hook; Program::TRACEPOINTS as usize] = [
    raw(Program::SockSend, "sock_send_length", Needed::Sock),
    raw(Program::SockRecv, "sock_recv_length", Needed::Sock),
    raw(Program::RawSysExit, "sys_exit", Needed::Raw),
    tp(
        Program::SysExitRead,
        "syscalls",
        "sys_exit_read",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterRead,
        "syscalls",
        "sys_enter_read",
        Needed::Classic,
    ),
    tp(
        Program::SysExitWrite,
        "syscalls",
        "sys_exit_write",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterWrite,
        "syscalls",
        "sys_enter_write",
        Needed::Classic,
    ),
    tp(
        Program::SysExitRecvfrom,
        "syscalls",
        "sys_exit_recvfrom",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterRecvfrom,
        "syscalls",
        "sys_enter_recvfrom",
        Needed::Classic,
    ),
    tp(
        Program::SysExitSendto,
        "syscalls",
        "sys_exit_sendto",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterSendto,
        "syscalls",
        "sys_enter_sendto",
        Needed::Classic,
    ),
    tp(
        Program::SysExitClose,
        "syscalls",
        "sys_exit_close",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterClose,
        "syscalls",
        "sys_enter_close",
        Needed::Syscalls,
    ),
    tp(
        Program::InetSockSetState,
        "sock",
        "inet_sock_set_state",
        Needed::Always,
    ),
    tp(
        Program::TcpReceiveReset,
        "tcp",
        "tcp_receive_reset",
        Needed::Always,
    ),
    tp(
        Program::InetSkErrorReport,
        "sock",
        "inet_sk_error_report",
        Needed::Always,
    ),
];

/// (enter, exit) programs that only work together (classic path).
const DATA_PAIRS: [(Program, Program); 5] = [
    (Program::SysEnterRead, Program::SysExitRead),
    (Program::SysEnterWrite, Program::SysExitWrite),
    (Program::SysEnterRecvfrom, Program::SysExitRecvfrom),
    (Program::SysEnterSendto, Program::SysExitSendto),
    (Program::SysEnterClose, Program::SysExitClose),
];

/// Whether one kernel hook is running.
#[derive(Debug)]
pub struct HookStatus {
    /// `category/event` of the tracepoint, or `raw_tracepoint/<name>`.
    pub name: String,
    pub attached: bool,
    pub error: Option<HookError>,
}

/// One line per hook: its name and why it is not attached (or "attached").
pub(super) fn summary(hooks: &[HookStatus]) -> String {
    let mut summary = String::new();
    for h in hooks {
        let _ = match &h.error {
            Some(error) => writeln!(summary, "  {}: {error}", h.name),
            None => writeln!(summary, "  {}: attached", h.name),
        };
    }
    summary
}

impl Sensor {
    /// Every hook of the data path in use and the TCP hooks, attached or not, plus the
    /// data hooks of better paths that were tried and not attached (with the reason the
    /// sensor fell back).
    pub fn hooks(&self) -> &[HookStatus] {
        &self.hooks
    }

    /// Which hooks capture data.
    pub fn data_path(&self) -> DataPath {
        self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_cover_every_program_once() {
        let mut seen: Vec<u32> = HOOKS.iter().map(|h| h.index as u32).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..Program::TRACEPOINTS).collect::<Vec<_>>());
        for h in &HOOKS {
            let event = match h.attach {
                Attach::Tracepoint { event, .. } => event,
                Attach::Raw { tracepoint } => tracepoint,
            };
            assert_eq!(event, h.index.name());
        }
        // Each exit is attached before its enter.
        for (enter, exit) in DATA_PAIRS {
            let pos = |i| HOOKS.iter().position(|h| h.index == i);
            assert!(pos(exit) < pos(enter));
        }
        // The data paths come first, best first.
        let needed: Vec<Needed> = HOOKS.iter().map(|h| h.needed).take(3).collect();
        assert_eq!(needed, [Needed::Sock, Needed::Sock, Needed::Raw]);
        for path in [
            DataPath::SockTracepoints,
            DataPath::RawSysExit,
            DataPath::Classic,
        ] {
            // Every path attaches the TCP hooks and something that captures data.
            let on: Vec<&Hook> = HOOKS.iter().filter(|h| h.wanted_on(path)).collect();
            assert!(on.iter().any(|h| h.index == Program::InetSockSetState));
            assert!(on.iter().any(|h| h.needed != Needed::Always));
        }
    }
}
