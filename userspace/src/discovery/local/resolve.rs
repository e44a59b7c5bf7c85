//! From a pid or a cgroup directory to a target: which processes are replicas, which
//! cgroup each lives in, and the stable name its series carry.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use super::{cgroup_id, unified_cgroup_path, DiscoveryError, LocalDiscovery, REPLICA_ENV};
use crate::discovery::{Attribution, Replica, Target};

impl LocalDiscovery {
    pub(super) fn list_pids(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir(&self.cfg.proc_root) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        pids
    }

    fn proc_path(&self, pid: u32, file: &str) -> PathBuf {
        self.cfg.proc_root.join(pid.to_string()).join(file)
    }

    pub(super) fn process_matches(&self, pid: u32, name: &str) -> bool {
        let comm = fs::read_to_string(self.proc_path(pid, "comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return true;
        }
        // comm is truncated to 15 bytes and can be changed by the process; the executable
        // name is the second opinion.
        fs::read_link(self.proc_path(pid, "exe"))
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy() == name))
            .unwrap_or(false)
    }

    pub(super) fn resolve_process(&self, pid: u32) -> Result<Found, DiscoveryError> {
        let cgroup_file = self.proc_path(pid, "cgroup");
        let text = fs::read_to_string(&cgroup_file).map_err(|source| DiscoveryError::Io {
            path: cgroup_file.clone(),
            source,
        })?;
        let rel = unified_cgroup_path(&text)
            .ok_or(DiscoveryError::NoUnifiedCgroup { path: cgroup_file })?;
        let dir = self.cgroup2_root.join(rel.trim_start_matches('/'));
        let cgroup_id = cgroup_id(&dir)?;
        let comm = fs::read_to_string(self.proc_path(pid, "comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_else(|_| "process".into());
        let env_name = fs::read(self.proc_path(pid, "environ"))
            .ok()
            .and_then(|env| replica_env(&env));
        let cgroup_procs = fs::read_to_string(dir.join("cgroup.procs"))
            .map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse::<u32>().ok())
                    .collect()
            })
            .unwrap_or_else(|_| Vec::new());
        Ok(Found {
            pid: Some(pid),
            comm,
            env_name,
            cgroup_dir: dir,
            cgroup_rel: rel,
            cgroup_id,
            cgroup_procs,
        })
    }

    pub(super) fn resolve_cgroup(&self, cg: &Path) -> Result<Target, DiscoveryError> {
        let dir = if cg.is_absolute() {
            cg.to_path_buf()
        } else {
            self.cgroup2_root.join(cg)
        };
        // A directory elsewhere (a typo for the v1 hierarchy, `/sys/fs/cgroup/x` on a
        // hybrid host) has an inode and maybe a `cgroup.procs` file, but no process is in
        // it as the kernel filter sees cgroups: watching it would count nothing, silently.
        let canonical = |p: &Path| {
            fs::canonicalize(p).map_err(|source| DiscoveryError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let root = canonical(&self.cgroup2_root)?;
        if !canonical(&dir)?.starts_with(&root) {
            return Err(DiscoveryError::NotCgroup2 { path: dir, root });
        }
        let cgroup_id = cgroup_id(&dir)?;
        let procs_file = dir.join("cgroup.procs");
        let pids: Vec<u32> = fs::read_to_string(&procs_file)
            .map_err(|source| DiscoveryError::Io {
                path: procs_file,
                source,
            })?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let mut endpoints: Vec<_> = pids
            .iter()
            .flat_map(|&pid| self.endpoints_of(pid))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        Ok(Target {
            replica: Replica {
                name: leaf_name(&dir.to_string_lossy()).unwrap_or_else(|| "cgroup".into()),
                namespace: self.cfg.namespace.clone(),
            },
            cgroup_id,
            pids,
            attribution: Attribution::Cgroup,
            endpoints,
            group: self.cfg.namespace.clone(),
            ready_since: None,
        })
    }

    /// A stable name per process: its `ROUTESKEW_REPLICA`, else the name of a cgroup it
    /// has to itself (a systemd unit, a container), else `comm-pid`.
    pub(super) fn name_processes(&self, found: Vec<Found>) -> Vec<Target> {
        let mut per_cgroup: HashMap<u64, usize> = HashMap::new();
        for f in &found {
            *per_cgroup.entry(f.cgroup_id).or_default() += 1;
        }
        found
            .into_iter()
            .map(|f| {
                let pid = f.pid.unwrap_or(0);
                let dedicated = per_cgroup.get(&f.cgroup_id) == Some(&1)
                    && f.cgroup_procs.iter().all(|&p| p == pid);
                let name = f
                    .env_name
                    .clone()
                    .or_else(|| {
                        dedicated
                            .then(|| leaf_name(&f.cgroup_rel))
                            .flatten()
                            .map(|leaf| leaf.trim_end_matches(".service").to_string())
                    })
                    .unwrap_or_else(|| format!("{}-{}", f.comm, pid));
                tracing::trace!(pid, cgroup = %f.cgroup_dir.display(), replica = %name, "resolved replica");
                Target {
                    replica: Replica {
                        name,
                        namespace: self.cfg.namespace.clone(),
                    },
                    cgroup_id: f.cgroup_id,
                    pids: vec![pid],
                    attribution: Attribution::Pids,
                    endpoints: self.endpoints_of(pid),
                    group: self.cfg.namespace.clone(),
                    ready_since: None,
                }
            })
            .collect()
    }
}

pub(super) struct Found {
    pub(super) pid: Option<u32>,
    comm: String,
    env_name: Option<String>,
    cgroup_dir: PathBuf,
    cgroup_rel: String,
    cgroup_id: u64,
    cgroup_procs: Vec<u32>,
}

/// Two replicas must never share a name (their series would merge): suffix the pid.
pub(super) fn dedup_names(targets: &mut [Target]) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in targets.iter() {
        *counts.entry(t.replica.name.clone()).or_default() += 1;
    }
    for t in targets.iter_mut() {
        if counts.get(&t.replica.name).copied().unwrap_or(0) > 1 {
            if let Some(pid) = t.pids.first() {
                t.replica.name = format!("{}-{}", t.replica.name, pid);
            }
        }
    }
}

fn replica_env(environ: &[u8]) -> Option<String> {
    environ
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix(REPLICA_ENV)?.strip_prefix('='))
        .map(sanitize_name)
        .filter(|n| !n.is_empty())
}

/// Replica names become label values: keep them short and printable.
fn sanitize_name(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        .take(63)
        .collect()
}

fn leaf_name(path: &str) -> Option<String> {
    let leaf = path.trim_end_matches('/').rsplit('/').next()?;
    let name = sanitize_name(leaf);
    (!name.is_empty()).then_some(name)
}
