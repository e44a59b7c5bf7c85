//! Load-time configuration of the kernel programs: what they must know about the running
//! kernel, grouped by what each part describes.

use crate::DEFAULT_CAPTURE_LEN;

/// Load-time configuration, written into the `CONFIG` global of the kernel object before
/// load. Tracepoint record offsets come from tracefs `format` files on the running kernel
/// (they are not stable across kernels), kernel struct offsets from its BTF.
///
/// Every member is a `u32` (or a struct of them), so the layout has no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bytes to copy per buffer; at most [`crate::DATA_CAP`].
    pub capture_len: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
    /// Ring-buffer records are submitted without waking the reader (it drains on a
    /// timer) until this many bytes are waiting, then with a forced wakeup. 0 keeps the
    /// kernel's default (wake whenever the reader has caught up).
    pub wakeup_bytes: u32,
    pub syscalls: SyscallFields,
    pub set_state: SetStateFields,
    pub error_report: ErrorReportFields,
    pub receive_reset: ReceiveResetFields,
    /// Valid with [`config_flags::REGS`].
    pub regs: RegOffsets,
    /// Valid with [`config_flags::REGS`].
    pub numbers: SyscallNumbers,
    /// Valid with [`config_flags::CGROUP_BTF`].
    pub cgroup: CgroupChain,
    /// Offset of `struct sock.sk_err` (from BTF), valid with [`config_flags::SK_ERR_BTF`]:
    /// the error a connect failed with is already stored there when the socket's
    /// `SYN_SENT -> CLOSE` transition is traced (on every kernel: it is written before
    /// `tcp_done`), so the transition is classified on its own, without pairing it with
    /// the `inet_sk_error_report` record.
    pub sock_err: u32,
}

/// Record offsets of the classic `syscalls/*` tracepoints (one for all data syscalls: the
/// agent disables a syscall whose record disagrees).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallFields {
    /// `sys_enter_{read,write,recvfrom,sendto,close}`: the fd argument.
    pub enter_fd: u32,
    /// `sys_enter_{read,write,recvfrom,sendto}`: the buffer pointer.
    pub enter_buf: u32,
    /// `sys_exit_*`: `ret`.
    pub exit_ret: u32,
}

/// Record offsets of the connection tuple both `sock/*` tracepoints carry after their own
/// fields, in the same order (`sport`, `dport`, `family`, `protocol`, then the IPv4 and
/// IPv6 destination addresses).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockTupleFields {
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub protocol: u32,
    pub daddr: u32,
    pub daddr_v6: u32,
}

/// Record offsets of `sock/inet_sock_set_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetStateFields {
    pub skaddr: u32,
    pub oldstate: u32,
    pub newstate: u32,
    pub tuple: SockTupleFields,
}

/// Record offsets of `sock/inet_sk_error_report`. The record has no socket address on
/// any kernel, so the kernel matches an error report to its socket by address tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorReportFields {
    pub error: u32,
    pub tuple: SockTupleFields,
}

/// Record offsets of `tcp/tcp_receive_reset`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveResetFields {
    pub skaddr: u32,
}

/// Offsets in `struct pt_regs` (from the running kernel's BTF) of the syscall number and
/// of the first two arguments as they stay saved for the whole syscall (x86-64:
/// `orig_ax`, `di`, `si`; arm64: `syscallno`, `orig_x0`, `regs[1]`). Read by the socket
/// tracepoints, the raw `sys_exit` program and `inet_sock_set_state`. The number is read
/// as 8 bytes and compared on its low 32 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegOffsets {
    pub nr: u32,
    pub arg0: u32,
    pub arg1: u32,
}

/// Syscall numbers of the target architecture; [`NR_NONE`] when unknown (the hooks that
/// read registers are then never attached).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallNumbers {
    pub read: u32,
    pub write: u32,
    pub close: u32,
    pub recvfrom: u32,
    pub sendto: u32,
}

