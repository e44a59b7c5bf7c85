//! Maps shared by all programs, the `CONFIG` global and the per-program counters.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use routeskew_common::{
    Config, ConnKey, ConnState, GoHttpBinary, GoroutineKey, MissMark, PendingIo, Program,
    ProgramCounters, SemKey, SockConn, TcpSock, TlsConnKey, TlsRead, UpgradeMark, WatchedSet,
    SEM_BINARY_SLOTS, SEM_COUNT_KEYS, SEM_HOST_CAP, SEM_HOST_KEYS, SEM_PEER_KEYS,
};

/// Written by the agent at load time (`EbpfLoader::override_global`); the default is
/// only a placeholder.
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config::DEFAULT;

/// cgroup v2 ids of watched processes (value unused). Only consulted when
/// `WATCHED_SET` says there are too many for it.
#[map]
pub(crate) static WATCHED_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// The same ids while there are few of them, scanned linearly: an array lookup is
/// inlined by the verifier, a hash lookup is a call plus hashing and a bucket walk.
#[map]
pub(crate) static WATCHED_SET: Array<WatchedSet> = Array::with_max_entries(1, 0);

/// Arguments of an in-flight read/write syscall, keyed by pid_tgid. Only the classic
/// tracepoint fallback uses it: the raw `sys_exit` program reads the arguments from the
/// saved user registers instead. LRU so that entries of threads that never returned
/// cannot fill it.
#[map]
pub(crate) static PENDING_IO: LruHashMap<u64, PendingIo> = LruHashMap::with_max_entries(16384, 0);

/// Threads of watched processes that are inside close(2), keyed by pid_tgid (value: the
/// fd), on kernels without BTF only (with BTF the registers say which syscall a thread is
/// in). Set at `sys_enter_close`, removed at `sys_exit_close`; lets `inet_sock_set_state`
/// tell "the application gave up on a connect" from a failure the kernel detected (see
/// `tcp::owner_is_closing`). LRU so that threads killed inside close(2) cannot fill it.
#[map]
pub(crate) static CLOSING: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Connections (tgid, fd) that carried a captured HTTP message.
#[map]
pub(crate) static CONNS: LruHashMap<ConnKey, ConnState> = LruHashMap::with_max_entries(65536, 0);

/// Connections that carried a captured HTTP message, on the socket-tracepoint path: keyed
/// by `struct sock` address, so that a reused fd number never inherits a mark, and ended
/// by `inet_sock_set_state` (which reports the end as a close of the recorded fd).
#[map]
pub(crate) static SOCK_CONNS: LruHashMap<u64, SockConn> = LruHashMap::with_max_entries(65536, 0);

/// Go TLS connections that carried a captured HTTP message (their upgrade mark), ended
/// by the `crypto/tls.(*Conn).Close` uprobe. LRU: a connection Go dropped without
/// `Close` just ages out.
#[map]
pub(crate) static TLS_CONNS: LruHashMap<TlsConnKey, ConnState> =
    LruHashMap::with_max_entries(65536, 0);

/// In-flight `crypto/tls.(*Conn).Read` calls, from the entry uprobe to the RET-site
/// uprobes, by goroutine. LRU so that goroutines that never returned (killed process)
/// cannot fill it.
#[map]
pub(crate) static TLS_READS: LruHashMap<GoroutineKey, TlsRead> =
    LruHashMap::with_max_entries(16384, 0);

/// Outgoing TCP sockets of watched processes, keyed by `struct sock` address.
#[map]
pub(crate) static TCP_SOCKS: LruHashMap<u64, TcpSock> = LruHashMap::with_max_entries(16384, 0);

/// Event records for the agent. The agent may resize it at load time.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<ProgramCounters> =
    PerCpuArray::with_max_entries(Program::COUNT, 0);

/// Destination and source of a connection, as both `inet_sock_set_state` and
/// `inet_sk_error_report` report it. The error report has no socket address, so this is
/// how it is matched to the socket that just closed.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub(crate) family: u16,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) _pad: u16,
    pub(crate) daddr: [u8; 16],
}

/// A still-connecting socket the kernel just closed without a verdict yet. A failure
/// detected by the kernel (SYN timeout, ICMP on kernels >= 6.10) closes the socket and
/// reports the error right after, in the same call chain on the same CPU; whatever runs
/// next on this CPU either claims it (the matching error report) or flushes it.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SynClose {
    pub(crate) valid: u32,
    pub(crate) _pad: u32,
    pub(crate) ts_ns: u64,
    pub(crate) tuple: Tuple,
    pub(crate) sock: TcpSock,
}

