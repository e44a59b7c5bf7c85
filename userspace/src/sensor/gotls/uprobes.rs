//! The uprobe programs: loading them once, resolving a binary's attach points, attaching
//! and detaching them, and their run statistics.

use std::path::Path;

use aya::{
    programs::{
        uprobe::{UProbeLinkId, UProbeScope},
        ProgramError, UProbe,
    },
    Ebpf,
};
use routeskew_common::Program;

use super::{TlsError, CLOSE, READ, WRITE};
use crate::sensor::{gobin::GoBinary, names};

const PROG_WRITE: &str = names::program(Program::GoTlsWrite);
const PROG_READ: &str = names::program(Program::GoTlsRead);
const PROG_READ_RET: &str = names::program(Program::GoTlsReadRet);
const PROG_CLOSE: &str = names::program(Program::GoTlsClose);
const PROGRAMS: [&str; 4] = [PROG_WRITE, PROG_READ, PROG_READ_RET, PROG_CLOSE];

/// How often a uprobe program ran and for how long in total (the kernel counts only
/// while run-time statistics are enabled, see [`crate::sensor::enable_run_stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStats {
    pub program: &'static str,
    pub runs: u64,
    pub run_time: std::time::Duration,
}

/// Run statistics of the TLS uprobe programs that are loaded.
pub fn run_stats(ebpf: &mut Ebpf) -> Vec<RunStats> {
    PROGRAMS
        .iter()
        .filter_map(|&name| {
            let info = uprobe(ebpf, name).ok()?.info().ok()?;
            Some(RunStats {
                program: name,
                runs: info.run_count(),
                run_time: info.run_time(),
            })
        })
        .collect()
}

/// Uprobe links of one binary, by program.
pub(super) type Links = Vec<(&'static str, UProbeLinkId)>;
/// (program, file offset) pairs to attach.
type Points = Vec<(&'static str, u64)>;

fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut UProbe, TlsError> {
    let p = ebpf
        .program_mut(program)
        .ok_or(TlsError::Missing { program })?;
    p.try_into()
        .map_err(|source: ProgramError| TlsError::NotUprobe { program, source })
}

pub(super) fn load_all(ebpf: &mut Ebpf) -> Result<(), TlsError> {
    for program in PROGRAMS {
        uprobe(ebpf, program)?
            .load()
            .map_err(|source| TlsError::Load { program, source })?;
    }
    Ok(())
}

/// Entry and RET-site offsets of the three methods, as (program, file offset) pairs.
fn attach_points(exe: &Path) -> Result<(String, Points), TlsError> {
    let bin = GoBinary::open(exe)?;
    let write = bin.function(WRITE)?;
    let read = bin.function(READ)?;
    let close = bin.function(CLOSE)?;
    let mut points = vec![
        (PROG_WRITE, write.probe_offset),
        (PROG_READ, read.probe_offset),
        (PROG_CLOSE, close.probe_offset),
    ];
    points.extend(read.ret_offsets.iter().map(|&o| (PROG_READ_RET, o)));
    let version = bin.go_version.clone().unwrap_or_else(|| "unknown".into());
    tracing::debug!(
        exe = %exe.display(),
        go_version = %version,
        text_start = bin.text_start(),
        text_start_source = bin.text_start_source,
        read_ret_sites = read.ret_offsets.len(),
        "Go TLS functions resolved"
    );
    Ok((version, points))
}

pub(super) fn detach(ebpf: &mut Ebpf, links: Links) {
    for (program, link) in links {
        match uprobe(ebpf, program).map(|p| p.detach(link)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(program, %error, "detaching a TLS uprobe failed");
            }
            Err(error) => tracing::debug!(program, %error, "detaching a TLS uprobe failed"),
        }
    }
}

/// Resolves `exe` and attaches every program; all or none.
pub(super) fn attach_binary(ebpf: &mut Ebpf, exe: &Path) -> Result<(String, Links), TlsError> {
    let (version, points) = attach_points(exe)?;
    let mut links = Vec::with_capacity(points.len());
    for (program, offset) in points {
        let result = uprobe(ebpf, program).and_then(|p| {
            p.attach(offset, exe, UProbeScope::AllProcesses)
                .map_err(|source| TlsError::Attach {
                    program,
                    offset,
                    source,
                })
        });
        match result {
            Ok(link) => links.push((program, link)),
            Err(e) => {
                detach(ebpf, links);
                return Err(e);
            }
        }
    }
    Ok((version, links))
}
