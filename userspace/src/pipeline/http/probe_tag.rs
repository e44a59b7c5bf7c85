//! The probe tag: the User-Agent the agent's own requests carry, so that the pipeline
//! can tell them from real traffic and match each probe check with its report.
//!
//! Any client can send any User-Agent, so a tag is signed: a 64-bit SipHash-1-3 of what
//! it says under a key drawn at random when the process starts (what the standard
//! library's `RandomState` holds). A client that never saw one of this agent's tags
//! cannot make one; a probe-looking User-Agent with a wrong or missing signature (an
//! imitation, or another agent's probe) is [`ProbeRef::Forged`] and counted as passive
//! traffic, never hidden.

use std::hash::BuildHasher;
use std::sync::OnceLock;

/// Marker the active prober puts at the start of its User-Agent.
pub const PROBE_USER_AGENT_PREFIX: &[u8] = b"routeskew-probe/";

/// What the rest of a probe User-Agent says about the request. The agent's own requests
/// carry `routeskew-probe/<version> check/<16 hex digits>.<signature>` (one probe check,
/// matched against the kernel's report of it) or `routeskew-probe/<version>
/// housekeeping/<signature>` (endpoint and router-inventory requests, never counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProbeRef {
    /// No probe User-Agent.
    #[default]
    None,
    Check(u64),
    Housekeeping,
    /// A probe User-Agent this agent did not sign: counted as passive traffic.
    Forged,
}

impl ProbeRef {
    /// One of this agent's own requests.
    pub fn is_own(self) -> bool {
        matches!(self, Self::Check(_) | Self::Housekeeping)
    }
}

const CHECK: u8 = 1;
const HOUSEKEEPING: u8 = 2;

/// The signature of (`kind`, `id`) under this process's key.
fn sign(kind: u8, id: u64) -> u64 {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(std::collections::hash_map::RandomState::new)
        .hash_one((kind, id))
}

/// The User-Agent of a probe check.
pub fn probe_check_user_agent(version: &str, id: u64) -> String {
    format!(
        "routeskew-probe/{version} check/{id:016x}.{:016x}",
        sign(CHECK, id)
    )
}

/// The User-Agent of the agent's other requests to replicas.
pub fn probe_housekeeping_user_agent(version: &str) -> String {
    format!(
        "routeskew-probe/{version} housekeeping/{:016x}",
        sign(HOUSEKEEPING, 0)
    )
}

fn hex16(b: &[u8]) -> Option<u64> {
    if b.len() != 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok()
}

/// Reads the tag of a User-Agent: [`ProbeRef::None`] unless it starts with
/// [`PROBE_USER_AGENT_PREFIX`], [`ProbeRef::Forged`] unless this agent signed it.
pub fn probe_ref_of(user_agent: &[u8]) -> ProbeRef {
    let Some(rest) = user_agent.strip_prefix(PROBE_USER_AGENT_PREFIX) else {
        return ProbeRef::None;
    };
    let Some(pos) = rest.iter().position(|&b| b == b' ') else {
        return ProbeRef::Forged;
    };
    let tag = &rest[pos + 1..];
    if let Some(sig) = tag.strip_prefix(b"housekeeping/") {
        return match hex16(sig) {
            Some(s) if s == sign(HOUSEKEEPING, 0) => ProbeRef::Housekeeping,
            _ => ProbeRef::Forged,
        };
    }
    let Some(body) = tag.strip_prefix(b"check/") else {
        return ProbeRef::Forged;
    };
    match (body.get(..16).and_then(hex16), body.get(16), body.get(17..)) {
        (Some(id), Some(b'.'), Some(sig)) if hex16(sig) == Some(sign(CHECK, id)) => {
            ProbeRef::Check(id)
        }
        _ => ProbeRef::Forged,
    }
}
