//! Why a hook is not attached ([`HookError`]), and why a data path was given up
//! ([`PathFailure`]), which every data hook of that path reports.

use std::sync::Arc;

use aya::programs::ProgramError;
use routeskew_common::Program;

use crate::sensor::{tracefs::Unusable, vmlinux::RegsUnavailable};

/// Why one kernel hook is not attached.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("program {program} is not in the eBPF object (stale object?)")]
    NotInObject { program: &'static str },
    #[error("program {program} is not a {kind}: {source}")]
    WrongKind {
        program: &'static str,
        kind: &'static str,
        #[source]
        source: ProgramError,
    },
    /// The verifier (or the kernel) rejected the program.
    #[error("{}", describe_program_error(.source))]
    Load {
        #[source]
        source: ProgramError,
    },
    #[error("attach failed: {source}")]
    Attach {
        #[source]
        source: ProgramError,
    },
    #[error("tracepoint layout unusable: {source}")]
    Layout {
        #[source]
        source: Unusable,
    },
    /// An enter program whose exit is not attached would fill per-thread maps nothing
    /// drains.
    #[error("skipped: {} is not attached", partner.name())]
    PartnerNotAttached { partner: Program },
    /// A data hook of a better path that was given up: not tried, or failed itself.
    #[error("{reason}; falling back")]
    FellBack {
        #[source]
        reason: Arc<PathFailure>,
    },
    /// A data hook that attached, then went with the rest of its path.
    #[error("detached: another hook of this path failed ({reason}); falling back")]
    Detached {
        #[source]
        reason: Arc<PathFailure>,
    },
}

/// Why a data path (socket tracepoints, raw `sys_exit`) is not used.
#[derive(Debug, thiserror::Error)]
pub enum PathFailure {
    #[error("skipped by configuration")]
    Configured,
    /// The saved user registers cannot be read.
    #[error(transparent)]
    Regs { source: Arc<RegsUnavailable> },
    /// The socket tracepoints have no close hook of their own.
    #[error("closes are reported by inet_sock_set_state, unusable: {source}")]
    CloseHook {
        #[source]
        source: Unusable,
    },
    /// The first of its hooks that failed.
    #[error(transparent)]
    Hook { source: HookError },
}

/// Keeps the end of a verifier log: the reason for a rejection is in the last lines.
pub(in crate::sensor) fn describe_program_error(e: &ProgramError) -> String {
    const KEEP_LINES: usize = 30;
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(KEEP_LINES)..].join("\n");
            format!("load failed ({io_error}); verifier log (last lines):\n{tail}")
        }
        other => other.to_string(),
    }
}
