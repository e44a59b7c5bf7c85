//! Types that cross the kernel/user boundary.
//!
//! Every type is `#[repr(C)]`, laid out without implicit padding (explicit `_pad` fields
//! instead), and pinned by a compile-time size assertion, because the kernel programs and
//! the agent are built by different compilers for different targets and must agree
//! byte-for-byte.
#![no_std]

/// Bytes of a read/write buffer the kernel copies into one event. A power of two so the
/// kernel program can bound a variable length with a mask the verifier understands.
pub const DATA_CAP: usize = 1024;

/// Default number of leading bytes copied per captured buffer (the agent may lower it).
pub const DEFAULT_CAPTURE_LEN: u32 = DATA_CAP as u32;

/// Discriminant in [`EventHeader::kind`].
pub mod event_kind {
    /// A [`super::DataEvent`]: a buffer that starts an HTTP/1.x message.
    pub const DATA: u32 = 1;
    /// A [`super::CloseEvent`]: a tracked connection's fd was closed.
    pub const CLOSE: u32 = 2;
    /// An [`super::UpstreamEvent`]: an outgoing TCP connection failed.
    pub const UPSTREAM: u32 = 3;
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// Process id (thread-group id) that owns the socket.
    pub tgid: u32,
    pub tid: u32,
    /// Index of the program that produced the record (see [`program`]).
    pub program: u32,
    /// cgroup v2 id of the owning process.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

/// Which syscall direction produced a [`DataEvent`].
pub mod direction {
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
}

/// Which identity a [`DataEvent`] or [`CloseEvent`] gives its connection (its `source`).
pub mod conn_source {
    /// A socket fd of the process (`fd`), seen by the socket or syscall hooks.
    pub const FD: u32 = 0;
    /// A Go `*crypto/tls.Conn` of the process (`tls_conn`, its address), seen by the
    /// uprobes on its methods: the plaintext inside a TLS connection. Never the same
    /// connection as an fd record of the same process (that one carries ciphertext).
    pub const GO_TLS: u32 = 1;
}

/// In [`DataEvent::ahead`] (and in the kernel's per-connection state until the next
/// read): the byte in the low 8 bits belongs before `data`.
///
/// Go's `net/http` server reads one byte in the background while a handler runs (to
/// notice a client that went away); when the client's next request on a keep-alive
/// connection arrives before the handler is done, that byte is the request's first, and
/// the next read returns the rest (`ET / HTTP/1.1...`). On every data path (socket
/// hooks, syscall hooks, Go TLS uprobes) the kernel keeps such a byte with the state of a
/// connection that already carried captured HTTP, and judges the connection's next read
/// with it in front.
pub const READ_AHEAD: u32 = 0x100;

/// A prefix of a buffer that starts an HTTP/1.x request or response: passed through
/// read/write/recvfrom/sendto, or through Go's `crypto/tls.(*Conn).Read`/`Write`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub header: EventHeader,
    /// With [`conn_source::FD`]: the fd. With [`conn_source::GO_TLS`]: 0.
    pub fd: u32,
    /// [`direction::READ`] or [`direction::WRITE`].
    pub direction: u32,
    /// Bytes transferred (the syscall's or `Read`'s return value; the buffer length
    /// passed to `Write`).
    pub total_len: u64,
    /// Valid bytes at the start of `data` (`min(total_len, capture_len)`).
    pub captured_len: u32,
    /// [`conn_source`].
    pub source: u32,
    /// With [`conn_source::GO_TLS`]: the `*tls.Conn`.
    pub tls_conn: u64,
    /// [`READ_AHEAD`] `| byte` when the message's first byte came in an earlier 1-byte
    /// read (and is neither in `data` nor counted in `total_len`), else 0.
    pub ahead: u32,
    pub _pad: u32,
    pub data: [u8; DATA_CAP],
}

