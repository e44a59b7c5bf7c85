//! The uprobe programs: loading them once, resolving a binary's attach points, attaching
//! and detaching them, and their run statistics.

use std::path::Path;

use aya::Ebpf;
use routeskew_common::Program;

use super::{TlsError, CLOSE, READ, WRITE};
pub(super) use crate::sensor::uprobes::Links;
use crate::sensor::{
    gobin::GoBinary,
    names,
    uprobes::{self, uprobe},
};

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

/// (program, file offset) pairs to attach.
pub(crate) type Points = Vec<(&'static str, u64)>;

pub(super) fn load_all(ebpf: &mut Ebpf) -> Result<(), TlsError> {
    Ok(uprobes::load_all(ebpf, &PROGRAMS)?)
}

/// Entry and RET-site offsets of the three methods, as (program, file offset) pairs
/// (reads the file only: runs off the run loop).
pub(super) fn attach_points(exe: &Path) -> Result<(String, Points), TlsError> {
    let bin = GoBinary::open(exe)?;
    let points = points_of(&bin);
    // Whatever was read is void when the file shrank meanwhile (its errors too).
    bin.intact()?;
    let points = points?;
    let version = bin.go_version.clone().unwrap_or_else(|| "unknown".into());
    tracing::debug!(
        exe = %exe.display(),
        go_version = %version,
        text_start = bin.text_start(),
        text_start_source = bin.text_start_source,
        points = points.len(),
        "Go TLS functions resolved"
    );
    Ok((version, points))
}

fn points_of(bin: &GoBinary) -> Result<Points, TlsError> {
    let write = bin.function(WRITE)?;
    let read = bin.function(READ)?;
    let close = bin.function(CLOSE)?;
    let mut points = vec![
        (PROG_WRITE, write.probe_offset),
        (PROG_READ, read.probe_offset),
        (PROG_CLOSE, close.probe_offset),
    ];
    points.extend(read.ret_offsets.iter().map(|&o| (PROG_READ_RET, o)));
    Ok(points)
}

pub(super) fn detach(ebpf: &mut Ebpf, links: Links) {
    uprobes::detach(ebpf, links);
}

/// Attaches every program at the resolved points of `exe`; all or none.
pub(super) fn attach_resolved(
    ebpf: &mut Ebpf,
    exe: &Path,
    version: String,
    points: Points,
) -> Result<(String, Links), TlsError> {
    let mut links = Vec::with_capacity(points.len());
    for (program, offset) in points {
        match uprobes::attach(ebpf, program, exe, offset, None) {
            Ok(link) => links.push((program, link)),
            Err(e) => {
                detach(ebpf, links);
                return Err(e.into());
            }
        }
    }
    Ok((version, links))
}
