//! What every set of uprobes on watched binaries shares (the Go TLS ones and the
//! semantic sensor's): finding a program in the object, loading it, attaching it at a
//! file offset, detaching links, and why any of it failed.

use std::{path::Path, sync::Mutex, thread::JoinHandle};

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
    wait_for_closing();
    uprobe(ebpf, program)?
        .attach(point, exe, UProbeScope::AllProcesses)
        .map_err(|source| UprobeError::Attach {
            program,
            offset,
            source,
        })
}

/// Takes the links off their programs and closes them on a thread of their own: closing
/// a uprobe's perf event waits for the kernel's RCU grace periods (measured: 975 ms for
/// ten uprobes on a loaded 2-CPU machine), which must not hold up the run loop, and
/// with it the pipeline and the ring-buffer reader behind it.
pub(super) fn detach(ebpf: &mut Ebpf, links: Links) {
    let mut owned = Vec::with_capacity(links.len());
    for (program, link) in links {
        // A link that cannot be taken (a failure is logged at debug) goes with the program.
        match uprobe(ebpf, program).map(|p| p.take_link(link)) {
            Ok(Ok(l)) => owned.push(l),
            Ok(Err(error)) => tracing::debug!(program, %error, "detaching a uprobe failed"),
            Err(error) => tracing::debug!(program, %error, "detaching a uprobe failed"),
        }
    }
    if owned.is_empty() {
        return;
    }
    let Ok(mut closing) = CLOSING.lock() else {
        // Poisoned: close here (dropped links detach).
        return;
    };
    closing.retain(|h| !h.is_finished());
    let span = tracing::info_span!("detach", links = owned.len());
    match std::thread::Builder::new()
        .name("routeskew-detach".into())
        .spawn(move || {
            let _entered = span.enter();
            drop(owned);
        }) {
        Ok(handle) => closing.push(handle),
        // The closure, links and all, was dropped: they are closed already.
        Err(error) => tracing::debug!(%error, "no thread to close uprobes on; closed in place"),
    }
}

/// Waits for links still being closed: a probe attached while an old one at the same
/// place is still open would count each hit twice. Rare (a binary detached and attached
/// again within a grace period), so the wait is too.
fn wait_for_closing() {
    let handles: Vec<_> = match CLOSING.lock() {
        Ok(mut closing) => closing.drain(..).collect(),
        Err(_) => return,
    };
    for h in handles {
        if h.join().is_err() {
            tracing::warn!("closing uprobes panicked");
        }
    }
}

/// Threads closing detached links.
static CLOSING: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());