/// An error report not yet matched to a socket (kernels < 6.10 report ICMP errors before
/// closing the socket).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SockErr {
    pub(crate) valid: u32,
    pub(crate) error: u32,
    pub(crate) tuple: Tuple,
}

#[map]
pub(crate) static SYN_CLOSE_SLOT: PerCpuArray<SynClose> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static SK_ERR_SLOT: PerCpuArray<SockErr> = PerCpuArray::with_max_entries(1, 0);

/// The semantic sensor's verified plan per watched Go binary; the uprobe cookie is the
/// slot.
#[map]
pub(crate) static SEM_BINARIES: Array<GoHttpBinary> = Array::with_max_entries(SEM_BINARY_SLOTS, 0);

/// Known hosts, by the FNV-1a hash of their normalised name (value: unused id), written
/// by the agent.
#[map]
pub(crate) static SEM_HOSTS: HashMap<u64, u32> = HashMap::with_max_entries(SEM_HOST_KEYS, 0);

/// Responses per (replica, host, status, flags), per CPU; the agent sums and folds them.
#[map]
pub(crate) static SEM_COUNTS: PerCpuHashMap<SemKey, u64> =
    PerCpuHashMap::with_max_entries(SEM_COUNT_KEYS, 0);

/// `NotFound` marks by goroutine, taken by the goroutine's next `WriteHeader(404)`. LRU:
/// a mark never taken (a panic between the two) ages out.
#[map]
pub(crate) static SEM_MISSES: LruHashMap<GoroutineKey, MissMark> =
    LruHashMap::with_max_entries(4096, 0);

/// Upgrades relayed by a goroutine, taken by its next `net.(*conn).Close` (the end of the
/// session). LRU: a mark whose close never came (a failed hijack) ages out.
#[map]
pub(crate) static SEM_UPGRADES: LruHashMap<GoroutineKey, UpgradeMark> =
    LruHashMap::with_max_entries(16384, 0);

/// Peer addresses (`Request.RemoteAddr` keys, see `peer_key`) of the agent's own open
/// connections to replicas, with what each is for (`sem_peer`); written by the agent
/// around each probe and housekeeping request.
#[map]
pub(crate) static SEM_PEERS: HashMap<u64, u32> = HashMap::with_max_entries(SEM_PEER_KEYS, 0);

/// `[0]`: non-zero while the agent has peers in `SEM_PEERS` worth looking up (its prober
/// runs): without it no response pays for reading `RemoteAddr`.
#[map]
pub(crate) static SEM_PEERS_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU scratch for a copied `Host` (too big for the 512-byte stack with the rest).
#[map]
pub(crate) static SEM_SCRATCH: PerCpuArray<[u8; SEM_HOST_CAP]> =
    PerCpuArray::with_max_entries(1, 0);

/// Counter slots touched by programs.
#[derive(Clone, Copy)]
pub(crate) enum Counter {
    Emitted,
    Lost,
    ReadFailure,
    MapFull,
    Anomaly,
}

#[inline(always)]
pub(crate) fn count(prog: Program, which: Counter) {
    if let Some(c) = COUNTERS.get_ptr_mut(prog as u32) {
        // Per-CPU slot: no other writer can race with this program on this CPU.
        unsafe {
            match which {
                Counter::Emitted => (*c).emitted += 1,
                Counter::Lost => (*c).lost += 1,
                Counter::ReadFailure => (*c).read_failures += 1,
                Counter::MapFull => (*c).map_full += 1,
                Counter::Anomaly => (*c).anomalies += 1,
            }
        }
    }
}

/// Flags for `bpf_ringbuf_submit`: wake the reader only once `CONFIG.wakeup_bytes` are
/// waiting. A wakeup is an irq_work plus a context switch into the agent; with the
/// kernel's default policy a reader that keeps up is woken for nearly every record. The
/// agent drains on a short timer as well, so records submitted silently still arrive
/// within one timer period.
#[inline(always)]
pub(crate) fn submit_flags() -> u64 {
    let threshold = cfg(&CONFIG.wakeup_bytes);
    if threshold == 0 {
        return 0;
    }
    if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= u64::from(threshold) {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Reads one `u32` of `CONFIG` without letting the compiler constant-fold the placeholder.
#[inline(always)]
pub(crate) fn cfg(field: &u32) -> u32 {
    unsafe { core::ptr::read_volatile(field) }
}
