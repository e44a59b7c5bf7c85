//! Local discovery: Traefik replicas are processes on this machine, found by name, pid or
//! cgroup, re-scanned periodically so restarts and new replicas are picked up.
//!
//! The kernel filter matches cgroup v2 ids (`bpf_get_current_cgroup_id`), so every replica
//! is resolved to the cgroup v2 directory its process lives in; the id is that directory's
//! inode number.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::endpoints;
use super::{Attribution, Endpoint, Replica, Target, TargetSet};

/// Environment variable a replica process may carry to name itself.
pub const REPLICA_ENV: &str = "ROUTESKEW_REPLICA";

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("no cgroup2 filesystem in {mountinfo}: routeskew needs the cgroup v2 hierarchy mounted (pure v2 or hybrid)")]
    NoCgroup2 { mountinfo: PathBuf },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanFailure {
    pub what: String,
    pub reason: String,
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
                    reason: e.to_string(),
                }),
            }
        }
        let mut cgroup_targets = Vec::new();
        for cg in &self.cfg.cgroups {
            match self.resolve_cgroup(cg) {
                Ok(t) => cgroup_targets.push(t),
                Err(e) => failures.push(ScanFailure {
                    what: format!("cgroup {}", cg.display()),
                    reason: e.to_string(),
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

    fn list_pids(&self) -> Vec<u32> {
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

    fn process_matches(&self, pid: u32, name: &str) -> bool {
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

    fn resolve_process(&self, pid: u32) -> Result<Found, DiscoveryError> {
        let cgroup_file = self.proc_path(pid, "cgroup");
        let text = fs::read_to_string(&cgroup_file).map_err(|source| DiscoveryError::Io {
            path: cgroup_file.clone(),
            source,
        })?;
        let rel = unified_cgroup_path(&text).ok_or_else(|| DiscoveryError::Io {
            path: cgroup_file,
            source: std::io::Error::other("no cgroup v2 (0::) line"),
        })?;
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

    fn resolve_cgroup(&self, cg: &Path) -> Result<Target, DiscoveryError> {
        let dir = if cg.is_absolute() {
            cg.to_path_buf()
        } else {
            self.cgroup2_root.join(cg)
        };
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
        })
    }

    /// A stable name per process: its `ROUTESKEW_REPLICA`, else the name of a cgroup it
    /// has to itself (a systemd unit, a container), else `comm-pid`.
    fn name_processes(&self, found: Vec<Found>) -> Vec<Target> {
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
                }
            })
            .collect()
    }
}

struct Found {
    pid: Option<u32>,
    comm: String,
    env_name: Option<String>,
    cgroup_dir: PathBuf,
    cgroup_rel: String,
    cgroup_id: u64,
    cgroup_procs: Vec<u32>,
}

/// Two replicas must never share a name (their series would merge): suffix the pid.
fn dedup_names(targets: &mut [Target]) {
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

/// The cgroup v2 id of a directory: its inode number in the cgroup2 filesystem.
pub fn cgroup_id(dir: &Path) -> Result<u64, DiscoveryError> {
    fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| DiscoveryError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Mount point of the cgroup2 filesystem in a mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = pre.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mount(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `0::/path` line of /proc/<pid>/cgroup (the unified hierarchy).
pub fn unified_cgroup_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Origin;

    /// A fake /proc and cgroup2 tree in a temp directory.
    struct Fixture {
        root: PathBuf,
    }

    impl Fixture {
        fn new(tag: &str) -> Self {
            let root = std::env::temp_dir().join(format!(
                "routeskew-local-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            fs::create_dir_all(root.join("proc")).expect("mkdir");
            fs::create_dir_all(root.join("cg")).expect("mkdir");
            Fixture { root }
        }
        fn proc_root(&self) -> PathBuf {
            self.root.join("proc")
        }
        fn cg_root(&self) -> PathBuf {
            self.root.join("cg")
        }
        fn cgroup(&self, rel: &str, procs: &[u32]) -> u64 {
            let dir = self.cg_root().join(rel);
            fs::create_dir_all(&dir).expect("mkdir");
            let text: String = procs.iter().map(|p| format!("{p}\n")).collect();
            fs::write(dir.join("cgroup.procs"), text).expect("write");
            cgroup_id(&dir).expect("ino")
        }
        fn process(&self, pid: u32, comm: &str, cgroup_rel: &str, env: &[&str]) {
            let dir = self.proc_root().join(pid.to_string());
            fs::create_dir_all(&dir).expect("mkdir");
            fs::write(dir.join("comm"), format!("{comm}\n")).expect("write");
            fs::write(
                dir.join("cgroup"),
                format!("4:memory:/whatever\n0::/{cgroup_rel}\n"),
            )
            .expect("write");
            let environ: Vec<u8> = env
                .iter()
                .flat_map(|kv| kv.bytes().chain(std::iter::once(0)))
                .collect();
            fs::write(dir.join("environ"), environ).expect("write");
        }
        fn discovery(&self, cfg: impl FnOnce(&mut LocalConfig)) -> LocalDiscovery {
            let mut c = LocalConfig {
                process_name: Some("traefik".into()),
                pids: vec![],
                cgroups: vec![],
                namespace: "local".into(),
                proc_root: self.proc_root(),
                endpoint_refresh: Some(Duration::ZERO),
            };
            cfg(&mut c);
            LocalDiscovery::with_cgroup2_root(c, self.cg_root())
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    /// Process `pid` listens on 127.0.0.1:8080 when `listening`, on nothing otherwise.
    fn listener(f: &Fixture, pid: u32, listening: bool) {
        let dir = f.proc_root().join(pid.to_string());
        fs::create_dir_all(dir.join("net")).expect("mkdir");
        fs::create_dir_all(dir.join("fd")).expect("mkdir");
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let row = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51234 1 0000000000000000 100 0 0 10 0\n";
        let text = if listening {
            format!("{header}{row}")
        } else {
            header.to_string()
        };
        fs::write(dir.join("net/tcp"), text).expect("write");
        let link = dir.join("fd/3");
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("socket:[51234]", link).expect("symlink");
        }
    }

    fn endpoint_addrs(scan: &Scan) -> Vec<String> {
        scan.targets
            .targets()
            .iter()
            .flat_map(|t| t.endpoints.iter().map(|e| e.addr.to_string()))
            .collect()
    }

    #[test]
    fn listening_endpoints_are_cached_and_not_read_without_a_prober() {
        let f = Fixture::new("endpoints");
        f.cgroup("kubepods/traefik-a", &[42]);
        f.process(42, "traefik", "kubepods/traefik-a", &[]);
        listener(&f, 42, true);

        let cached = f.discovery(|c| c.endpoint_refresh = Some(Duration::from_secs(3600)));
        let fresh = f.discovery(|c| c.endpoint_refresh = Some(Duration::ZERO));
        let none = f.discovery(|c| c.endpoint_refresh = None);
        assert_eq!(endpoint_addrs(&cached.scan()), ["127.0.0.1:8080"]);
        assert_eq!(endpoint_addrs(&fresh.scan()), ["127.0.0.1:8080"]);
        assert!(endpoint_addrs(&none.scan()).is_empty());

        // The listener goes: only a discovery whose copy is stale reads that.
        listener(&f, 42, false);
        assert_eq!(endpoint_addrs(&cached.scan()), ["127.0.0.1:8080"]);
        assert!(endpoint_addrs(&fresh.scan()).is_empty());

        // A process that is no longer a target is forgotten, so a new one reusing its
        // pid is read afresh.
        fs::remove_dir_all(f.proc_root().join("42")).expect("rm");
        assert!(cached.scan().targets.targets().is_empty());
        f.process(42, "traefik", "kubepods/traefik-a", &[]);
        listener(&f, 42, false);
        assert!(endpoint_addrs(&cached.scan()).is_empty());
        // Not listening yet is not remembered: the next scan sees the listener.
        listener(&f, 42, true);
        assert_eq!(endpoint_addrs(&cached.scan()), ["127.0.0.1:8080"]);
    }

    fn names(scan: &Scan) -> Vec<String> {
        scan.targets
            .targets()
            .iter()
            .map(|t| t.replica.name.clone())
            .collect()
    }

    #[test]
    fn parses_mountinfo_hybrid_and_pure_v2() {
        let hybrid = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        let escaped = "35 24 0:30 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(escaped), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn finds_named_processes_with_stable_names() {
        let fx = Fixture::new("named");
        let a = fx.cgroup("demo/traefik-1", &[100]);
        let b = fx.cgroup("system.slice/traefik@2.service", &[200]);
        let shared = fx.cgroup("user.slice/session-1.scope", &[300, 301, 302]);
        fx.process(
            100,
            "traefik",
            "demo/traefik-1",
            &["ROUTESKEW_REPLICA=edge-a", "X=1"],
        );
        fx.process(200, "traefik", "system.slice/traefik@2.service", &[]);
        fx.process(300, "traefik", "user.slice/session-1.scope", &[]);
        fx.process(301, "bash", "user.slice/session-1.scope", &[]);
        let scan = fx.discovery(|_| {}).scan();
        assert!(scan.failures.is_empty(), "{:?}", scan.failures);
        assert_eq!(names(&scan), vec!["edge-a", "traefik-300", "traefik@2"]);
        let set = &scan.targets;
        let o = |tgid, cgroup_id| Origin { tgid, cgroup_id };
        assert_eq!(
            set.resolve(o(100, a)).map(|r| r.name.as_str()),
            Some("edge-a")
        );
        assert_eq!(
            set.resolve(o(200, b)).map(|r| r.name.as_str()),
            Some("traefik@2")
        );
        // The shell sharing the session cgroup is not a replica.
        assert_eq!(set.resolve(o(301, shared)), None);
        assert_eq!(set.cgroup_ids().len(), 3);
    }

    #[test]
    fn explicit_pids_and_cgroups_and_failures() {
        let fx = Fixture::new("explicit");
        fx.cgroup("apps/edge", &[500, 501]);
        fx.cgroup("apps/other", &[600]);
        fx.process(600, "my-proxy", "apps/other", &[]);
        let scan = fx
            .discovery(|c| {
                c.process_name = None;
                c.pids = vec![600, 999];
                c.cgroups = vec![PathBuf::from("apps/edge"), PathBuf::from("apps/gone")];
            })
            .scan();
        assert_eq!(names(&scan), vec!["edge", "other"]);
        let edge = &scan.targets.targets()[0];
        assert_eq!(edge.attribution, Attribution::Cgroup);
        assert_eq!(edge.pids, vec![500, 501]);
        let what: Vec<&str> = scan.failures.iter().map(|f| f.what.as_str()).collect();
        assert_eq!(what, vec!["pid 999", "cgroup apps/gone"]);
    }

    #[test]
    fn duplicate_names_get_pid_suffix_and_hostile_env_is_sanitized() {
        let fx = Fixture::new("dup");
        fx.cgroup("a", &[10]);
        fx.cgroup("b", &[11]);
        fx.cgroup("c", &[12]);
        fx.process(10, "traefik", "a", &["ROUTESKEW_REPLICA=same"]);
        fx.process(11, "traefik", "b", &["ROUTESKEW_REPLICA=same"]);
        fx.process(12, "traefik", "c", &["ROUTESKEW_REPLICA=same\"}\n{evil"]);
        let scan = fx.discovery(|_| {}).scan();
        assert_eq!(names(&scan), vec!["same-10", "same-11", "sameevil"]);
    }

    #[test]
    fn vanished_process_is_not_a_failure() {
        let fx = Fixture::new("vanish");
        fx.cgroup("x", &[42]);
        // comm says traefik, but the cgroup file is gone (the process exited mid-scan).
        let dir = fx.proc_root().join("42");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("comm"), "traefik\n").expect("write");
        let scan = fx.discovery(|_| {}).scan();
        assert!(scan.targets.targets().is_empty());
        assert!(scan.failures.is_empty());
    }
}
