//! tracefs: finding (or mounting) it, and turning the running kernel's tracepoint `format`
//! files into the offsets the kernel programs read their records with.
//!
//! Tracepoint record layouts change between kernel versions and aya-ebpf has no CO-RE, so
//! the offsets compiled into the object are placeholders; these are the real ones.

use std::{
    ffi::CString,
    fmt, io,
    path::{Path, PathBuf},
    sync::Mutex,
};

use routeskew_common::{
    Config, ErrorReportFields, Program, ReceiveResetFields, SetStateFields, DATA_CAP,
};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS: &str = "/sys/kernel/debug";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("line {line}: cannot parse tracepoint field `{text}`")]
    BadField { line: usize, text: String },
    #[error("no `name:` line")]
    NoName,
    #[error("{event}: no field `{field}`")]
    MissingField { event: String, field: String },
    #[error("{event}: field `{field}` is {size} bytes, expected {expected:?}")]
    FieldSize {
        event: String,
        field: String,
        size: u32,
        expected: &'static [u32],
    },
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

/// A parsed `events/<category>/<name>/format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    pub name: String,
    pub fields: Vec<Field>,
}

impl EventFormat {
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut name = None;
        let mut fields = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if let Some(n) = line.strip_prefix("name:") {
                name = Some(n.trim().to_owned());
            } else if line.starts_with("field:") {
                let field = parse_field(line).ok_or_else(|| FormatError::BadField {
                    line: i + 1,
                    text: line.to_owned(),
                })?;
                fields.push(field);
            }
        }
        Ok(EventFormat {
            name: name.ok_or(FormatError::NoName)?,
            fields,
        })
    }

    /// Offset of `field`, checking its size is one the kernel program can read.
    pub fn offset(&self, field: &str, sizes: &'static [u32]) -> Result<u32, FormatError> {
        let f = self
            .fields
            .iter()
            .find(|f| f.name == field)
            .ok_or_else(|| FormatError::MissingField {
                event: self.name.clone(),
                field: field.to_owned(),
            })?;
        if !sizes.contains(&f.size) {
            return Err(FormatError::FieldSize {
                event: self.name.clone(),
                field: field.to_owned(),
                size: f.size,
                expected: sizes,
            });
        }
        Ok(f.offset)
    }
}

/// `field:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;`
fn parse_field(line: &str) -> Option<Field> {
    let mut parts = line.split(';').map(str::trim);
    let decl = parts.next()?.strip_prefix("field:")?;
    let last = decl.split_whitespace().next_back()?;
    let name = last.split('[').next()?.trim_start_matches('*');
    if name.is_empty() {
        return None;
    }
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in parts {
        if let Some((key, value)) = part.split_once(':') {
            let value = value.trim();
            match key.trim() {
                "offset" => offset = value.parse().ok(),
                "size" => size = value.parse().ok(),
                "signed" => signed = value == "1",
                _ => {}
            }
        }
    }
    Some(Field {
        name: name.to_owned(),
        offset: offset?,
        size: size?,
        signed,
    })
}

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
const I32: &[u32] = &[4];
const U16: &[u32] = &[2];
const V4: &[u32] = &[4];
const V6: &[u32] = &[16];

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

/// Why tracefs could not be found or mounted: one entry per attempt.
#[derive(Debug)]
pub struct MountAttempts(Vec<String>);

impl fmt::Display for MountAttempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

fn has_events(root: &Path) -> bool {
    root.join("events").is_dir()
}

fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let (source, target, fstype) = (c(source)?, c(target)?, c(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; no
    // mount data is passed.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The tracefs root (`/sys/kernel/tracing` or `/sys/kernel/debug/tracing`), mounting
/// tracefs when neither is populated: many hosts (and minimal containers) do not mount it.
pub fn ensure_tracefs() -> Result<PathBuf, MountAttempts> {
    // Concurrent starts in one process must not stack mounts on each other.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());

    for root in [TRACEFS, DEBUGFS_TRACING] {
        if has_events(Path::new(root)) {
            return Ok(PathBuf::from(root));
        }
    }
    let mut attempts = Vec::new();
    match mount("nodev", TRACEFS, "tracefs") {
        Ok(()) if has_events(Path::new(TRACEFS)) => {
            tracing::info!(path = TRACEFS, "mounted tracefs");
            return Ok(PathBuf::from(TRACEFS));
        }
        Ok(()) => attempts.push(format!(
            "mounted tracefs on {TRACEFS} but it has no events/"
        )),
        Err(e) => attempts.push(format!("mount -t tracefs nodev {TRACEFS}: {e}")),
    }
    if !Path::new(DEBUGFS_TRACING).is_dir() {
        // debugfs exposes tracefs under tracing/ (automounted on access).
        if let Err(e) = mount("nodev", DEBUGFS, "debugfs") {
            attempts.push(format!("mount -t debugfs nodev {DEBUGFS}: {e}"));
        }
    }
    if has_events(Path::new(DEBUGFS_TRACING)) {
        tracing::info!(path = DEBUGFS_TRACING, "using tracefs under debugfs");
        return Ok(PathBuf::from(DEBUGFS_TRACING));
    }
    match mount("nodev", DEBUGFS_TRACING, "tracefs") {
        Ok(()) if has_events(Path::new(DEBUGFS_TRACING)) => {
            tracing::info!(path = DEBUGFS_TRACING, "mounted tracefs");
            Ok(PathBuf::from(DEBUGFS_TRACING))
        }
        Ok(()) => {
            attempts.push(format!(
                "mounted tracefs on {DEBUGFS_TRACING} but it has no events/"
            ));
            Err(MountAttempts(attempts))
        }
        Err(e) => {
            attempts.push(format!("mount -t tracefs nodev {DEBUGFS_TRACING}: {e}"));
            Err(MountAttempts(attempts))
        }
    }
}

#[cfg(test)]
mod tests {
    use routeskew_common::SyscallFields;

    use super::*;

    // Copied from the 6.18 kernel this project is developed on.
    fn fixture(category: &str, event: &str) -> io::Result<String> {
        let text = match (category, event) {
            ("syscalls", "sys_enter_read") => include_str!("fixtures/sys_enter_read.format"),
            ("syscalls", "sys_exit_read") => include_str!("fixtures/sys_exit_read.format"),
            ("syscalls", "sys_enter_write") => include_str!("fixtures/sys_enter_write.format"),
            ("syscalls", "sys_exit_write") => include_str!("fixtures/sys_exit_write.format"),
            ("syscalls", "sys_enter_recvfrom") => {
                include_str!("fixtures/sys_enter_recvfrom.format")
            }
            ("syscalls", "sys_exit_recvfrom") => include_str!("fixtures/sys_exit_recvfrom.format"),
            ("syscalls", "sys_enter_sendto") => include_str!("fixtures/sys_enter_sendto.format"),
            ("syscalls", "sys_exit_sendto") => include_str!("fixtures/sys_exit_sendto.format"),
            ("syscalls", "sys_enter_close") => include_str!("fixtures/sys_enter_close.format"),
            ("sock", "inet_sock_set_state") => include_str!("fixtures/inet_sock_set_state.format"),
            ("sock", "inet_sk_error_report") => {
                include_str!("fixtures/inet_sk_error_report.format")
            }
            ("tcp", "tcp_receive_reset") => include_str!("fixtures/tcp_receive_reset.format"),
            _ => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        Ok(text.to_owned())
    }

    #[test]
    fn parses_fields_with_pointers_and_arrays() {
        let f = EventFormat::parse(&fixture("syscalls", "sys_enter_write").expect("fixture"))
            .expect("parse");
        assert_eq!(f.name, "sys_enter_write");
        let buf = f.fields.iter().find(|f| f.name == "buf").expect("buf");
        assert_eq!((buf.offset, buf.size, buf.signed), (24, 8, false));
        let f = EventFormat::parse(&fixture("sock", "inet_sock_set_state").expect("fixture"))
            .expect("parse");
        assert_eq!(f.offset("daddr_v6", V6), Ok(56));
        assert_eq!(f.offset("saddr", V4), Ok(32));
        let old = f
            .fields
            .iter()
            .find(|f| f.name == "oldstate")
            .expect("oldstate");
        assert!(old.signed);
        assert_eq!(f.fields[0].name, "common_type");
    }

    #[test]
    fn layout_of_this_kernel() {
        let l = layout(fixture, 512);
        assert!(l.unusable.iter().all(Option::is_none), "{:?}", l.unusable);
        let c = l.config;
        assert_eq!(c.capture_len, 512);
        assert_eq!(
            c.syscalls,
            SyscallFields {
                enter_fd: 16,
                enter_buf: 24,
                exit_ret: 16
            }
        );
        assert_eq!(
            c.set_state,
            SetStateFields {
                skaddr: 8,
                oldstate: 16,
                newstate: 20,
                sport: 24,
                dport: 26,
                family: 28,
                protocol: 30,
                daddr: 36,
                daddr_v6: 56,
            }
        );
        // No skaddr in this record on any kernel: matched by tuple instead.
        assert_eq!(
            c.error_report,
            ErrorReportFields {
                error: 8,
                sport: 12,
                dport: 14,
                family: 16,
                protocol: 18,
                daddr: 24,
                daddr_v6: 44,
            }
        );
        assert_eq!(c.receive_reset, ReceiveResetFields { skaddr: 8 });
    }

    #[test]
    fn capture_len_is_clamped() {
        assert_eq!(layout(fixture, 0).config.capture_len, 1);
        assert_eq!(layout(fixture, 1 << 20).config.capture_len, DATA_CAP as u32);
    }

    #[test]
    fn disagreeing_syscall_disables_only_its_pair() {
        let shifted = |c: &str, e: &str| {
            let text = fixture(c, e)?;
            Ok(if e == "sys_enter_sendto" {
                text.replace("buff;\toffset:24;", "buff;\toffset:32;")
            } else {
                text
            })
        };
        let l = layout(shifted, 1024);
        let why = l
            .unusable(Program::SysEnterSendto)
            .expect("sendto unusable");
        assert!(why.contains("32"), "{why}");
        assert!(l.unusable(Program::SysExitSendto).is_some());
        assert!(l.unusable(Program::SysEnterRead).is_none());
        assert!(l.unusable(Program::SysExitRead).is_none());
        assert_eq!(l.config.syscalls.enter_buf, 24);
    }

    #[test]
    fn missing_events_and_bad_sizes_are_reported_per_program() {
        let partial = |c: &str, e: &str| match e {
            "tcp_receive_reset" => Err(io::Error::from(io::ErrorKind::NotFound)),
            "inet_sk_error_report" => Ok(fixture(c, e)?.replace(
                "int error;\toffset:8;\tsize:4;",
                "int error;\toffset:8;\tsize:8;",
            )),
            _ => fixture(c, e),
        };
        let l = layout(partial, 1024);
        assert!(l.unusable(Program::TcpReceiveReset).is_some());
        let why = l.unusable(Program::InetSkErrorReport).expect("bad size");
        assert!(why.contains("error") && why.contains("8 bytes"), "{why}");
        assert!(l.unusable(Program::InetSockSetState).is_none());
        assert!(l.unusable(Program::SysExitWrite).is_none());
    }

    #[test]
    fn set_state_missing_disables_tcp_family() {
        let no_sss = |c: &str, e: &str| {
            if e == "inet_sock_set_state" {
                Err(io::Error::from(io::ErrorKind::NotFound))
            } else {
                fixture(c, e)
            }
        };
        let l = layout(no_sss, 1024);
        for p in [
            Program::InetSockSetState,
            Program::InetSkErrorReport,
            Program::TcpReceiveReset,
        ] {
            assert!(l.unusable(p).is_some(), "program {p:?}");
        }
        assert!(l.unusable(Program::SysEnterClose).is_none());
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(EventFormat::parse("format:\n"), Err(FormatError::NoName));
        assert!(matches!(
            EventFormat::parse("name: x\n\tfield:int a;\toffset:zz;\tsize:4;\n"),
            Err(FormatError::BadField { line: 2, .. })
        ));
        let f = EventFormat::parse("name: x\n\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n")
            .expect("parse");
        assert!(matches!(
            f.offset("b", I32),
            Err(FormatError::MissingField { .. })
        ));
    }
}
