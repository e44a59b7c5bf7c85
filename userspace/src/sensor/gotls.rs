//! Attaches the Go `crypto/tls.(*Conn)` uprobes to the executables of watched replicas:
//! once per distinct binary (by device and inode of `/proc/<pid>/exe`, since replicas
//! usually share one), each binary with its own resolution (different Traefik versions
//! put the functions elsewhere). A uprobe fires in every process mapping the file; the
//! kernel programs keep only watched cgroups.
//!
//! A binary whose resolution or attachment fails is remembered with its error and tried
//! again after a doubling wait (the same file rarely resolves differently, but a
//! transient failure must not blind the agent for good); its replicas keep their
//! plaintext capture meanwhile.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::{
    programs::{
        uprobe::{UProbeLinkId, UProbeScope},
        ProgramError, UProbe,
    },
    Ebpf,
};

use routeskew_common::Program;

use super::{
    gobin::{GoBinError, GoBinary},
    hooks::describe_program_error,
    names,
};

pub const WRITE: &str = "crypto/tls.(*Conn).Write";
pub const READ: &str = "crypto/tls.(*Conn).Read";
pub const CLOSE: &str = "crypto/tls.(*Conn).Close";

const PROG_WRITE: &str = names::program(Program::GoTlsWrite);
const PROG_READ: &str = names::program(Program::GoTlsRead);
const PROG_READ_RET: &str = names::program(Program::GoTlsReadRet);
const PROG_CLOSE: &str = names::program(Program::GoTlsClose);
const PROGRAMS: [&str; 4] = [PROG_WRITE, PROG_READ, PROG_READ_RET, PROG_CLOSE];

/// How often a uprobe program ran and for how long in total (the kernel counts only
/// while run-time statistics are enabled, see [`super::enable_run_stats`]).
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

/// A file, as the kernel identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BinaryId {
    pub dev: u64,
    pub ino: u64,
}

/// How the uprobes fared on one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsBinaryStatus {
    pub id: BinaryId,
    /// `/proc/<pid>/exe` of the first process seen running it.
    pub exe: PathBuf,
    /// Processes (of those passed in) that run it.
    pub pids: Vec<u32>,
    /// The Go version, or why the probes are not on it.
    pub outcome: Result<String, String>,
}

