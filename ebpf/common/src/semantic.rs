//! The semantic sensor's wire types: what the agent tells the kernel about a Go binary's
//! `net/http` (per-binary offsets and caller ranges) and the per-CPU counters the kernel
//! keeps per (replica, host, status).
//!
//! One uprobe per response at the emulated `push rbp` of Go's per-response funnel reads
//! the status code from a register and the request's `Host` two pointer reads away, and
//! increments a per-CPU counter: normal requests never cross the ring buffer.

/// Bytes of a `Host` value the kernel copies and normalises. Longer hosts count under
/// host id 0 (`other`) and as an anomaly: no known host is that long (the agent bounds
/// known hosts to this length).
pub const SEM_HOST_CAP: usize = 256;

/// Watched Go binaries with a semantic plan at once (the uprobe cookie is the slot).
pub const SEM_BINARY_SLOTS: u32 = 16;

/// Code ranges per binary whose `net/http.NotFound` calls are *not* router misses
/// (Traefik's own API/dashboard router).
pub const SEM_API_RANGES: usize = 4;

/// Keys of the per-CPU counter map (bounded: the agent folds and deletes dead keys).
pub const SEM_COUNT_KEYS: u32 = 16384;

/// Bytes of an HTTP/1.x request head the kernel copies for a `GET` answered with a
/// status of 300 or more (not 304), so that the agent can tell a refused or unrouted
/// WebSocket upgrade (its `Upgrade` header) from any other answer. Browsers put the
/// header within the first few hundred bytes.
pub const SEM_HEAD_CAP: usize = 1024;

/// Known hosts the agent publishes to the kernel (hash → id).
pub const SEM_HOST_KEYS: u32 = 1024;

/// A `NotFound` mark older than this is not joined to a later 404 on the same goroutine.
pub const SEM_MISS_TTL_NS: u64 = 5_000_000_000;

/// Longest `Request.RemoteAddr` the kernel reads to recognise the agent's own
/// connections (`[v6-address%zone]:port` fits).
pub const SEM_PEER_CAP: usize = 64;

/// Peer addresses of the agent's own connections open at once (`SEM_PEERS`).
pub const SEM_PEER_KEYS: u32 = 1024;

/// What the agent's own connection to a replica is for (`SEM_PEERS` values).
pub mod sem_peer {
    /// A probe check: its responses count as `source="probe"`.
    pub const PROBE: u32 = 1;
    /// Housekeeping (router inventory, endpoint checks): never counted.
    pub const HOUSEKEEPING: u32 = 2;
}

wire_enum! {
    /// Which semantic probe a program/attach point is (the agent resolves one address per
    /// probe per binary).
    pub enum SemProbe {
        /// `net/http.(*response).WriteHeader`: HTTP/1.x responses.
        H1WriteHeader = 0,
        /// `net/http.(*http2responseWriterState).writeHeader`, or x/net's
        /// `http2.(*responseWriterState).writeHeader` where the binary serves h2 with it.
        H2WriteHeader = 1,
        /// `net/http.NotFound`: Traefik's no-router handler (and its API's 404s).
        NotFound = 2,
        /// `net/http/httputil.(*ReverseProxy).handleUpgradeResponse`: a backend's `101`
        /// relayed over the hijacked connection (no `WriteHeader` runs for it).
        Upgrade = 3,
        /// `net.(*conn).Close`: on the goroutine that relayed a `101`, the end of the
        /// WebSocket session (`handleUpgradeResponse` closes the hijacked client
        /// connection when the copy ends; a `*tls.Conn` closes its `net.conn`).
        ConnClose = 4,
    }
}

/// What an upgrade leaves for the same goroutine's next `net.(*conn).Close`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpgradeMark {
    /// [`SemKey::host_hash`] of the upgrade request.
    pub host_hash: u64,
    pub ts_ns: u64,
}

/// Struct offsets of Go's `net/http` the programs use, per Go version (verified by the
/// agent against the binary's machine code before it writes them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoHttpOffsets {
    /// `response.req` (`*Request`).
    pub h1_req: u32,
    /// `response.wroteHeader` (bool).
    pub h1_wrote_header: u32,
    /// `http2responseWriterState.req`.
    pub h2_req: u32,
    /// `http2responseWriterState.wroteHeader` (bool).
    pub h2_wrote_header: u32,
    /// `Request.Host` (string: pointer then length).
    pub req_host: u32,
    /// `Request.RemoteAddr` (string).
    pub req_remote_addr: u32,
    /// `response.conn` (`*conn`): the HTTP/1.x connection, for the request head.
    pub h1_conn: u32,
    /// `conn.bufr` (`*bufio.Reader`): what the request head was read through.
    pub conn_bufr: u32,
    /// `bufio.Reader.buf` (`[]byte`).
    pub bufr_buf: u32,
    /// `bufio.Reader.w` (`int`): how much of `buf` holds read bytes.
    pub bufr_w: u32,
}

