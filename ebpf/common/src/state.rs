//! Keys and values of the kernel's maps.

/// Flags in [`ConnState::flags`], [`SockConn::flags`] and [`crate::CloseEvent::flags`]:
/// bits that combine, so plain `u32` constants rather than an enum.
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
    /// [`conn_flags`].
    pub flags: u32,
    /// [`crate::READ_AHEAD`] `| byte` kept from a 1-byte read, until the next read; else 0.
    pub ahead: u32,
}

/// Value of the kernel's per-connection maps keyed by [`ConnKey`] and [`TlsConnKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    /// [`conn_flags`].
    pub flags: u32,
    /// [`crate::READ_AHEAD`] `| byte` kept from a 1-byte read, until the next read; else 0.
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

/// State the kernel keeps for an outgoing TCP socket of a watched process, keyed by the
/// `struct sock` address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSock {
    pub cgroup_id: u64,
    pub tgid: u32,
    /// Last TCP state seen (TCP_SYN_SENT = 2, TCP_ESTABLISHED = 1, ...), as the kernel's
    /// tracepoint reports it.
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

/// How a watched cgroup's responses are seen (`WATCHED_CGROUPS` values).
pub mod watch_mode {
    /// Byte capture: the socket hooks and the Go TLS uprobes copy its HTTP.
    pub const BYTES: u32 = 1;
    /// The semantic sensor counts its responses; the byte-capture programs skip it.
    pub const SEMANTIC: u32 = 2;
}

/// The single element of the kernel's fast watched-cgroup set. `count` above
/// [`WATCHED_FAST`] means "too many: look in the hash map".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedSet {
    pub ids: [u64; WATCHED_FAST],
    /// Last, so that a concurrent reader of a half-written update sees the new ids no
    /// later than the new count.
    pub count: u32,
    /// Bit `i`: `ids[i]` is counted by the semantic sensor, not by byte capture.
    pub semantic_mask: u32,
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
    use core::mem::size_of;
    assert!(size_of::<TlsConnKey>() == 16);
    assert!(size_of::<GoroutineKey>() == 16);
    assert!(size_of::<TlsRead>() == 24);
    assert!(size_of::<ConnState>() == 8);
    assert!(size_of::<SockConn>() == 24);
    assert!(size_of::<ConnKey>() == 8);
    assert!(size_of::<WatchedSet>() == 8 * WATCHED_FAST + 8);
    assert!(size_of::<TcpSock>() == 40);
    assert!(size_of::<PendingIo>() == 16);
};