/// Flags in [`ConnState::flags`] and [`CloseEvent::flags`].
pub mod conn_flags {
    /// The connection answered or received `101 Switching Protocols`: its bytes are
    /// WebSocket frames now and are no longer copied.
    pub const UPGRADED: u32 = 1;
    /// The watched process wrote a request on it before anything else was captured: the
    /// far end is an upstream, so what the process reads from it are responses.
    pub const UPSTREAM: u32 = 2;
    /// Go TLS only: the process read the HTTP/2 client preface on it. Every later
    /// Read/Write is copied (up to the capture length), whatever it starts with: HPACK
    /// needs every header block of the connection, in order.
    pub const H2: u32 = 4;
    /// Socket path only: the first bytes judged on it were a TLS handshake record. The socket
    /// carries ciphertext (its plaintext, if any, comes from the Go crypto/tls uprobes),
    /// so nothing on it is looked at again and its close is not reported.
    pub const CIPHER: u32 = 8;
}

/// Emitted when a process closes an fd (or a Go TLS connection) that carried captured
/// HTTP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub fd: u32,
    pub flags: u32,
    /// [`conn_source`].
    pub source: u32,
    pub _pad: u32,
    /// With [`conn_source::GO_TLS`]: the `*tls.Conn`.
    pub tls_conn: u64,
}

/// Why an outgoing TCP connection failed. Values of [`UpstreamEvent::reason`].
pub mod upstream_reason {
    /// RST in answer to our SYN (ECONNREFUSED).
    pub const REFUSED: u32 = 1;
    /// SYN never answered: the kernel gave up (ETIMEDOUT) or the application closed the
    /// socket while it was still connecting.
    pub const TIMEOUT: u32 = 2;
    /// ICMP unreachable while connecting (EHOSTUNREACH, ENETUNREACH).
    pub const UNREACHABLE: u32 = 3;
    /// RST on an established outgoing connection (ECONNRESET).
    pub const RESET: u32 = 4;
}

/// A failure of a TCP connection that a watched process initiated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamEvent {
    /// `tgid` and `cgroup_id` are those of the process that called connect(), even when
    /// the failure is seen in softirq context.
    pub header: EventHeader,
    pub reason: u32,
    /// The socket error the kernel reported (0 when the socket just went away).
    pub errno: u32,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    pub _pad: u32,
    /// Destination address: 4 bytes for IPv4, 16 for IPv6.
    pub daddr: [u8; 16],
}

/// Value of the kernel's per-connection map on the socket-tracepoint path, keyed by the
/// `struct sock` address: the socket's owner and fd, so that its end (seen by
/// `inet_sock_set_state`, which knows only the socket) can be reported as a close of
/// that fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockConn {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub fd: u32,
    pub flags: u32,
    /// [`READ_AHEAD`] `| byte` kept from a 1-byte read, until the next read; else 0.
    pub ahead: u32,
}

/// Value of the kernel's per-connection maps keyed by [`ConnKey`] and [`TlsConnKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    pub flags: u32,
    /// [`READ_AHEAD`] `| byte` kept from a 1-byte read, until the next read; else 0.
    /// Kept here rather than in a map of its own so that a normal read, which looks the
    /// connection up anyway, pays one load and a branch for it.
    pub ahead: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Key of the kernel's per-connection map for Go TLS connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TlsConnKey {
    pub tgid: u32,
    pub _pad: u32,
    /// The `*tls.Conn`.
    pub conn: u64,
}

/// Key of an in-flight `crypto/tls.(*Conn).Read`: a goroutine (its `g`, from R14) of a
/// process. Goroutines move between threads while they block in `Read`, so the thread id
/// that entered may not be the one that returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoroutineKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// What `Read`'s entry leaves for its RET sites.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsRead {
    pub cgroup_id: u64,
    pub conn: u64,
    /// The plaintext buffer (`b`'s data pointer).
    pub buf: u64,
}

