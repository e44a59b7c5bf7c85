//! Attaches the Go `crypto/tls.(*Conn)` uprobes to the executables of watched replicas:
//! once per distinct binary (by device and inode of `/proc/<pid>/exe`, since replicas
//! usually share one), each binary with its own resolution (different Traefik versions
//! put the functions elsewhere). A uprobe fires in every process mapping the file; the
//! kernel programs keep only watched cgroups.
//!
//! A binary whose resolution or attachment fails is remembered with its error and tried
//! again after a doubling wait (the same file rarely resolves differently, but a
//! transient failure must not blind the agent for good); its replicas keep their
//! plaintext capture meanwhile. Binaries are resolved off the run loop
//! ([`crate::sensor::resolve`]); until the answer is in, a binary's processes are in
//! [`TlsProbes::pending_pids`].

mod error;
mod uprobes;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::Ebpf;
use tokio::sync::Notify;

use crate::sensor::resolve::{Resolutions, RESOLVE_TIMEOUT};
pub use error::TlsError;
use uprobes::{attach_points, attach_resolved, detach, load_all, Links, Points};
pub use uprobes::{run_stats, RunStats};

pub const WRITE: &str = "crypto/tls.(*Conn).Write";
pub const READ: &str = "crypto/tls.(*Conn).Read";
pub const CLOSE: &str = "crypto/tls.(*Conn).Close";

/// A file, as the kernel identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BinaryId {
    pub dev: u64,
    pub ino: u64,
}

/// How the uprobes fared on one binary.
#[derive(Debug, Clone)]
pub struct TlsBinaryStatus {
    pub id: BinaryId,
    /// `/proc/<pid>/exe` of the first process seen running it.
    pub exe: PathBuf,
    /// Processes (of those passed in) that run it.
    pub pids: Vec<u32>,
    /// The Go version, or why the probes are not on it (shared with the remembered
    /// failure until the binary is tried again).
    pub outcome: Result<String, Arc<TlsError>>,
}

/// Equal statuses name the same binary, processes and version, or the very same
/// remembered failure (a retried binary's new failure is a different one, even with the
/// same text).
impl PartialEq for TlsBinaryStatus {
    fn eq(&self, other: &Self) -> bool {
        let same_outcome = match (&self.outcome, &other.outcome) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.id == other.id && self.exe == other.exe && self.pids == other.pids && same_outcome
    }
}

impl Eq for TlsBinaryStatus {}

/// The distinct binaries these processes run (by `/proc/<pid>/exe`'s device and inode),
/// each with the first process's exe path and every process running it. A process that
/// is gone is skipped (the next discovery scan drops it).
pub(crate) fn binary_ids(pids: &[u32]) -> BTreeMap<BinaryId, (PathBuf, Vec<u32>)> {
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
    in_use
}

struct Attached {
    exe: PathBuf,
    /// Go version, or the error.
    outcome: Result<(String, Links), Arc<TlsError>>,
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
pub struct TlsProbes {
    binaries: BTreeMap<BinaryId, Attached>,
    resolving: Resolutions<BinaryId, Result<(String, Points), TlsError>>,
    /// Processes (of the last sync) whose binary is being resolved.
    pending_pids: Vec<u32>,
    /// The wait after the next failure of a binary that failed before.
    next_wait: BTreeMap<BinaryId, Duration>,
    loaded: Option<Result<(), Arc<TlsError>>>,
}

impl TlsProbes {
    /// Nothing attached yet; `done` is woken when a binary is resolved.
    pub fn new(done: Arc<Notify>) -> Self {
        TlsProbes {
            binaries: BTreeMap::new(),
            resolving: Resolutions::new(done, RESOLVE_TIMEOUT),
            pending_pids: Vec::new(),
            next_wait: BTreeMap::new(),
            loaded: None,
        }
    }

    /// Processes (of the last [`Self::sync`]) whose binary is being resolved.
    pub fn pending_pids(&self) -> &[u32] {
        &self.pending_pids
    }

    /// Puts the uprobes on the binaries these processes run and takes them off binaries
    /// none of them runs any more. Returns one status per binary in use that is resolved;
    /// the others are pending ([`Self::pending_pids`]).
    pub fn sync(&mut self, ebpf: &mut Ebpf, pids: &[u32]) -> Vec<TlsBinaryStatus> {
        let in_use = binary_ids(pids);
        self.resolving.retain(|id| in_use.contains_key(id));
        self.pending_pids.clear();
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
                let loaded = self
                    .loaded
                    .get_or_insert_with(|| load_all(ebpf).map_err(Arc::new))
                    .clone();
                let outcome = match loaded {
                    Err(e) => Err(e),
                    Ok(()) => match self.resolving.poll(id, &exe, |exe| attach_points(&exe)) {
                        None => {
                            self.pending_pids.extend(pids);
                            continue;
                        }
                        Some(answer) => answer
                            .map_err(TlsError::from)
                            .and_then(|resolved| resolved)
                            .and_then(|(version, points)| {
                                attach_resolved(ebpf, &exe, version, points)
                            })
                            .map_err(Arc::new),
                    },
                };
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
                    .map_err(Arc::clone),
            });
        }
        out
    }
}