/// A half-open range of code addresses, `[start, end)`, as mapped in the process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrRange {
    pub start: u64,
    pub end: u64,
}

impl AddrRange {
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }
}

/// One watched binary's plan, in `SEM_BINARIES[slot]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoHttpBinary {
    pub offsets: GoHttpOffsets,
    /// 1 when the slot holds a verified plan; programs hitting a slot with 0 count an
    /// anomaly and do nothing.
    pub valid: u32,
    pub _pad: u32,
    /// The binary's text: a return address outside it means the stack is not what the
    /// plan expects (counted as an anomaly, not guessed).
    pub text: AddrRange,
    /// Callers of `NotFound` that are the API's router, not a router miss (unused slots
    /// are empty ranges).
    pub api_callers: [AddrRange; SEM_API_RANGES],
}

/// Flags in [`SemKey::flags`].
pub mod sem_flags {
    /// The 404 followed a `NotFound` from the router chain on the same goroutine.
    pub const ROUTER_MISS: u16 = 1;
    /// Answered by the HTTP/2 funnel.
    pub const H2: u16 = 2;
    /// The exchange came from the agent's own prober.
    pub const PROBE: u16 = 4;
    /// A `101 Switching Protocols` relayed by the reverse proxy (a WebSocket upgrade).
    pub const UPGRADE: u16 = 8;
    /// The exchange was one of the agent's housekeeping requests (never counted).
    pub const HOUSEKEEPING: u16 = 16;
}

/// Key of the per-CPU response counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SemKey {
    /// The replica's cgroup (v2 id).
    pub cgroup_id: u64,
    /// FNV-1a of the normalised Host when the agent published it, else 0 (`other`).
    pub host_hash: u64,
    /// HTTP status code as written.
    pub status: u16,
    pub flags: u16,
    /// The replica's process (local mode names replicas by process).
    pub tgid: u32,
}

/// What `NotFound` leaves for the goroutine's following `WriteHeader(404)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MissMark {
    /// The data pointer of the `Host` of the request `NotFound` was given: the 404 must
    /// be for the same request (Traefik's middlewares pass shallow copies of the request,
    /// which share the string).
    pub host_ptr: u64,
    pub ts_ns: u64,
}

/// FNV-1a offset basis.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// One byte of FNV-1a.
#[inline(always)]
pub const fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

/// Never 0: 0 is the `other` host id in [`SemKey::host_hash`].
#[inline(always)]
pub const fn fnv_finish(h: u64) -> u64 {
    if h == 0 {
        1
    } else {
        h
    }
}

/// Key of a peer address as Go's `Request.RemoteAddr` spells it (`1.2.3.4:5`,
/// `[::1]:5`): its bytes as eight little-endian words, zero past its length, folded with
/// the length. Fixed work and no byte loop: the kernel reads the string into eight zeroed
/// words. Never 0.
#[inline(always)]
pub const fn peer_key(words: &[u64; SEM_PEER_CAP / 8], len: u64) -> u64 {
    let mut h = FNV_START ^ len;
    let mut i = 0;
    while i < SEM_PEER_CAP / 8 {
        h = (h ^ words[i]).wrapping_mul(FNV_PRIME);
        h ^= h >> 29;
        i += 1;
    }
    fnv_finish(h)
}

/// [`peer_key`] of an address string (the agent's side); `None` when it is empty or
/// longer than [`SEM_PEER_CAP`].
pub fn peer_key_of(addr: &[u8]) -> Option<u64> {
    if addr.is_empty() || addr.len() > SEM_PEER_CAP {
        return None;
    }
    let mut words = [0u64; SEM_PEER_CAP / 8];
    for (i, b) in addr.iter().enumerate() {
        words[i / 8] |= u64::from(*b) << (8 * (i % 8));
    }
    Some(peer_key(&words, addr.len() as u64))
}