/// Offsets (from BTF) of the pointer chain `bpf_get_current_cgroup_id()` follows:
/// `task_struct.cgroups -> css_set.dfl_cgrp -> cgroup.kn -> kernfs_node.id`, read with
/// direct loads instead of the helper call (which costs as much as the rest of the
/// filter).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupChain {
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
}

/// A syscall number no kernel uses: matches nothing.
pub const NR_NONE: u32 = u32::MAX;

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// Also report HTTP responses a watched process *reads* (answers from its upstreams).
    /// Off by default: the classifier works from client-side exchanges and upstream
    /// requests, and these are a third of all records. A `101` read from an upstream
    /// still marks the connection upgraded in the kernel either way.
    pub const UPSTREAM_RESPONSES: u32 = 1;
    /// The kernel has BTF and `Config::regs` and `Config::numbers` are valid:
    /// `inet_sock_set_state` reads the current task's saved registers to tell whether it
    /// runs inside close(2), instead of relying on a mark set by a `sys_enter_close`
    /// tracepoint.
    pub const REGS: u32 = 2;
    /// `Config::cgroup` is valid.
    pub const CGROUP_BTF: u32 = 4;
    /// `Config::sock_err` is valid.
    pub const SK_ERR_BTF: u32 = 8;
}

impl Config {
    /// Offsets of the syscall and sock tracepoints (and of `struct pt_regs`) on x86-64
    /// kernels of the 5.x/6.x era. Only a placeholder for the object's `.rodata`: the
    /// agent always overwrites it with offsets parsed from the running kernel's tracefs
    /// and BTF, and with the syscall numbers of its architecture.
    pub const DEFAULT: Config = Config {
        capture_len: DEFAULT_CAPTURE_LEN,
        flags: 0,
        wakeup_bytes: 0,
        syscalls: SyscallFields {
            enter_fd: 16,
            enter_buf: 24,
            exit_ret: 16,
        },
        set_state: SetStateFields {
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
        },
        error_report: ErrorReportFields {
            error: 8,
            tuple: SockTupleFields {
                sport: 12,
                dport: 14,
                family: 16,
                protocol: 18,
                daddr: 24,
                daddr_v6: 44,
            },
        },
        receive_reset: ReceiveResetFields { skaddr: 8 },
        regs: RegOffsets {
            nr: 120,
            arg0: 112,
            arg1: 104,
        },
        numbers: SyscallNumbers {
            read: NR_NONE,
            write: NR_NONE,
            close: NR_NONE,
            recvfrom: NR_NONE,
            sendto: NR_NONE,
        },
        cgroup: CgroupChain {
            task_cgroups: 0,
            css_set_dfl_cgrp: 0,
            cgroup_kn: 0,
            kernfs_node_id: 0,
        },
        sock_err: 0,
    };
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    // All u32: 4-byte aligned, no padding anywhere.
    assert!(align_of::<Config>() == 4);
    assert!(size_of::<SyscallFields>() == 3 * 4);
    assert!(size_of::<SockTupleFields>() == 6 * 4);
    assert!(size_of::<SetStateFields>() == 9 * 4);
    assert!(offset_of!(SetStateFields, tuple) == 3 * 4);
    assert!(size_of::<ErrorReportFields>() == 7 * 4);
    assert!(offset_of!(ErrorReportFields, tuple) == 4);
    assert!(size_of::<ReceiveResetFields>() == 4);
    assert!(size_of::<RegOffsets>() == 3 * 4);
    assert!(size_of::<SyscallNumbers>() == 5 * 4);
    assert!(size_of::<CgroupChain>() == 4 * 4);
    assert!(offset_of!(Config, syscalls) == 12);
    assert!(offset_of!(Config, set_state) == 24);
    assert!(offset_of!(Config, error_report) == 60);
    assert!(offset_of!(Config, receive_reset) == 88);
    assert!(offset_of!(Config, regs) == 92);
    assert!(offset_of!(Config, numbers) == 104);
    assert!(offset_of!(Config, cgroup) == 124);
    assert!(offset_of!(Config, sock_err) == 140);
    assert!(size_of::<Config>() == 144);
};
