//! Why the TLS uprobes are not on a binary.

use aya::programs::ProgramError;

use crate::sensor::{gobin::GoBinError, hooks::describe_program_error};

/// Why the Go TLS uprobes are not on a binary (or could not be loaded at all).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The binary's functions could not be found.
    #[error(transparent)]
    Resolve {
        #[from]
        source: GoBinError,
    },
    #[error("program {program} is not in the eBPF object (stale object?)")]
    Missing { program: &'static str },
    #[error("loading {program}: {source}")]
    NotUprobe {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// The verifier (or the kernel) rejected the program.
    #[error("loading {program}: {}", describe_program_error(.source))]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program} at file offset {offset:#x}: {source}")]
    Attach {
        program: &'static str,
        offset: u64,
        #[source]
        source: ProgramError,
    },
}
