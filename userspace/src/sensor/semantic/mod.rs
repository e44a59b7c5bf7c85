//! The semantic sensor's userspace half: for one Go binary, where its `net/http` funnels
//! are (the probe plan) and which struct offsets the kernel programs may read, checked
//! against the binary itself before anything is attached (pure file parsing); then the
//! attachment and the counters.
//!
//! - [`offsets`]: the checked-in table of `net/http` struct offsets per Go release;
//! - [`plan()`]: the probes (at the emulated `push rbp` after Go's stack check), the HTTP/2
//!   server the binary answers with, and the API router's code ranges;
//! - [`verify`]: the table against the binary's machine code and type descriptors;
//! - [`attach`]: the aya half, the plan written into a kernel slot and the uprobes attached
//!   per binary in use;
//! - [`counts`]: the known hosts published to the kernel, its per-CPU counters folded
//!   into events;
//! - [`peers`]: the agent's own connections, so that probe and housekeeping responses
//!   are told apart from passive traffic.

pub mod attach;
mod book;
mod callers;
mod code;
pub mod counts;
mod field_check;
mod funcs;
mod head_layout;
mod linger;
pub mod offsets;
pub mod peers;
mod plan;
mod rtype;
pub mod verify;

pub use plan::{
    plan, plan_path, plan_path_with, OffsetField, OffsetOverride, SemanticPlan, SemanticProbe,
    API_CALLERS,
};

use crate::sensor::gobin::GoBinError;

/// Why a binary gets no semantic plan (the agent falls back to byte capture for it).
#[derive(Debug, thiserror::Error)]
pub enum SemanticError {
    #[error("cannot resolve {path} as a Go binary")]
    Binary {
        path: String,
        #[source]
        source: GoBinError,
    },
    #[error("the binary carries no Go version (build info missing or damaged)")]
    NoGoVersion,
    #[error("Go version {version} has no entry in the net/http offset table")]
    UnsupportedGoVersion { version: String },
    #[error("the binary serves HTTP/2 with golang.org/x/net/http2 but names no x/net version")]
    NoXNetVersion,
    #[error("golang.org/x/net {version} has no entry in the net/http offset table")]
    UnsupportedXNetVersion { version: String },
    #[error("function {name} is not in the binary")]
    FunctionMissing { name: String },
    #[error("cannot read function {name}")]
    Function {
        name: String,
        #[source]
        source: GoBinError,
    },
    #[error("the probe of {function} at {address:#x} is not on `push rbp` (found {found})")]
    NotPushRbp {
        function: String,
        address: u64,
        found: String,
    },
    #[error("undecodable instruction in {function} at {address:#x}")]
    Undecodable { function: String, address: u64 },
    #[error("no HTTP/2 response funnel: neither {bundled} nor {xnet} is in the binary")]
    NoH2Server {
        bundled: &'static str,
        xnet: &'static str,
    },
    #[error("the binary has no readable runtime type descriptors (PIE build, or no moduledata)")]
    NoTypeData,
    #[error("malformed type descriptor of {type_name} at {address:#x}")]
    BadTypeData { type_name: String, address: u64 },
    #[error("offset verification failed for {what}: expected {expected}, found {found}")]
    Verification {
        what: String,
        expected: String,
        found: String,
    },
    #[error("{count} API caller ranges, more than the kernel's {max} slots")]
    TooManyApiCallers { count: usize, max: usize },
}

#[cfg(test)]
mod code_tests;
#[cfg(test)]
mod tests;
