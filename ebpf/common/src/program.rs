//! The kernel programs' slots: the index of their per-CPU counters and the `program`
//! of the records they emit.

wire_enum! {
    /// Index into the per-CPU [`ProgramCounters`] array: one slot per kernel program.
    pub enum Program {
        SysEnterRead = 0,
        SysExitRead = 1,
        SysEnterWrite = 2,
        SysExitWrite = 3,
        SysEnterRecvfrom = 4,
        SysExitRecvfrom = 5,
        SysEnterSendto = 6,
        SysExitSendto = 7,
        SysEnterClose = 8,
        InetSockSetState = 9,
        InetSkErrorReport = 10,
        TcpReceiveReset = 11,
        /// `syscalls/sys_exit_close`: only attached on the classic-tracepoint fallback
        /// path, where (without BTF) it ends the "inside close(2)" mark set at
        /// `sys_enter_close`.
        SysExitClose = 12,
        /// `raw_tracepoint/sys_exit`: the single program that replaces the eight classic
        /// read/write-family tracepoints. Its records and counters go to the slot of the
        /// syscall it handled (`SysExitRead`, ...); this slot only counts its own
        /// failures to read the saved user registers.
        RawSysExit = 13,
        /// `raw_tracepoint/sock_recv_length` and `raw_tracepoint/sock_send_length` (kernel
        /// 6.3 and later): socket I/O only, no syscall tracepoint at all. Records go to
        /// the slot of the syscall they came from; these slots count the programs' own
        /// failures.
        SockRecv = 14,
        SockSend = 15,
        /// Uprobes on Go's `crypto/tls.(*Conn)` methods in watched binaries: `Write`
        /// (entry), `Read` (entry, and each of its RET instructions), `Close` (entry).
        GoTlsWrite = 16,
        GoTlsRead = 17,
        GoTlsReadRet = 18,
        GoTlsClose = 19,
        /// Semantic sensor uprobes (emulated `push rbp` entries, see [`crate::SemProbe`]).
        SemH1WriteHeader = 20,
        SemH2WriteHeader = 21,
        SemNotFound = 22,
        SemUpgrade = 23,
        SemConnClose = 24,
    }
}

impl Program {
    /// Number of slots; size of the counters array.
    pub const COUNT: u32 = Program::ALL.len() as u32;

    /// Slots of the tracepoint programs (attached once at start); the uprobes follow.
    pub const TRACEPOINTS: u32 = Program::GoTlsWrite as u32;

    /// Stable name, used as the `program` metric label.
    pub const fn name(self) -> &'static str {
        NAMES[self as usize]
    }
}

const NAMES: [&str; Program::COUNT as usize] = [
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
    "sem_h1_write_header",
    "sem_h2_write_header",
    "sem_not_found",
    "sem_upgrade",
    "sem_conn_close",
];

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
    /// Inputs a program refused instead of guessing: a probe hit in a binary slot with
    /// no verified plan, a status code Go would reject, a caller outside the binary's code.
    pub anomalies: u64,
}

const _: () = {
    assert!(core::mem::size_of::<ProgramCounters>() == 40);
    // The slots index arrays: dense from 0, in declaration order.
    let mut i = 0;
    while i < Program::ALL.len() {
        assert!(Program::ALL[i] as usize == i);
        i += 1;
    }
};
