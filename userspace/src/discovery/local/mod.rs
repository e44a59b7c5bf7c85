//! Local discovery: Traefik replicas are processes on this machine, found by name, pid or
//! cgroup, re-scanned periodically so restarts and new replicas are picked up.
//!
//! The kernel filter matches cgroup v2 ids (`bpf_get_current_cgroup_id`), so every replica
//! is resolved to the cgroup v2 directory its process lives in; the id is that directory's
//! inode number.
//!
//! Submodules: `resolve` (from a pid or a cgroup to a named target), `cgroup2` (the
//! cgroup2 mount, cgroup ids, a process's unified cgroup).

mod cgroup2;
mod resolve;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::endpoints;
use super::{Endpoint, Target, TargetSet};
use resolve::{dedup_names, Found};

pub use cgroup2::{cgroup2_mount, cgroup_id, unified_cgroup_path};

/// Environment variable a replica process may carry to name itself.
pub const REPLICA_ENV: &str = "ROUTESKEW_REPLICA";

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no cgroup2 filesystem in {mountinfo}: routeskew needs the cgroup v2 hierarchy mounted (pure v2 or hybrid)")]
    NoCgroup2 { mountinfo: PathBuf },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}: no cgroup v2 (0::) line")]
    NoUnifiedCgroup { path: PathBuf },
    #[error("{path} is not a cgroup v2 directory: it is outside the cgroup2 mount {root}")]
    NotCgroup2 { path: PathBuf, root: PathBuf },
}

#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Match processes whose comm or executable file name equals this.
    pub process_name: Option<String>,
    pub pids: Vec<u32>,
    pub cgroups: Vec<PathBuf>,
    pub namespace: String,
    /// `/proc` normally; a fixture tree in tests.
    pub proc_root: PathBuf,
    /// How long a process's listening endpoints (for the prober) are reused before they
    /// are read again; `None` when nothing probes, so they are never read. Reading them
    /// walks the kernel's whole TCP established hash (`/proc/<pid>/net/tcp`), which
    /// costs milliseconds of CPU on a busy node, too much for every rescan.
    pub endpoint_refresh: Option<Duration>,
}

/// How often the prober's endpoints are read again by default: listening sockets change
/// when Traefik restarts (a new pid, read at once), rarely otherwise.
pub const ENDPOINT_REFRESH: Duration = Duration::from_secs(30);

/// A replica that was asked for but could not be resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanFailure {
    pub what: String,
    pub reason: ScanFailureReason,
}

/// Why a replica could not be resolved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScanFailureReason {
    #[error(transparent)]
    Discovery(#[from] Arc<DiscoveryError>),
    /// A container the pod status names by an unusable id.
    #[error("{source}")]
    Container {
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("container cgroup exists only in cgroup v1 ({}): the kernel filter needs cgroup v2 (a unified or hybrid host)", dir.display())]
    OnlyCgroupV1 { dir: PathBuf },
    #[error("no cgroup for pod uid {uid} container {container_id} under {under} ({layout})")]
    NoCgroup {
        uid: String,
        container_id: String,
        under: String,
        layout: String,
    },
}

impl From<DiscoveryError> for ScanFailureReason {
    fn from(e: DiscoveryError) -> Self {
        ScanFailureReason::Discovery(Arc::new(e))
    }
}

/// The same failure as last time (logged once): same kind and same words.
impl PartialEq for ScanFailureReason {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub targets: TargetSet,
    pub failures: Vec<ScanFailure>,
}

pub struct LocalDiscovery {
    cfg: LocalConfig,
    cgroup2_root: PathBuf,
    /// Listening endpoints per pid, and when they were read.
    endpoint_cache: Mutex<HashMap<u32, (Instant, Vec<Endpoint>)>>,
}

impl LocalDiscovery {
    /// Finds the cgroup v2 mount from `<proc_root>/self/mountinfo`.
    pub fn new(cfg: LocalConfig) -> Result<Self, DiscoveryError> {
        let mountinfo = cfg.proc_root.join("self/mountinfo");
        let text = fs::read_to_string(&mountinfo).map_err(|source| DiscoveryError::Io {
            path: mountinfo.clone(),
            source,
        })?;
        let root = cgroup2_mount(&text).ok_or(DiscoveryError::NoCgroup2 { mountinfo })?;
        Ok(Self::with_cgroup2_root(cfg, root))
    }

    pub fn with_cgroup2_root(cfg: LocalConfig, cgroup2_root: PathBuf) -> Self {
        LocalDiscovery {
            cfg,
            cgroup2_root,
            endpoint_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The listening endpoints of `pid`, from the cache while fresh.
    fn endpoints_of(&self, pid: u32) -> Vec<Endpoint> {
        let Some(refresh) = self.cfg.endpoint_refresh else {
            return Vec::new();
        };
        let mut cache = self
            .endpoint_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, eps)) = cache.get(&pid) {
            if at.elapsed() < refresh {
                return eps.clone();
            }
        }
        let eps = endpoints::listening_endpoints(&self.cfg.proc_root, pid);
        // A Traefik that has just started may not listen yet: read it again next scan
        // rather than leave the prober without endpoints for a whole refresh period.
        if eps.is_empty() {
            cache.remove(&pid);
        } else {
            cache.insert(pid, (Instant::now(), eps.clone()));
        }
        eps
    }

    /// Forgets the endpoints of processes no longer among the targets.
    fn prune_endpoints(&self, targets: &[Target]) {
        let live: HashSet<u32> = targets
            .iter()
            .flat_map(|t| t.pids.iter().copied())
            .collect();
        self.endpoint_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|pid, _| live.contains(pid));
    }

    pub fn cgroup2_root(&self) -> &Path {
        &self.cgroup2_root
    }

    pub fn scan(&self) -> Scan {
        let mut found: Vec<Found> = Vec::new();
        let mut failures = Vec::new();

        if let Some(name) = &self.cfg.process_name {
            for pid in self.list_pids() {
                if self.process_matches(pid, name) {
                    match self.resolve_process(pid) {
                        Ok(f) => found.push(f),
                        // The process exited between listing and reading: not a failure.
                        Err(e) => tracing::debug!(pid, error = %e, "process vanished during scan"),
                    }
                }
            }
        }
        for &pid in &self.cfg.pids {
            if found.iter().any(|f| f.pid == Some(pid)) {
                continue;
            }
            match self.resolve_process(pid) {
                Ok(f) => found.push(f),
                Err(e) => failures.push(ScanFailure {
                    what: format!("pid {pid}"),
                    reason: e.into(),
                }),
            }
        }
        let mut cgroup_targets = Vec::new();
        for cg in &self.cfg.cgroups {
            match self.resolve_cgroup(cg) {
                Ok(t) => cgroup_targets.push(t),
                Err(e) => failures.push(ScanFailure {
                    what: format!("cgroup {}", cg.display()),
                    reason: e.into(),
                }),
            }
        }

        let mut targets = self.name_processes(found);
        targets.extend(cgroup_targets);
        dedup_names(&mut targets);
        targets.sort_by(|a, b| a.replica.cmp(&b.replica));
        self.prune_endpoints(&targets);
        Scan {
            targets: TargetSet::new(targets),
            failures,
        }
    }
}
