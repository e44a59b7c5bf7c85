//! The format parser and the offset tables against format files of a real kernel.

use std::io;

use routeskew_common::{
    ErrorReportFields, Program, ReceiveResetFields, SetStateFields, SockTupleFields, SyscallFields,
    DATA_CAP,
};

use super::{
    layout,
    offsets::{I32, V4, V6},
    EventFormat, FormatError, Unusable,
};

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
            tuple: SockTupleFields {
                sport: 24,
                dport: 26,
                family: 28,
                protocol: 30,
                daddr: 36,
                daddr_v6: 56,
            },
        }
    );
    // No skaddr in this record on any kernel: matched by tuple instead.
    assert_eq!(
        c.error_report,
        ErrorReportFields {
            error: 8,
            tuple: SockTupleFields {
                sport: 12,
                dport: 14,
                family: 16,
                protocol: 18,
                daddr: 24,
                daddr_v6: 44,
            },
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
    assert!(
        matches!(
            why,
            Unusable::EnterOffsets {
                program: Program::SysEnterSendto,
                fd: 16,
                buf: 32,
                first_fd: 16,
                first_buf: 24,
            }
        ),
        "{why:?}"
    );
    assert_eq!(
        why.to_string(),
        "sys_enter_sendto: fd/buffer at offsets 16/32, the other syscalls use 16/24"
    );
    assert!(matches!(
        l.unusable(Program::SysExitSendto),
        Some(Unusable::NeedsPartner {
            partner: Program::SysEnterSendto
        })
    ));
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
    assert!(matches!(
        l.unusable(Program::TcpReceiveReset),
        Some(Unusable::Unreadable {
            category: "tcp",
            event: "tcp_receive_reset",
            ..
        })
    ));
    let why = l.unusable(Program::InetSkErrorReport).expect("bad size");
    assert!(
        matches!(
            why,
            Unusable::Field {
                source: FormatError::FieldSize { size: 8, .. }
            }
        ),
        "{why:?}"
    );
    let why = why.to_string();
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
    let why = l.unusable(Program::TcpReceiveReset).expect("unusable");
    assert!(
        why.to_string()
            .starts_with("needs inet_sock_set_state (sock/inet_sock_set_state: "),
        "{why}"
    );
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