#[derive(Debug, thiserror::Error)]
enum AttachError {
    #[error(transparent)]
    Resolve(#[from] GoBinError),
    #[error("program {0} is not in the eBPF object (stale object?)")]
    Missing(&'static str),
    #[error("loading {program}: {error}")]
    Load {
        program: &'static str,
        error: String,
    },
    #[error("attaching {program} at file offset {offset:#x}: {error}")]
    Attach {
        program: &'static str,
        offset: u64,
        #[source]
        error: ProgramError,
    },
}

/// Uprobe links of one binary, by program.
type Links = Vec<(&'static str, UProbeLinkId)>;
/// (program, file offset) pairs to attach.
type Points = Vec<(&'static str, u64)>;

struct Attached {
    exe: PathBuf,
    /// Go version, or the error.
    outcome: Result<(String, Links), String>,
    /// After a failure: when to try this binary again, and the wait after that.
    retry: Option<(Instant, Duration)>,
}

/// First wait before a binary whose resolution failed is tried again. Resolution reads
/// the file only, so a failure usually repeats: the waits double up to
/// [`RETRY_MAX`], which still recovers from a transient one (a process caught while it
/// was exec'ing, a file read while it was replaced).
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(600);

/// The uprobes' state across discovery scans.
#[derive(Default)]
pub struct TlsProbes {
    binaries: BTreeMap<BinaryId, Attached>,
    /// The wait after the next failure of a binary that failed before.
    next_wait: BTreeMap<BinaryId, Duration>,
    loaded: Option<Result<(), String>>,
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut UProbe, AttachError> {
    let program = ebpf.program_mut(name).ok_or(AttachError::Missing(name))?;
    program
        .try_into()
        .map_err(|e: ProgramError| AttachError::Load {
            program: name,
            error: e.to_string(),
        })
}

fn load_all(ebpf: &mut Ebpf) -> Result<(), String> {
    for name in PROGRAMS {
        let p = uprobe(ebpf, name).map_err(|e| e.to_string())?;
        p.load()
            .map_err(|e| format!("loading {name}: {}", describe_program_error(&e)))?;
    }
    Ok(())
}

/// Entry and RET-site offsets of the three methods, as (program, file offset) pairs.
fn attach_points(exe: &std::path::Path) -> Result<(String, Points), GoBinError> {
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

fn detach(ebpf: &mut Ebpf, links: Links) {
    for (name, link) in links {
        let result = uprobe(ebpf, name)
            .map_err(|e| e.to_string())
            .and_then(|p| p.detach(link).map_err(|e| e.to_string()));
        if let Err(error) = result {
            tracing::debug!(program = name, %error, "detaching a TLS uprobe failed");
        }
    }
}

fn attach_binary(ebpf: &mut Ebpf, exe: &std::path::Path) -> Result<(String, Links), AttachError> {
    let (version, points) = attach_points(exe)?;
    let mut links = Vec::with_capacity(points.len());
    for (name, offset) in points {
        let result = uprobe(ebpf, name).and_then(|p| {
            p.attach(offset, exe, UProbeScope::AllProcesses)
                .map_err(|error| AttachError::Attach {
                    program: name,
                    offset,
                    error,
                })
        });
        match result {
            Ok(link) => links.push((name, link)),
            Err(e) => {
                detach(ebpf, links);
                return Err(e);
            }
        }
    }
    Ok((version, links))
}

impl TlsProbes {
    /// Puts the uprobes on the binaries these processes run and takes them off binaries
    /// none of them runs any more. Returns one status per binary in use.
    pub fn sync(&mut self, ebpf: &mut Ebpf, pids: &[u32]) -> Vec<TlsBinaryStatus> {
        let mut in_use: BTreeMap<BinaryId, (PathBuf, Vec<u32>)> = BTreeMap::new();
        for &pid in pids {
            let exe = PathBuf::from(format!("/proc/{pid}/exe"));
            match std::fs::metadata(&exe) {
                Ok(m) => {
                    let id = BinaryId {
                        dev: m.dev(),
                        ino: m.ino(),
                    };
                    in_use
                        .entry(id)
                        .or_insert_with(|| (exe, Vec::new()))
                        .1
                        .push(pid);
                }
                // Gone between discovery and now: the next scan drops it.
                Err(error) => tracing::debug!(pid, %error, "no executable for process"),
            }
        }
        let gone: BTreeSet<BinaryId> = self
            .binaries
            .keys()
            .filter(|id| !in_use.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.next_wait.remove(&id);
            if let Some(Attached {
                exe,
                outcome: Ok((_, links)),
                ..
            }) = self.binaries.remove(&id)
            {
                tracing::info!(exe = %exe.display(), "no watched replica runs this binary any more; TLS uprobes detached");
                detach(ebpf, links);
            }
        }
        let mut out = Vec::with_capacity(in_use.len());
        let now = Instant::now();
        for (id, (exe, pids)) in in_use {
            let retry = match self.binaries.get(&id) {
                Some(Attached {
                    retry: Some((at, wait)),
                    ..
                }) if now >= *at => Some(*wait),
                _ => None,
            };
            if let Some(wait) = retry {
                self.binaries.remove(&id);
                tracing::info!(exe = %exe.display(), dev = id.dev, inode = id.ino, "trying the TLS uprobes on this binary again");
                self.next_wait.insert(id, (wait * 2).min(RETRY_MAX));
            }
            if !self.binaries.contains_key(&id) {
                let loaded = self.loaded.get_or_insert_with(|| load_all(ebpf)).clone();
                let outcome =
                    loaded.and_then(|()| attach_binary(ebpf, &exe).map_err(|e| e.to_string()));
                match &outcome {
                    Ok((version, links)) => tracing::info!(
                        exe = %exe.display(),
                        dev = id.dev,
                        inode = id.ino,
                        go_version = %version,
                        uprobes = links.len(),
                        "TLS uprobes attached"
                    ),
                    Err(error) => tracing::warn!(
                        exe = %exe.display(),
                        dev = id.dev,
                        inode = id.ino,
                        %error,
                        "TLS uprobes not attached: this binary's TLS traffic goes unseen (plaintext capture continues)"
                    ),
                }
                let retry = outcome.is_err().then(|| {
                    let wait = self.next_wait.get(&id).copied().unwrap_or(RETRY_FIRST);
                    (now + wait, wait)
                });
                if outcome.is_ok() {
                    self.next_wait.remove(&id);
                }
                self.binaries.insert(
                    id,
                    Attached {
                        exe: exe.clone(),
                        outcome,
                        retry,
                    },
                );
            }
            let Some(entry) = self.binaries.get(&id) else {
                continue;
            };
            out.push(TlsBinaryStatus {
                id,
                exe: entry.exe.clone(),
                pids,
                outcome: entry
                    .outcome
                    .as_ref()
                    .map(|(v, _)| v.clone())
                    .map_err(Clone::clone),
            });
        }
        out
    }
}
