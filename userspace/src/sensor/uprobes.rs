//! What every set of uprobes on watched binaries shares (the Go TLS ones and the
//! semantic sensor's): finding a program in the object, loading it, attaching it at a
//! file offset, detaching links, and why any of it failed.

use std::path::Path;

use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
        ProgramError, UProbe,
    },
    Ebpf,
};

use super::hooks::describe_program_error;

/// Why a uprobe program could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum UprobeError {
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

/// Uprobe links of one binary, by program.
pub(super) type Links = Vec<(&'static str, UProbeLinkId)>;

pub(super) fn uprobe<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut UProbe, UprobeError> {
    ebpf.program_mut(program)
        .ok_or(UprobeError::Missing { program })?
        .try_into()
        .map_err(|source| UprobeError::NotUprobe { program, source })
}

pub(super) fn load_all(ebpf: &mut Ebpf, programs: &[&'static str]) -> Result<(), UprobeError> {
    for &program in programs {
        uprobe(ebpf, program)?
            .load()
            .map_err(|source| UprobeError::Load { program, source })?;
    }
    Ok(())
}

/// Attaches `program` at `offset` of `exe` for every process running it, with `cookie`
/// for `bpf_get_attach_cookie`.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    exe: &Path,
    offset: u64,
    cookie: Option<u64>,
) -> Result<UProbeLinkId, UprobeError> {
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(offset),
        cookie,
    };
    uprobe(ebpf, program)?
        .attach(point, exe, UProbeScope::AllProcesses)
        .map_err(|source| UprobeError::Attach {
            program,
            offset,
            source,
        })
}

/// Detaches every link (a failure is logged at debug: the link goes with the program).
pub(super) fn detach(ebpf: &mut Ebpf, links: Links) {
    for (program, link) in links {
        let result = uprobe(ebpf, program).map(|p| p.detach(link));
        if let Ok(Err(error)) = result {
            tracing::debug!(program, %error, "detaching a uprobe failed");
        } else if let Err(error) = result {
            tracing::debug!(program, %error, "detaching a uprobe failed");
        }
    }
}
