//! Ring-buffer records and the discriminants in them.

use crate::DATA_CAP;

wire_enum! {
    /// What follows an [`EventHeader`]: the value of [`EventHeader::kind`].
    pub enum RecordKind {
        /// A [`DataEvent`]: a buffer that starts an HTTP/1.x message.
        Data = 1,
        /// A [`CloseEvent`]: a tracked connection's fd was closed.
        Close = 2,
        /// An [`UpstreamEvent`]: an outgoing TCP connection failed.
        Upstream = 3,
        /// A [`HeadEvent`]: the semantic sensor's copy of a request head it answered
        /// with 300 or more.
        Head = 4,
        /// A [`WsClosedEvent`]: a WebSocket session the semantic sensor saw upgraded ended.
        WsClosed = 5,
    }
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// [`RecordKind`].
    pub kind: u32,
    /// Process id (thread-group id) that owns the socket.
    pub tgid: u32,
    pub tid: u32,
    /// Slot of the program that produced the record ([`crate::Program`]).
    pub program: u32,
    /// cgroup v2 id of the owning process.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

wire_enum! {
    /// Which syscall direction produced a [`DataEvent`]: the value of
    /// [`DataEvent::direction`].
    pub enum Direction {
        Read = 0,
        Write = 1,
    }
}

wire_enum! {
    /// Which identity a [`DataEvent`] or [`CloseEvent`] gives its connection (its
    /// `source`).
    pub enum ConnSource {
        /// A socket fd of the process (`fd`), seen by the socket or syscall hooks.
        Fd = 0,
        /// A Go `*crypto/tls.Conn` of the process (`tls_conn`, its address), seen by the
        /// uprobes on its methods: the plaintext inside a TLS connection. Never the same
        /// connection as an fd record of the same process (that one carries ciphertext).
        GoTls = 1,
    }
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
    /// With [`ConnSource::Fd`]: the fd. With [`ConnSource::GoTls`]: 0.
    pub fd: u32,
    /// [`Direction`].
    pub direction: u32,
    /// Bytes transferred (the syscall's or `Read`'s return value; the buffer length
    /// passed to `Write`).
    pub total_len: u64,
    /// Valid bytes at the start of `data` (`min(total_len, capture_len)`).
    pub captured_len: u32,
    /// [`ConnSource`].
    pub source: u32,
    /// With [`ConnSource::GoTls`]: the `*tls.Conn`.
    pub tls_conn: u64,
    /// [`READ_AHEAD`] `| byte` when the message's first byte came in an earlier 1-byte
    /// read (and is neither in `data` nor counted in `total_len`), else 0.
    pub ahead: u32,
    pub _pad: u32,
    pub data: [u8; DATA_CAP],
}

/// Emitted when a process closes an fd (or a Go TLS connection) that carried captured
/// HTTP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub fd: u32,
    /// [`crate::conn_flags`] of the connection.
    pub flags: u32,
    /// [`ConnSource`].
    pub source: u32,
    pub _pad: u32,
    /// With [`ConnSource::GoTls`]: the `*tls.Conn`.
    pub tls_conn: u64,
}

wire_enum! {
    /// Why an outgoing TCP connection failed: the value of [`UpstreamEvent::reason`].
    pub enum UpstreamReason {
        /// RST in answer to our SYN (ECONNREFUSED).
        Refused = 1,
        /// SYN never answered: the kernel gave up (ETIMEDOUT) or the application closed
        /// the socket while it was still connecting.
        Timeout = 2,
        /// ICMP unreachable while connecting (EHOSTUNREACH, ENETUNREACH).
        Unreachable = 3,
        /// RST on an established outgoing connection (ECONNRESET).
        Reset = 4,
    }
}

/// A failure of a TCP connection that a watched process initiated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamEvent {
    /// `tgid` and `cgroup_id` are those of the process that called connect(), even when
    /// the failure is seen in softirq context.
    pub header: EventHeader,
    /// [`UpstreamReason`].
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

/// The head of an HTTP/1.x `GET` a watched Go server answered with a status of 300 or
/// more (not 304), as its connection's read buffer holds it: the semantic sensor's only
/// per-response record, and only for such answers (see
/// [`SEM_HEAD_CAP`](crate::SEM_HEAD_CAP)).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadEvent {
    pub header: EventHeader,
    /// [`SemKey::host_hash`](crate::SemKey::host_hash) of the request's `Host`.
    pub host_hash: u64,
    /// The status written.
    pub status: u16,
    /// [`sem_flags`](crate::sem_flags) of the response.
    pub flags: u16,
    /// Bytes of `head` that hold the buffer's read bytes.
    pub len: u32,
    pub head: [u8; crate::SEM_HEAD_CAP],
}

/// The end of a WebSocket session a watched Go server relayed (passive traffic only):
/// one record per session.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsClosedEvent {
    pub header: EventHeader,
    /// [`SemKey::host_hash`](crate::SemKey::host_hash) of the upgrade request.
    pub host_hash: u64,
    /// From the upgrade's relay to the close of the client connection.
    pub open_ns: u64,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<WsClosedEvent>() == 48);
    assert!(size_of::<HeadEvent>() == 32 + 16 + crate::SEM_HEAD_CAP);
    assert!(offset_of!(HeadEvent, head) == 48);
    assert!(size_of::<EventHeader>() == 32);
    assert!(size_of::<DataEvent>() == 32 + 40 + DATA_CAP);
    assert!(offset_of!(DataEvent, data) == 72);
    assert!(size_of::<CloseEvent>() == 56);
    assert!(offset_of!(CloseEvent, tls_conn) == 48);
    assert!(size_of::<UpstreamEvent>() == 32 + 16 + 16);
    assert!(offset_of!(UpstreamEvent, daddr) == 48);
};
