//! Cheap checks that run before anything is copied.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, generated};
use routeskew_common::{config_flags, watch_mode, WATCHED_FAST};

use crate::{
    maps::{cfg, CONFIG, WATCHED_CGROUPS, WATCHED_SET},
    regs,
};

/// The current task's cgroup v2 id: `current->cgroups->dfl_cgrp->kn->id`, which is what
/// `bpf_get_current_cgroup_id()` returns, read with four direct loads through BTF
/// pointers where the kernel has BTF.
#[inline(always)]
fn current_cgroup_id() -> u64 {
    let c = &CONFIG;
    if cfg(&c.flags) & config_flags::CGROUP_BTF != 0 {
        let task = unsafe { generated::bpf_get_current_task_btf() } as u64;
        let chain = &c.cgroup;
        let css_set = regs::load(task, &chain.task_cgroups);
        let cgroup = regs::load(css_set, &chain.css_set_dfl_cgrp);
        let kn = regs::load(cgroup, &chain.cgroup_kn);
        regs::load(kn, &chain.kernfs_node_id)
    } else {
        unsafe { bpf_get_current_cgroup_id() }
    }
}

/// The current task's cgroup v2 id and its `watch_mode` when it is watched.
#[inline(always)]
fn watched() -> Option<(u64, u32)> {
    let id = current_cgroup_id();
    if let Some(set) = WATCHED_SET.get(0) {
        let n = set.count as usize;
        if n <= WATCHED_FAST {
            let mut i = 0;
            while i < WATCHED_FAST {
                if i < n && set.ids[i] == id {
                    let mode = if (set.semantic_mask >> i) & 1 == 1 {
                        watch_mode::SEMANTIC
                    } else {
                        watch_mode::BYTES
                    };
                    return Some((id, mode));
                }
                i += 1;
            }
            return None;
        }
    }
    unsafe { WATCHED_CGROUPS.get(id) }.map(|mode| (id, *mode))
}

/// The current task's cgroup v2 id when it is watched, in either mode (the TCP hooks).
#[inline(always)]
pub(crate) fn watched_cgroup() -> Option<u64> {
    watched().map(|(id, _)| id)
}

/// The current task's cgroup v2 id when byte capture watches it (the data hooks and the
/// Go TLS uprobes).
#[inline(always)]
pub(crate) fn captured_cgroup() -> Option<u64> {
    match watched() {
        Some((id, mode)) if mode != watch_mode::SEMANTIC => Some(id),
        _ => None,
    }
}

/// The current task's cgroup v2 id when the semantic sensor counts it.
#[inline(always)]
pub(crate) fn semantic_cgroup() -> Option<u64> {
    match watched() {
        Some((id, watch_mode::SEMANTIC)) => Some(id),
        _ => None,
    }
}

#[inline(always)]
pub(crate) fn pid_tgid() -> u64 {
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

/// Start of a status line: `HTTP/1.` (the minor version is checked where it matters).
const RESPONSE_PREFIX: (u64, u64) = (word(b"HTTP/1."), mask(7));

/// Request methods a Traefik client or upstream request can start with.
const METHODS: [(u64, u64); 9] = [
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

/// What the first bytes of a buffer start.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Other,
    Request,
    /// A status line (`HTTP/1.`).
    Response,
    /// The HTTP/2 client preface, read on a Go TLS connection.
    H2Preface,
    /// A TLS record on a socket (ciphertext; the uprobes see its plaintext).
    TlsRecord,
}

/// Classifies the first 8 bytes of a buffer (little-endian).
#[inline(always)]
pub(crate) fn http_start(head: u64) -> Start {
    if head & RESPONSE_PREFIX.1 == RESPONSE_PREFIX.0 {
        return Start::Response;
    }
    let mut i = 0;
    while i < METHODS.len() {
        let (w, m) = METHODS[i];
        if head & m == w {
            return Start::Request;
        }
        i += 1;
    }
    Start::Other
}

/// Whether the first 8 bytes are `HTTP/1.0` or `HTTP/1.1` (a response status line).
#[inline(always)]
pub(crate) fn is_http_response(head: u64) -> bool {
    head == word(b"HTTP/1.1") || head == word(b"HTTP/1.0")
}

/// Whether the first 8 bytes start the HTTP/2 client preface
/// (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`). Go's h2 server reads the 24 bytes in one Read.
#[inline(always)]
pub(crate) fn is_h2_preface(head: u64) -> bool {
    head == word(b"PRI * HT")
}

/// Whether the first bytes are a TLS handshake record header (content type 22, version
/// 3.0–3.4): how a TLS connection starts, in both directions. Only the start marks a
/// socket as ciphertext: a mark set by a record late in a connection's life (an alert
/// around its close) was seen to outlive the socket and blind the next one that got its
/// address (`e2e_probe`'s TLS test catches that).
#[inline(always)]
pub(crate) fn is_tls_record(head: u64) -> bool {
    let b = head.to_le_bytes();
    b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

/// Bytes 8..12 of a `101 Switching Protocols` status line.
pub(crate) const STATUS_101: u32 = u32::from_le_bytes(*b" 101");