/// Indexes into the per-CPU [`ProgramCounters`] array: one slot per kernel program.
pub mod program {
    pub const SYS_ENTER_READ: u32 = 0;
    pub const SYS_EXIT_READ: u32 = 1;
    pub const SYS_ENTER_WRITE: u32 = 2;
    pub const SYS_EXIT_WRITE: u32 = 3;
    pub const SYS_ENTER_RECVFROM: u32 = 4;
    pub const SYS_EXIT_RECVFROM: u32 = 5;
    pub const SYS_ENTER_SENDTO: u32 = 6;
    pub const SYS_EXIT_SENDTO: u32 = 7;
    pub const SYS_ENTER_CLOSE: u32 = 8;
    pub const INET_SOCK_SET_STATE: u32 = 9;
    pub const INET_SK_ERROR_REPORT: u32 = 10;
    pub const TCP_RECEIVE_RESET: u32 = 11;
    /// `syscalls/sys_exit_close`: only attached on the classic-tracepoint fallback path,
    /// where (without BTF) it ends the "inside close(2)" mark set at `sys_enter_close`.
    pub const SYS_EXIT_CLOSE: u32 = 12;
    /// `raw_tracepoint/sys_exit`: the single program that replaces the eight classic
    /// read/write-family tracepoints. Its records and counters go to the slot of the
    /// syscall it handled (`SYS_EXIT_READ`, ...); this slot only counts its own failures
    /// to read the saved user registers.
    pub const RAW_SYS_EXIT: u32 = 13;
    /// `raw_tracepoint/sock_recv_length` and `raw_tracepoint/sock_send_length` (kernel
    /// 6.3 and later): socket I/O only, no syscall tracepoint at all. Records go to the
    /// slot of the syscall they came from; these slots count the programs' own failures.
    pub const SOCK_RECV: u32 = 14;
    pub const SOCK_SEND: u32 = 15;
    /// Uprobes on Go's `crypto/tls.(*Conn)` methods in watched binaries: `Write` (entry),
    /// `Read` (entry, and each of its RET instructions), `Close` (entry).
    pub const GO_TLS_WRITE: u32 = 16;
    pub const GO_TLS_READ: u32 = 17;
    pub const GO_TLS_READ_RET: u32 = 18;
    pub const GO_TLS_CLOSE: u32 = 19;
    /// Slots of the tracepoint programs (attached once at start); the uprobes follow.
    pub const TRACEPOINTS: u32 = 16;
    /// Number of slots; size of the counters array.
    pub const COUNT: u32 = 20;

    /// Stable names, used as the `program` metric label.
    pub const NAMES: [&str; COUNT as usize] = [
        "sys_enter_read",
        "sys_exit_read",
        "sys_enter_write",
        "sys_exit_write",
        "sys_enter_recvfrom",
        "sys_exit_recvfrom",
        "sys_enter_sendto",
        "sys_exit_sendto",
        "sys_enter_close",
        "inet_sock_set_state",
        "inet_sk_error_report",
        "tcp_receive_reset",
        "sys_exit_close",
        "sys_exit",
        "sock_recv_length",
        "sock_send_length",
        "go_tls_write",
        "go_tls_read",
        "go_tls_read_ret",
        "go_tls_close",
    ];
}

/// Per-program, per-CPU counters (summed over CPUs by the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramCounters {
    /// Records submitted to the ring buffer.
    pub emitted: u64,
    /// Records dropped because the ring buffer was full.
    pub lost: u64,
    /// `bpf_probe_read_user` failures (page not present, bad pointer).
    pub read_failures: u64,
    /// State maps that were full when an insert was attempted.
    pub map_full: u64,
}

