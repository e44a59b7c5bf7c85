//! The probe tag: the User-Agent the agent's own requests carry, so that the pipeline
//! can tell them from real traffic and match each probe check with its report.

/// Marker the active prober puts at the start of its User-Agent.
pub const PROBE_USER_AGENT_PREFIX: &[u8] = b"routeskew-probe/";

/// What the rest of a probe User-Agent says about the request. The agent's own requests
/// carry `routeskew-probe/<version> check/<16 hex digits>` (one probe check, matched
/// against the kernel's report of it) or `routeskew-probe/<version> housekeeping`
/// (endpoint and router-inventory requests, never counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProbeRef {
    /// No probe User-Agent, or one without a recognised tag (another agent's version).
    #[default]
    None,
    Check(u64),
    Housekeeping,
}

/// The User-Agent of a probe check.
pub fn probe_check_user_agent(version: &str, id: u64) -> String {
    format!("routeskew-probe/{version} check/{id:016x}")
}

/// The User-Agent of the agent's other requests to replicas.
pub fn probe_housekeeping_user_agent(version: &str) -> String {
    format!("routeskew-probe/{version} housekeeping")
}

/// Reads the tag of a User-Agent that starts with [`PROBE_USER_AGENT_PREFIX`].
pub fn probe_ref_of(user_agent: &[u8]) -> ProbeRef {
    let Some(rest) = user_agent.strip_prefix(PROBE_USER_AGENT_PREFIX) else {
        return ProbeRef::None;
    };
    let Some(pos) = rest.iter().position(|&b| b == b' ') else {
        return ProbeRef::None;
    };
    let tag = &rest[pos + 1..];
    if tag == b"housekeeping" {
        return ProbeRef::Housekeeping;
    }
    tag.strip_prefix(b"check/")
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map_or(ProbeRef::None, ProbeRef::Check)
}
