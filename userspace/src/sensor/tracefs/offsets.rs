//! The field offsets each tracepoint program reads, from this kernel's format files, and
//! the programs whose records this kernel lays out in a way they cannot read.

use std::io;

use routeskew_common::{
    Config, ErrorReportFields, Program, ReceiveResetFields, SetStateFields, DATA_CAP,
};

use super::EventFormat;

/// Where the kernel programs find their tracepoint fields on this kernel, and which
/// programs cannot run here (indexed by [`Program`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub config: Config,
    pub unusable: Vec<Option<String>>,
}

impl Layout {
    pub fn unusable(&self, program: Program) -> Option<&str> {
        self.unusable
            .get(program as usize)
            .and_then(|u| u.as_deref())
    }
}

const PTR: &[u32] = &[8];
const WORD: &[u32] = &[8];
const FD: &[u32] = &[4, 8];
pub(super) const I32: &[u32] = &[4];
const U16: &[u32] = &[2];
pub(super) const V4: &[u32] = &[4];
pub(super) const V6: &[u32] = &[16];

/// Syscall pairs: (enter program, exit program, syscall, name of the buffer argument).
const DATA_SYSCALLS: [(Program, Program, &str, &str); 4] = [
    (Program::SysEnterRead, Program::SysExitRead, "read", "buf"),
    (
        Program::SysEnterWrite,
        Program::SysExitWrite,
        "write",
        "buf",
    ),
    (
        Program::SysEnterRecvfrom,
        Program::SysExitRecvfrom,
        "recvfrom",
        "ubuf",
    ),
    (
        Program::SysEnterSendto,
        Program::SysExitSendto,
        "sendto",
        "buff",
    ),
];

/// Builds the kernel configuration from format files. `read(category, event)` returns the
/// text of `events/<category>/<event>/format`. `Config` holds a single offset per argument
/// for all four data syscalls, so a syscall whose record disagrees with the first one is
/// marked unusable rather than read at a wrong offset.
pub fn layout(read: impl Fn(&str, &str) -> io::Result<String>, capture_len: u32) -> Layout {
    let mut config = Config::DEFAULT;
    config.capture_len = capture_len.clamp(1, DATA_CAP as u32);
    let mut unusable: Vec<Option<String>> = vec![None; Program::COUNT as usize];
    let format = |category: &str, event: &str| -> Result<EventFormat, String> {
        let text = read(category, event).map_err(|e| format!("{category}/{event}: {e}"))?;
        EventFormat::parse(&text).map_err(|e| format!("{category}/{event}: {e}"))
    };

    let mut enter: Option<(u32, u32)> = None;
    let mut exit: Option<u32> = None;
    for (enter_prog, exit_prog, syscall, buf) in DATA_SYSCALLS {
        let event = format!("sys_enter_{syscall}");
        let offsets = format("syscalls", &event).and_then(|f| {
            let fd = f.offset("fd", FD).map_err(|e| e.to_string())?;
            let buf = f.offset(buf, PTR).map_err(|e| e.to_string())?;
            Ok((fd, buf))
        });
        match (offsets, enter) {
            (Ok(o), None) => enter = Some(o),
            (Ok(o), Some(first)) if o == first => {}
            (Ok(o), Some(first)) => {
                unusable[enter_prog as usize] = Some(format!(
                    "{event}: fd/buffer at offsets {}/{}, the other syscalls use {}/{}",
                    o.0, o.1, first.0, first.1
                ));
            }
            (Err(e), _) => unusable[enter_prog as usize] = Some(e),
        }

        let event = format!("sys_exit_{syscall}");
        let ret = format("syscalls", &event)
            .and_then(|f| f.offset("ret", WORD).map_err(|e| e.to_string()));
        match (ret, exit) {
            (Ok(r), None) => exit = Some(r),
            (Ok(r), Some(first)) if r == first => {}
            (Ok(r), Some(first)) => {
                unusable[exit_prog as usize] = Some(format!(
                    "{event}: ret at offset {r}, the other syscalls use {first}"
                ));
            }
            (Err(e), _) => unusable[exit_prog as usize] = Some(e),
        }

        // An enter without its exit (or the reverse) captures nothing.
        let (e, x) = (enter_prog as usize, exit_prog as usize);
        if unusable[e].is_some() && unusable[x].is_none() {
            unusable[x] = Some(format!("needs sys_enter_{syscall}"));
        } else if unusable[x].is_some() && unusable[e].is_none() {
            unusable[e] = Some(format!("needs sys_exit_{syscall}"));
        }
    }
    if let Some((fd, buf)) = enter {
        config.syscalls.enter_fd = fd;
        config.syscalls.enter_buf = buf;
    }
    if let Some(ret) = exit {
        config.syscalls.exit_ret = ret;
    }

    let close = format("syscalls", "sys_enter_close")
        .and_then(|f| f.offset("fd", FD).map_err(|e| e.to_string()));
    match (close, enter) {
        (Ok(fd), Some((first, _))) if fd != first => {
            unusable[Program::SysEnterClose as usize] = Some(format!(
                "sys_enter_close: fd at offset {fd}, the data syscalls use {first}"
            ));
        }
        (Ok(fd), _) => config.syscalls.enter_fd = fd,
        (Err(e), _) => unusable[Program::SysEnterClose as usize] = Some(e),
    }

    let sss = format("sock", "inet_sock_set_state").and_then(|f| {
        let o = |name: &str, sizes| f.offset(name, sizes).map_err(|e| e.to_string());
        Ok(SetStateFields {
            skaddr: o("skaddr", PTR)?,
            oldstate: o("oldstate", I32)?,
            newstate: o("newstate", I32)?,
            sport: o("sport", U16)?,
            dport: o("dport", U16)?,
            family: o("family", U16)?,
            protocol: o("protocol", U16)?,
            daddr: o("daddr", V4)?,
            daddr_v6: o("daddr_v6", V6)?,
        })
    });
    match sss {
        Ok(fields) => config.set_state = fields,
        Err(e) => unusable[Program::InetSockSetState as usize] = Some(e),
    }

    let ser = format("sock", "inet_sk_error_report").and_then(|f| {
        let o = |name: &str, sizes| f.offset(name, sizes).map_err(|e| e.to_string());
        Ok(ErrorReportFields {
            error: o("error", I32)?,
            sport: o("sport", U16)?,
            dport: o("dport", U16)?,
            family: o("family", U16)?,
            protocol: o("protocol", U16)?,
            daddr: o("daddr", V4)?,
            daddr_v6: o("daddr_v6", V6)?,
        })
    });
    match ser {
        Ok(fields) => config.error_report = fields,
        Err(e) => unusable[Program::InetSkErrorReport as usize] = Some(e),
    }

    let trr = format("tcp", "tcp_receive_reset")
        .and_then(|f| f.offset("skaddr", PTR).map_err(|e| e.to_string()));
    match trr {
        Ok(skaddr) => config.receive_reset = ReceiveResetFields { skaddr },
        Err(e) => unusable[Program::TcpReceiveReset as usize] = Some(e),
    }

    // Both TCP failure hooks only know sockets that inet_sock_set_state tracks.
    if let Some(why) = unusable[Program::InetSockSetState as usize].clone() {
        for p in [Program::InetSkErrorReport, Program::TcpReceiveReset] {
            unusable[p as usize]
                .get_or_insert_with(|| format!("needs inet_sock_set_state ({why})"));
        }
    }

    Layout { config, unusable }
}
