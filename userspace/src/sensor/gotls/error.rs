//! Why the TLS uprobes are not on a binary.

use crate::sensor::{gobin::GoBinError, uprobes::UprobeError};

/// Why the Go TLS uprobes are not on a binary (or could not be loaded at all).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The binary's functions could not be found.
    #[error(transparent)]
    Resolve {
        #[from]
        source: GoBinError,
    },
    #[error(transparent)]
    Uprobe(#[from] UprobeError),
    #[error(transparent)]
    Resolution(#[from] crate::sensor::resolve::ResolveError),
}