/// Load-time configuration, written into the `CONFIG` global of the kernel object before
/// load. Tracepoint record offsets come from tracefs `format` files on the running kernel
/// (they are not stable across kernels), kernel struct offsets from its BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bytes to copy per buffer; at most [`DATA_CAP`].
    pub capture_len: u32,
    /// `syscalls/sys_enter_{read,write,recvfrom,sendto,close}`: offset of the fd argument.
    pub sys_enter_fd_off: u32,
    /// `syscalls/sys_enter_{read,write,recvfrom,sendto}`: offset of the buffer pointer.
    pub sys_enter_buf_off: u32,
    /// `syscalls/sys_exit_*`: offset of `ret`.
    pub sys_exit_ret_off: u32,
    /// `sock/inet_sock_set_state` field offsets.
    pub sss_skaddr_off: u32,
    pub sss_oldstate_off: u32,
    pub sss_newstate_off: u32,
    pub sss_dport_off: u32,
    pub sss_family_off: u32,
    pub sss_protocol_off: u32,
    pub sss_daddr_off: u32,
    pub sss_daddr_v6_off: u32,
    /// `sock/inet_sk_error_report` field offsets.
    ///
    /// Unused: no kernel's `inet_sk_error_report` record carries the socket address, so
    /// the kernel matches error reports to sockets by their address tuple instead (the
    /// `ser_*` and `sss_sport_off` fields below). Kept for layout stability; the agent
    /// writes 0.
    pub ser_skaddr_off: u32,
    pub ser_error_off: u32,
    /// `tcp/tcp_receive_reset` field offset.
    pub trr_skaddr_off: u32,
    pub _pad: u32,
    /// `sock/inet_sock_set_state`: offset of `sport`.
    pub sss_sport_off: u32,
    /// `sock/inet_sk_error_report` tuple field offsets.
    pub ser_sport_off: u32,
    pub ser_dport_off: u32,
    pub ser_family_off: u32,
    pub ser_protocol_off: u32,
    pub ser_daddr_off: u32,
    pub ser_daddr_v6_off: u32,
    pub _pad2: u32,
    /// With [`config_flags::REGS`]: offsets in `struct pt_regs` (from the running kernel's
    /// BTF) of the syscall number and of the first two arguments as they stay saved for
    /// the whole syscall (x86-64: `orig_ax`, `di`, `si`; arm64: `syscallno`, `orig_x0`,
    /// `regs[1]`). Read by the socket tracepoints, the raw `sys_exit` program and
    /// `inet_sock_set_state`. The number is read as 8 bytes and compared on its low 32
    /// bits.
    pub regs_nr_off: u32,
    pub regs_arg0_off: u32,
    pub regs_arg1_off: u32,
    /// Syscall numbers of the target architecture; [`NR_NONE`] when unknown (the hooks
    /// that read registers are then never attached).
    pub nr_read: u32,
    pub nr_write: u32,
    pub nr_close: u32,
    pub nr_recvfrom: u32,
    pub nr_sendto: u32,
    /// [`config_flags`] bits.
    pub flags: u32,
    /// Ring-buffer records are submitted without waking the reader (it drains on a
    /// timer) until this many bytes are waiting, then with a forced wakeup. 0 keeps the
    /// kernel's default (wake whenever the reader has caught up).
    pub wakeup_bytes: u32,
    /// With [`config_flags::CGROUP_BTF`]: offsets (from BTF) of `task_struct.cgroups`,
    /// `css_set.dfl_cgrp`, `cgroup.kn` and `kernfs_node.id`, the chain
    /// `bpf_get_current_cgroup_id()` follows, read with direct loads instead of the
    /// helper call (which costs as much as the rest of the filter).
    pub task_cgroups_off: u32,
    pub css_set_dfl_cgrp_off: u32,
    pub cgroup_kn_off: u32,
    pub kernfs_node_id_off: u32,
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
    /// The kernel has BTF and `Config::regs_*` are valid: `inet_sock_set_state` reads the
    /// current task's saved registers to tell whether it runs inside close(2), instead of
    /// relying on a mark set by a `sys_enter_close` tracepoint.
    pub const REGS: u32 = 2;
    /// `Config::task_cgroups_off` and the following offsets are valid.
    pub const CGROUP_BTF: u32 = 4;
}

