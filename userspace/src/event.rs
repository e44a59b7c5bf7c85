//! The one event type every stage after the sensor consumes.
//!
//! The sensor decodes kernel records into [`Event`]s; tests build them by hand. Nothing in
//! here knows about aya.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use crate::hosts::Host;

/// Which process (and cgroup) an event belongs to. Discovery maps it to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub tgid: u32,
    pub cgroup_id: u64,
}

/// Which connection of a process an event belongs to. The two kinds never name the same
/// connection: a TLS connection's fd only carries ciphertext, which is never captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnId {
    /// A socket fd (plaintext HTTP, seen by the socket/syscall hooks).
    Fd(u32),
    /// A Go `*crypto/tls.Conn` (its address): the plaintext inside a TLS connection,
    /// seen by the uprobes on its `Read`/`Write`/`Close`.
    GoTls(u64),
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnId::Fd(fd) => write!(f, "fd {fd}"),
            ConnId::GoTls(conn) => write!(f, "tls.Conn {conn:#x}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes the process read from a socket.
    Read,
    /// Bytes the process wrote to a socket.
    Write,
}

/// Why an outgoing (Traefik → backend) TCP connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpstreamFailureReason {
    Refused,
    Timeout,
    Unreachable,
    Reset,
}

impl UpstreamFailureReason {
    pub const ALL: [UpstreamFailureReason; 4] =
        [Self::Refused, Self::Timeout, Self::Unreachable, Self::Reset];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::Reset => "reset",
        }
    }
}

/// The checks the prober runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeCheck {
    Http,
    WebSocket,
}

impl ProbeCheck {
    /// The `check` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::WebSocket => "websocket",
        }
    }
}

/// A replica's answer to a probe as the prober's HTTP client parsed it. The pipeline
/// classifies it from these parts directly (it is never written back out as bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub status: u16,
    /// The reason phrase as sent (Traefik's router miss says `Not Found`).
    pub reason: String,
    /// The response headers in wire order (hyper keeps the order of distinct names).
    pub headers: http::HeaderMap,
    /// The start of the body (Traefik's router-miss body is 19 bytes).
    pub body_prefix: Bytes,
}

/// What the prober itself saw of one probe check sent to a replica. The event carrying
/// it has the replica's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// The id in the probe's User-Agent (the pipeline's probe tag), which the kernel's
    /// copy of the exchange carries too.
    pub id: u64,
    pub check: ProbeCheck,
    /// The Host the probe sent.
    pub host: String,
    /// `None` when no response came (refused, reset, timeout).
    pub response: Option<ProbeAnswer>,
    /// From connecting to the end of the answer (or the failure).
    pub elapsed: Duration,
}

/// The prober's verdict on one (replica, host, check) for one round: success when every
/// endpoint and path checked succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeVerdict {
    pub host: String,
    pub check: ProbeCheck,
    pub success: bool,
    /// At least one endpoint answered.
    pub answered: bool,
    /// At least one endpoint answered with Traefik's router-miss 404.
    pub router_miss: bool,
}

/// Names of lacking routers an inventory event carries; the verdict shows a few.
pub const MAX_LACKS_REPORTED: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The leading bytes of one read/write on a connection, starting an HTTP/1.x message.
    Data {
        conn: ConnId,
        direction: Direction,
        /// Bytes transferred; `bytes` may be a shorter prefix.
        total_len: u64,
        bytes: Bytes,
    },
    /// A connection that carried captured HTTP was closed by the process.
    Closed {
        conn: ConnId,
        /// The kernel had marked it as upgraded (101 seen).
        upgraded: bool,
    },
    /// An outgoing TCP connection of the process failed.
    UpstreamFailure {
        reason: UpstreamFailureReason,
        errno: i32,
        peer: Option<SocketAddr>,
    },
    /// The prober's own account of a probe check (never produced by the kernel).
    Probe(Box<ProbeReport>),
    /// The prober's verdict on a host and check of the replica, once per round.
    ProbeVerdict(Box<ProbeVerdict>),
    /// Enabled routers the replica's API listed (the prober's router inventory).
    RouterInventory {
        enabled: u64,
        /// Routers the replica's local siblings list and it lacks (at most
        /// [`MAX_LACKS_REPORTED`] names).
        lacks: Vec<String>,
    },
    /// Responses the semantic sensor counted in the kernel since its previous fold.
    Responses(ResponseCount),
    /// The request head the semantic sensor copied for one of those responses (an
    /// HTTP/1.x `GET` answered with 300 or more, not 304, outside the agent's own
    /// connections), so that a refused or unrouted WebSocket upgrade is recognised.
    Head(CopiedHead),
    /// A WebSocket session the semantic sensor saw upgraded (passive traffic) ended: the
    /// hijacked client connection was closed `open_ns` after the upgrade.
    WsClosed { host_hash: u64, open_ns: u64 },
}

