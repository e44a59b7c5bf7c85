//! The field offsets each tracepoint program reads, from this kernel's format files, and
//! the programs whose records this kernel lays out in a way they cannot read.

use std::{io, sync::Arc};

use routeskew_common::{
    Config, ErrorReportFields, Program, ReceiveResetFields, SetStateFields, SockTupleFields,
    DATA_CAP,
};

use super::{EventFormat, FormatError};

/// Where the kernel programs find their tracepoint fields on this kernel, and which
/// programs cannot run here (indexed by [`Program`]).
#[derive(Debug, Clone)]
pub struct Layout {
    pub config: Config,
    pub unusable: Vec<Option<Unusable>>,
}

impl Layout {
    pub fn unusable(&self, program: Program) -> Option<&Unusable> {
        self.unusable.get(program as usize).and_then(Option::as_ref)
    }
}

/// Why a tracepoint program cannot run on this kernel.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unusable {
    #[error("{category}/{event}: {source}")]
    Unreadable {
        category: &'static str,
        event: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    #[error("{category}/{event}: {source}")]
    Unparsable {
        category: &'static str,
        event: &'static str,
        #[source]
        source: FormatError,
    },
    /// A field is missing or has an unexpected size (the error names the event).
    #[error(transparent)]
    Field {
        #[from]
        source: FormatError,
    },
    #[error("{}: fd/buffer at offsets {fd}/{buf}, the other syscalls use {first_fd}/{first_buf}", program.name())]
    EnterOffsets {
        program: Program,
        fd: u32,
        buf: u32,
        first_fd: u32,
        first_buf: u32,
    },
    #[error("{}: ret at offset {ret}, the other syscalls use {first}", program.name())]
    ExitOffset {
        program: Program,
        ret: u32,
        first: u32,
    },
    #[error("sys_enter_close: fd at offset {fd}, the data syscalls use {first}")]
    CloseOffset { fd: u32, first: u32 },
    /// An enter program without its exit (or the reverse) captures nothing.
    #[error("needs {}", partner.name())]
    NeedsPartner { partner: Program },
    /// The TCP failure hooks only know sockets that `inet_sock_set_state` tracks.
    #[error("needs inet_sock_set_state ({source})")]
    NeedsSetState {
        #[source]
        source: Box<Unusable>,
    },
}

const PTR: &[u32] = &[8];
const WORD: &[u32] = &[8];
const FD: &[u32] = &[4, 8];
pub(super) const I32: &[u32] = &[4];
const U16: &[u32] = &[2];
pub(super) const V4: &[u32] = &[4];
pub(super) const V6: &[u32] = &[16];

/// Syscall pairs: (enter program, exit program, name of the buffer argument).
const DATA_SYSCALLS: [(Program, Program, &str); 4] = [
    (Program::SysEnterRead, Program::SysExitRead, "buf"),
    (Program::SysEnterWrite, Program::SysExitWrite, "buf"),
    (Program::SysEnterRecvfrom, Program::SysExitRecvfrom, "ubuf"),
    (Program::SysEnterSendto, Program::SysExitSendto, "buff"),
];

/// The tuple both `sock/*` records carry, in the order the fields are checked.
fn sock_tuple(f: &EventFormat) -> Result<SockTupleFields, FormatError> {
    Ok(SockTupleFields {
        sport: f.offset("sport", U16)?,
        dport: f.offset("dport", U16)?,
        family: f.offset("family", U16)?,
        protocol: f.offset("protocol", U16)?,
        daddr: f.offset("daddr", V4)?,
        daddr_v6: f.offset("daddr_v6", V6)?,
    })
}