/// FNV-1a of an already normalised host (the agent's side of the kernel's hash).
pub const fn host_hash(host: &[u8]) -> u64 {
    let mut h = FNV_START;
    let mut i = 0;
    while i < host.len() {
        h = fnv_step(h, host[i]);
        i += 1;
    }
    fnv_finish(h)
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<GoHttpOffsets>() == 40);
    assert!(size_of::<AddrRange>() == 16);
    assert!(size_of::<GoHttpBinary>() == 40 + 8 + 16 + 16 * SEM_API_RANGES);
    assert!(offset_of!(GoHttpBinary, text) == 48);
    assert!(SEM_HEAD_CAP.is_power_of_two());
    assert!(size_of::<SemKey>() == 24);
    assert!(offset_of!(SemKey, status) == 16);
    assert!(size_of::<MissMark>() == 16);
    assert!(size_of::<UpgradeMark>() == 16);
    assert!(SEM_HOST_CAP.is_power_of_two());
};

/// ASCII lowercase of every byte value (a table lookup instead of a branch per byte:
/// the verifier walks the hash loop once per byte, and branches multiply its states).
static LOWER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).to_ascii_lowercase();
        i += 1;
    }
    t
};

/// `buf[i & MASK]`, with the index opaque to the optimiser: the BPF verifier needs the
/// mask applied right before the access, and LLVM would otherwise fold it into the
/// arithmetic that computed `i` (an access at `buf + x - 2` with `x` masked is rejected).
#[inline(always)]
fn at(buf: &[u8; SEM_HOST_CAP], i: usize) -> u8 {
    // SAFETY: a read of a local.
    let i = unsafe { core::ptr::read_volatile(&i) } & (SEM_HOST_CAP - 1);
    buf[i]
}

/// Longest port suffix: `:` and five digits.
const PORT_SUFFIX: usize = 6;

/// FNV-1a of the normalised host in `buf[..len]` (`0 < len <= SEM_HOST_CAP`), or 0 when
/// it cannot be a known host. As the agent normalises: a `:port` of 1–5 digits at the
/// end is cut (after `]` for a bracketed IPv6 literal), then one trailing dot, and the
/// rest is hashed in ASCII lowercase. A Host the agent would call invalid hashes to a
/// value no known host has (known hosts contain no `:` outside brackets).
#[inline(always)]
pub fn raw_host_hash(buf: &[u8; SEM_HOST_CAP], len: usize) -> u64 {
    let mut end = len;
    // The port: digits back from the end up to a colon.
    let mut k = 1;
    while k <= PORT_SUFFIX {
        if k > len {
            break;
        }
        let c = at(buf, len - k);
        if c == b':' {
            if k == 1 {
                // `host:` has an empty port.
                return 0;
            }
            end = len - k;
            break;
        }
        if !c.is_ascii_digit() {
            break;
        }
        k += 1;
    }
    if end < len && buf[0] == b'[' && (end == 0 || at(buf, end - 1) != b']') {
        // A colon inside an IPv6 literal, not a port.
        end = len;
    }
    if end > 0 && at(buf, end - 1) == b'.' {
        end -= 1;
    }
    let mut h = FNV_START;
    let mut i = 0;
    while i < SEM_HOST_CAP {
        if i >= end {
            break;
        }
        h = fnv_step(h, LOWER[buf[i] as usize]);
        i += 1;
    }
    fnv_finish(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        // FNV-1a 64 reference values.
        assert_eq!(host_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(host_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(host_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn probes_round_trip() {
        for p in SemProbe::ALL {
            assert_eq!(SemProbe::try_from(p as u32), Ok(p));
        }
        assert!(SemProbe::try_from(5).is_err());
    }

    #[test]
    fn peer_keys_tell_addresses_apart() {
        let a = peer_key_of(b"127.0.0.1:41234").unwrap();
        assert_ne!(a, 0);
        assert_eq!(Some(a), peer_key_of(b"127.0.0.1:41234"));
        for other in [
            &b"127.0.0.1:41235"[..],
            b"127.0.0.2:41234",
            b"127.0.0.1:4123",
            b"127.0.0.1:412340",
            b"[::1]:41234",
        ] {
            assert_ne!(Some(a), peer_key_of(other), "{other:?}");
        }
        // Trailing zero bytes are not the end of the string: the length is in the key.
        assert_ne!(peer_key_of(b"a"), peer_key_of(b"a\0"));
        assert_eq!(peer_key_of(b""), None);
        assert_eq!(peer_key_of(&[b'1'; SEM_PEER_CAP + 1]), None);
        assert!(peer_key_of(&[b'1'; SEM_PEER_CAP]).is_some());
    }
}