/// See [`EventKind::Head`]. The response itself is in a [`ResponseCount`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedHead {
    /// The hash the kernel counted the response's Host under (0: `other`).
    pub host_hash: u64,
    pub status: u16,
    /// The 404 came from Traefik's no-router handler.
    pub router_miss: bool,
    /// The start of the connection's read buffer; the request head when the agent finds
    /// the same Host in it.
    pub bytes: Bytes,
}

/// A number of responses of one replica with the same Host, status and kind, counted in
/// the kernel by the semantic sensor (`Go net/http`'s own `WriteHeader`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCount {
    /// The request's Host as published to the kernel, or [`Host::Missing`] for any
    /// Host that was not (it counts as `other`).
    pub host: Host,
    pub status: u16,
    /// A 404 written right after Traefik's no-router handler (`net/http.NotFound`
    /// called from outside its API router) on the same request.
    pub router_miss: bool,
    /// Answered by the HTTP/2 server.
    pub h2: bool,
    /// The exchange was the agent's own probe.
    pub probe: bool,
    /// A `101` the reverse proxy relayed (a WebSocket upgrade that succeeded).
    pub upgrade: bool,
    /// The exchange was one of the agent's housekeeping requests (never counted).
    pub housekeeping: bool,
    pub count: u64,
}

/// What one of the agent's own connections to a replica is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// A probe check: counted as `source="probe"`.
    Probe,
    /// Router inventory, endpoint checks: never counted.
    Housekeeping,
}

/// The outcome of [`PeerTags::tag`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tagging {
    Tagged,
    /// The address is the agent's under the other role right now (Linux shares a local
    /// port among connections to different destinations): connect again.
    Conflict,
    /// The sensor could not take it: the responses count as passive (the failure is the
    /// sensor's to count and log).
    Refused,
}

/// Tells the sensor which of a replica's peers are the agent's own connections, by the
/// connection's local address (the replica's `RemoteAddr` of it). The semantic sensor
/// marks their responses; the byte-capture sensor recognises them by User-Agent and
/// needs none of this.
pub trait PeerTags: Send + Sync {
    /// Until [`PeerTags::untag`] (once per successful tag: a local address can carry
    /// several of the agent's connections at once, to different replicas).
    fn tag(&self, peer: SocketAddr, role: PeerRole) -> Tagging;
    fn untag(&self, peer: SocketAddr);
    /// The connection was given up before its answer (a timeout): the replica may still
    /// write one, which is the agent's, so the tag may stay a while.
    fn untag_abandoned(&self, peer: SocketAddr) {
        self.untag(peer);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (the kernel's `bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub origin: Origin,
    pub kind: EventKind,
}

impl Event {
    /// Convenience for tests and the prober: a data event.
    pub fn data(ts_ns: u64, origin: Origin, fd: u32, direction: Direction, bytes: &[u8]) -> Self {
        Event {
            ts_ns,
            origin,
            kind: EventKind::Data {
                conn: ConnId::Fd(fd),
                direction,
                total_len: bytes.len() as u64,
                bytes: Bytes::copy_from_slice(bytes),
            },
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
