//! Cheap checks that run before anything is copied.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid};

use crate::maps::WATCHED_CGROUPS;

/// The current task's cgroup v2 id when it is watched.
#[inline(always)]
pub fn watched_cgroup() -> Option<u64> {
    let id = unsafe { bpf_get_current_cgroup_id() };
    if unsafe { WATCHED_CGROUPS.get(&id) }.is_some() {
        Some(id)
    } else {
        None
    }
}

#[inline(always)]
pub fn pid_tgid() -> u64 {
    bpf_get_current_pid_tgid()
}

/// Little-endian u64 of up to 8 ASCII bytes, for prefix comparisons on a loaded word.
const fn word(s: &[u8]) -> u64 {
    let mut w = 0u64;
    let mut i = 0;
    while i < s.len() {
        w |= (s[i] as u64) << (8 * i);
        i += 1;
    }
    w
}

const fn mask(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

const PREFIXES: [(u64, u64); 10] = [
    (word(b"HTTP/1."), mask(7)),
    (word(b"GET "), mask(4)),
    (word(b"POST "), mask(5)),
    (word(b"PUT "), mask(4)),
    (word(b"HEAD "), mask(5)),
    (word(b"DELETE "), mask(7)),
    (word(b"PATCH "), mask(6)),
    (word(b"OPTIONS "), mask(8)),
    (word(b"CONNECT "), mask(8)),
    (word(b"TRACE "), mask(6)),
];

/// Whether the first 8 bytes of a buffer (little-endian) start an HTTP/1.x message.
#[inline(always)]
pub fn is_http_start(head: u64) -> bool {
    let mut i = 0;
    while i < PREFIXES.len() {
        let (w, m) = PREFIXES[i];
        if head & m == w {
            return true;
        }
        i += 1;
    }
    false
}

/// Whether the first 8 bytes are `HTTP/1.0` or `HTTP/1.1` (a response status line).
#[inline(always)]
pub fn is_http_response(head: u64) -> bool {
    head == word(b"HTTP/1.1") || head == word(b"HTTP/1.0")
}

/// Bytes 8..12 of a `101 Switching Protocols` status line.
pub const STATUS_101: u32 = u32::from_le_bytes(*b" 101");