impl Config {
    /// Offsets of the syscall and sock tracepoints (and of `struct pt_regs`) on x86-64
    /// kernels of the 5.x/6.x era. Only a placeholder for the object's `.rodata`: the
    /// agent always overwrites it with offsets parsed from the running kernel's tracefs
    /// and BTF, and with the syscall numbers of its architecture.
    pub const DEFAULT: Config = Config {
        capture_len: DEFAULT_CAPTURE_LEN,
        sys_enter_fd_off: 16,
        sys_enter_buf_off: 24,
        sys_exit_ret_off: 16,
        sss_skaddr_off: 8,
        sss_oldstate_off: 16,
        sss_newstate_off: 20,
        sss_dport_off: 26,
        sss_family_off: 28,
        sss_protocol_off: 30,
        sss_daddr_off: 36,
        sss_daddr_v6_off: 56,
        ser_skaddr_off: 0,
        ser_error_off: 8,
        trr_skaddr_off: 8,
        _pad: 0,
        sss_sport_off: 24,
        ser_sport_off: 12,
        ser_dport_off: 14,
        ser_family_off: 16,
        ser_protocol_off: 18,
        ser_daddr_off: 24,
        ser_daddr_v6_off: 44,
        _pad2: 0,
        regs_nr_off: 120,
        regs_arg0_off: 112,
        regs_arg1_off: 104,
        nr_read: NR_NONE,
        nr_write: NR_NONE,
        nr_close: NR_NONE,
        nr_recvfrom: NR_NONE,
        nr_sendto: NR_NONE,
        flags: 0,
        wakeup_bytes: 0,
        task_cgroups_off: 0,
        css_set_dfl_cgrp_off: 0,
        cgroup_kn_off: 0,
        kernfs_node_id_off: 0,
    };
}

/// State the kernel keeps for an outgoing TCP socket of a watched process, keyed by the
/// `struct sock` address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSock {
    pub cgroup_id: u64,
    pub tgid: u32,
    /// Last TCP state seen (TCP_SYN_SENT = 2, TCP_ESTABLISHED = 1, ...).
    pub state: u32,
    /// Set once a failure was emitted, so the final CLOSE does not report it twice.
    pub reported: u32,
    pub family: u16,
    pub dport: u16,
    pub daddr: [u8; 16],
}

/// Watched cgroups the kernel checks by a linear scan of one array element instead of a
/// hash lookup, as long as there are at most this many (a node runs a handful of
/// replicas).
pub const WATCHED_FAST: usize = 16;

/// The single element of the kernel's fast watched-cgroup set. `count` above
/// [`WATCHED_FAST`] means "too many: look in the hash map".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedSet {
    pub ids: [u64; WATCHED_FAST],
    /// Last, so that a concurrent reader of a half-written update sees the new ids no
    /// later than the new count.
    pub count: u32,
    pub _pad: u32,
}

/// Value of the per-thread map that carries a syscall's arguments from enter to exit
/// (classic-tracepoint fallback path only).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingIo {
    pub buf: u64,
    pub fd: u32,
    pub _pad: u32,
}

const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 32);
    assert!(core::mem::size_of::<DataEvent>() == 32 + 40 + DATA_CAP);
    assert!(core::mem::size_of::<CloseEvent>() == 56);
    assert!(core::mem::size_of::<TlsConnKey>() == 16);
    assert!(core::mem::size_of::<GoroutineKey>() == 16);
    assert!(core::mem::size_of::<TlsRead>() == 24);
    assert!(core::mem::size_of::<UpstreamEvent>() == 32 + 16 + 16);
    assert!(core::mem::size_of::<ConnState>() == 8);
    assert!(core::mem::size_of::<SockConn>() == 24);
    assert!(core::mem::size_of::<ConnKey>() == 8);
    assert!(core::mem::size_of::<ProgramCounters>() == 32);
    assert!(core::mem::size_of::<Config>() == 152);
    assert!(core::mem::size_of::<WatchedSet>() == 8 * WATCHED_FAST + 8);
    assert!(core::mem::size_of::<TcpSock>() == 40);
    assert!(core::mem::size_of::<PendingIo>() == 16);
    assert!(DATA_CAP.is_power_of_two());
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is #[repr(C)], Copy, has no padding (size assertions above) and
    // is valid for any bit pattern.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ConnState {}
    unsafe impl aya::Pod for super::SockConn {}
    unsafe impl aya::Pod for super::WatchedSet {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ProgramCounters {}
    unsafe impl aya::Pod for super::TcpSock {}
    unsafe impl aya::Pod for super::PendingIo {}
    unsafe impl aya::Pod for super::TlsConnKey {}
    unsafe impl aya::Pod for super::GoroutineKey {}
    unsafe impl aya::Pod for super::TlsRead {}
}