/// Builds the kernel configuration from format files. `read(category, event)` returns the
/// text of `events/<category>/<event>/format`. `Config` holds a single offset per argument
/// for all four data syscalls, so a syscall whose record disagrees with the first one is
/// marked unusable rather than read at a wrong offset.
pub fn layout(read: impl Fn(&str, &str) -> io::Result<String>, capture_len: u32) -> Layout {
    let mut config = Config::DEFAULT;
    config.capture_len = capture_len.clamp(1, DATA_CAP as u32);
    let mut unusable: Vec<Option<Unusable>> = vec![None; Program::COUNT as usize];
    let format = |category: &'static str, event: &'static str| -> Result<EventFormat, Unusable> {
        let text = read(category, event).map_err(|e| Unusable::Unreadable {
            category,
            event,
            source: Arc::new(e),
        })?;
        EventFormat::parse(&text).map_err(|source| Unusable::Unparsable {
            category,
            event,
            source,
        })
    };

    let mut enter: Option<(u32, u32)> = None;
    let mut exit: Option<u32> = None;
    for (enter_prog, exit_prog, buf) in DATA_SYSCALLS {
        let offsets = format("syscalls", enter_prog.name())
            .and_then(|f| Ok((f.offset("fd", FD)?, f.offset(buf, PTR)?)));
        match (offsets, enter) {
            (Ok(o), None) => enter = Some(o),
            (Ok(o), Some(first)) if o == first => {}
            (Ok((fd, buf)), Some((first_fd, first_buf))) => {
                unusable[enter_prog as usize] = Some(Unusable::EnterOffsets {
                    program: enter_prog,
                    fd,
                    buf,
                    first_fd,
                    first_buf,
                });
            }
            (Err(e), _) => unusable[enter_prog as usize] = Some(e),
        }

        let ret = format("syscalls", exit_prog.name()).and_then(|f| Ok(f.offset("ret", WORD)?));
        match (ret, exit) {
            (Ok(r), None) => exit = Some(r),
            (Ok(r), Some(first)) if r == first => {}
            (Ok(ret), Some(first)) => {
                unusable[exit_prog as usize] = Some(Unusable::ExitOffset {
                    program: exit_prog,
                    ret,
                    first,
                });
            }
            (Err(e), _) => unusable[exit_prog as usize] = Some(e),
        }

        // An enter without its exit (or the reverse) captures nothing.
        let (e, x) = (enter_prog as usize, exit_prog as usize);
        if unusable[e].is_some() && unusable[x].is_none() {
            unusable[x] = Some(Unusable::NeedsPartner {
                partner: enter_prog,
            });
        } else if unusable[x].is_some() && unusable[e].is_none() {
            unusable[e] = Some(Unusable::NeedsPartner { partner: exit_prog });
        }
    }
    if let Some((fd, buf)) = enter {
        config.syscalls.enter_fd = fd;
        config.syscalls.enter_buf = buf;
    }
    if let Some(ret) = exit {
        config.syscalls.exit_ret = ret;
    }

    let close = format("syscalls", "sys_enter_close").and_then(|f| Ok(f.offset("fd", FD)?));
    match (close, enter) {
        (Ok(fd), Some((first, _))) if fd != first => {
            unusable[Program::SysEnterClose as usize] = Some(Unusable::CloseOffset { fd, first });
        }
        (Ok(fd), _) => config.syscalls.enter_fd = fd,
        (Err(e), _) => unusable[Program::SysEnterClose as usize] = Some(e),
    }

    let sss = format("sock", "inet_sock_set_state").and_then(|f| {
        Ok(SetStateFields {
            skaddr: f.offset("skaddr", PTR)?,
            oldstate: f.offset("oldstate", I32)?,
            newstate: f.offset("newstate", I32)?,
            tuple: sock_tuple(&f)?,
        })
    });
    match sss {
        Ok(fields) => config.set_state = fields,
        Err(e) => unusable[Program::InetSockSetState as usize] = Some(e),
    }

    let ser = format("sock", "inet_sk_error_report").and_then(|f| {
        Ok(ErrorReportFields {
            error: f.offset("error", I32)?,
            tuple: sock_tuple(&f)?,
        })
    });
    match ser {
        Ok(fields) => config.error_report = fields,
        Err(e) => unusable[Program::InetSkErrorReport as usize] = Some(e),
    }

    let trr = format("tcp", "tcp_receive_reset").and_then(|f| Ok(f.offset("skaddr", PTR)?));
    match trr {
        Ok(skaddr) => config.receive_reset = ReceiveResetFields { skaddr },
        Err(e) => unusable[Program::TcpReceiveReset as usize] = Some(e),
    }

    // Both TCP failure hooks only know sockets that inet_sock_set_state tracks.
    if let Some(why) = unusable[Program::InetSockSetState as usize].clone() {
        for p in [Program::InetSkErrorReport, Program::TcpReceiveReset] {
            unusable[p as usize].get_or_insert_with(|| Unusable::NeedsSetState {
                source: Box::new(why.clone()),
            });
        }
    }

    Layout { config, unusable }
}
