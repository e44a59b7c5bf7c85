//! Where a pod's containers live in the host's cgroup tree, and which processes (and
//! binaries) they run. Plain types in, plain types out: the Kubernetes side converts API
//! objects into [`PodInfo`] and this module does the filesystem work.
//!
//! Kubelet names cgroups after the pod UID and QoS class, the container runtime after the
//! container id, and both depend on the cgroup driver:
//!
//! ```text
//! systemd : kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
//!           (Guaranteed pods sit directly in kubepods.slice; CRI-O uses crio-<id>.scope, docker docker-<id>.scope)
//! cgroupfs: kubepods/burstable/pod<uid>/<id>          (CRI-O: crio-<id>)
//! ```
//!
//! A kubelet `--cgroup-root` adds a prefix (kind: `kubelet.slice/kubelet-kubepods.slice/…`),
//! so the kubepods directory is searched for near the root rather than assumed. The kernel
//! filter matches cgroup v2 ids, so only the v2 hierarchy (pure, or `unified/` of a hybrid
//! host) yields targets; a container that only exists in v1 hierarchies is a failure that
//! says so.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::local::{cgroup_id, Scan, ScanFailure};
use super::{Attribution, Endpoint, Replica, Target, TargetSet};

/// How deep below the cgroup root the kubepods directory may be.
const KUBEPODS_SEARCH_DEPTH: usize = 3;
/// Directories below a container's cgroup that are watched too (runtimes such as crun
/// may put the processes in a `container` child).
const CONTAINER_SUBTREE_DEPTH: usize = 2;
/// Bound on cgroups per container, against odd trees.
const MAX_CGROUPS_PER_CONTAINER: usize = 16;
/// v1 hierarchies looked at to tell "v1 only" from "not there at all".
const V1_HIERARCHIES: [&str; 5] = ["systemd", "memory", "pids", "cpu,cpuacct", "cpu"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "Burstable" => Some(QosClass::Burstable),
            "BestEffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }

    /// The QoS directory component (`None`: Guaranteed pods sit directly in kubepods).
    fn dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

/// A container id from pod status, `<runtime>://<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerId {
    pub runtime: String,
    pub id: String,
}

impl ContainerId {
    /// Ids are hex in every runtime we know; anything else could be a path component
    /// and is refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (runtime, id) = s
            .split_once("://")
            .ok_or_else(|| format!("container id {s:?} has no runtime prefix"))?;
        if id.len() < 12 || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("container id {s:?} is not an id"));
        }
        Ok(ContainerId {
            runtime: runtime.to_string(),
            id: id.to_ascii_lowercase(),
        })
    }

    /// Whether a cgroup directory name is this container's (`<id>`, `crio-<id>`,
    /// `cri-containerd-<id>.scope`, `docker-<id>.scope`, …). CRI-O's monitor
    /// (`crio-conmon-<id>.scope`) is not the container.
    fn matches_dir(&self, name: &str) -> bool {
        let name = name.strip_suffix(".scope").unwrap_or(name);
        if name == self.id {
            return true;
        }
        match name.strip_suffix(self.id.as_str()) {
            Some(prefix) => {
                matches!(
                    prefix,
                    "cri-containerd-" | "crio-" | "docker-" | "containerd-"
                )
            }
            None => false,
        }
    }
}

/// A running container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub name: String,
    pub id: ContainerId,
}

/// A declared container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub name: Option<String>,
    pub port: u16,
}

/// What resolution needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub qos: Option<QosClass>,
    pub ips: Vec<IpAddr>,
    /// TCP container ports.
    pub ports: Vec<PodPort>,
    /// Running containers (with an id); others have no cgroup to watch yet.
    pub containers: Vec<ContainerInfo>,
    /// Containers whose status could not be used, with the reason.
    pub unusable: Vec<(String, String)>,
}

impl PodInfo {
    /// Every pod IP with every declared TCP port: what the prober may talk to.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut out = Vec::new();
        for ip in &self.ips {
            for p in &self.ports {
                out.push(Endpoint {
                    addr: SocketAddr::new(*ip, p.port),
                    port_name: p.name.clone(),
                });
            }
        }
        out
    }
}

/// A process of a watched container, for the TLS uprobes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// Executable as the container sees it (`/proc/<pid>/exe`).
    pub exe: PathBuf,
    /// The same file reachable from this host: `<host proc>/<pid>/root/<exe>`.
    pub host_path: PathBuf,
}

/// Which cgroup hierarchies the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// cgroup2 mounted at the root.
    Unified { v2: PathBuf },
    /// v1 controllers at the root, cgroup2 at `unified/`.
    Hybrid { v2: PathBuf, v1: PathBuf },
    /// v1 controllers only: the kernel filter cannot work.
    Legacy { v1: PathBuf },
}

impl CgroupLayout {
    /// Looks at a host cgroup mount (`/sys/fs/cgroup`, or where a DaemonSet mounts it).
    pub fn detect(root: &Path) -> Result<Self, String> {
        if root.join("cgroup.controllers").is_file() {
            return Ok(CgroupLayout::Unified {
                v2: root.to_path_buf(),
            });
        }
        let unified = root.join("unified");
        if unified.join("cgroup.controllers").is_file() {
            return Ok(CgroupLayout::Hybrid {
                v2: unified,
                v1: root.to_path_buf(),
            });
        }
        if V1_HIERARCHIES.iter().any(|h| root.join(h).is_dir()) {
            return Ok(CgroupLayout::Legacy {
                v1: root.to_path_buf(),
            });
        }
        Err(format!(
            "{} is not a cgroup mount (no cgroup.controllers, unified/ or v1 controllers); \
             mount the host's /sys/fs/cgroup and point --host-cgroup-root at it",
            root.display()
        ))
    }

    fn v2(&self) -> Option<&Path> {
        match self {
            CgroupLayout::Unified { v2 } | CgroupLayout::Hybrid { v2, .. } => Some(v2),
            CgroupLayout::Legacy { .. } => None,
        }
    }

    fn v1(&self) -> Option<&Path> {
        match self {
            CgroupLayout::Hybrid { v1, .. } | CgroupLayout::Legacy { v1 } => Some(v1),
            CgroupLayout::Unified { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            CgroupLayout::Unified { v2 } => format!("cgroup v2 at {}", v2.display()),
            CgroupLayout::Hybrid { v2, .. } => format!("hybrid, cgroup v2 at {}", v2.display()),
            CgroupLayout::Legacy { v1 } => format!("cgroup v1 only at {}", v1.display()),
        }
    }
}

/// Resolves pods to targets against a host cgroup tree and `/proc`.
#[derive(Debug, Clone)]
pub struct PodResolver {
    layout: CgroupLayout,
    proc_root: PathBuf,
}

/// The result of resolving a set of pods.
#[derive(Debug, Clone, Default)]
pub struct PodScan {
    pub scan: Scan,
    /// Processes of the watched containers, by replica.
    pub processes: Vec<(Replica, Vec<Process>)>,
}

impl PodResolver {
    pub fn new(layout: CgroupLayout, proc_root: PathBuf) -> Self {
        PodResolver { layout, proc_root }
    }

    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// Targets for every running container of `pods` (one target per container cgroup,
    /// all labelled with the pod's replica), and a failure for each container that could
    /// not be placed.
    pub fn resolve(&self, pods: &[PodInfo]) -> PodScan {
        let v2_bases = self.layout.v2().map(kubepods_dirs).unwrap_or_default();
        let v1_bases: Vec<PathBuf> = match self.layout.v1() {
            Some(v1) => V1_HIERARCHIES
                .iter()
                .map(|h| v1.join(h))
                .filter(|p| p.is_dir())
                .flat_map(|p| kubepods_dirs(&p))
                .collect(),
            None => Vec::new(),
        };
        let mut targets = Vec::new();
        let mut failures = Vec::new();
        let mut processes = Vec::new();
        for pod in pods {
            let replica = Replica {
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
            };
            let endpoints = pod.endpoints();
            let mut procs = Vec::new();
            for (container, reason) in &pod.unusable {
                failures.push(failure(pod, container, reason.clone()));
            }
            for c in &pod.containers {
                let found = v2_bases
                    .iter()
                    .find_map(|base| container_dir(base, pod, &c.id));
                let Some(dir) = found else {
                    let reason = match v1_bases
                        .iter()
                        .find_map(|base| container_dir(base, pod, &c.id))
                    {
                        Some(v1_dir) => format!(
                            "container cgroup exists only in cgroup v1 ({}): the kernel filter needs cgroup v2 \
                             (a unified or hybrid host)",
                            v1_dir.display()
                        ),
                        None => format!(
                            "no cgroup for pod uid {} container {} under {} ({})",
                            pod.uid,
                            c.id.id,
                            self.layout.v2().map_or_else(
                                || "the v1 hierarchies".to_string(),
                                |p| p.display().to_string()
                            ),
                            self.layout.describe()
                        ),
                    };
                    failures.push(failure(pod, &c.name, reason));
                    continue;
                };
                for cg in container_cgroups(&dir) {
                    let id = match cgroup_id(&cg) {
                        Ok(id) => id,
                        Err(e) => {
                            // The container stopped between lookup and stat.
                            failures.push(failure(pod, &c.name, e.to_string()));
                            continue;
                        }
                    };
                    let pids = read_procs(&cg);
                    procs.extend(pids.iter().filter_map(|&pid| self.process(pid)));
                    targets.push(Target {
                        replica: replica.clone(),
                        cgroup_id: id,
                        pids,
                        attribution: Attribution::Cgroup,
                        endpoints: endpoints.clone(),
                    });
                }
            }
            if !procs.is_empty() {
                processes.push((replica, procs));
            }
        }
        targets.sort_by(|a, b| {
            a.replica
                .cmp(&b.replica)
                .then(a.cgroup_id.cmp(&b.cgroup_id))
        });
        PodScan {
            scan: Scan {
                targets: TargetSet::new(targets),
                failures,
            },
            processes,
        }
    }

    fn process(&self, pid: u32) -> Option<Process> {
        let dir = self.proc_root.join(pid.to_string());
        // Kernel threads and exited processes have no exe: nothing to probe.
        let exe = fs::read_link(dir.join("exe")).ok()?;
        let rel = exe.strip_prefix("/").unwrap_or(&exe);
        Some(Process {
            pid,
            host_path: dir.join("root").join(rel),
            exe,
        })
    }
}

fn failure(pod: &PodInfo, container: &str, reason: String) -> ScanFailure {
    ScanFailure {
        what: format!("pod {}/{} container {}", pod.namespace, pod.name, container),
        reason,
    }
}

/// Directories named like kubelet's pod parent (`kubepods`, `kubepods.slice`,
/// `<prefix>-kubepods.slice`) within a few levels of `root`.
fn kubepods_dirs(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut level = vec![root.to_path_buf()];
    for depth in 0..KUBEPODS_SEARCH_DEPTH {
        let mut next = Vec::new();
        for dir in &level {
            for child in subdirs(dir) {
                let name = file_name(&child);
                if name == "kubepods"
                    || name == "kubepods.slice"
                    || name.ends_with("-kubepods.slice")
                {
                    found.push(child);
                } else if name.ends_with(".slice") || (depth == 0 && !name.ends_with(".scope")) {
                    // Only slices (and, for a cgroupfs `--cgroup-root`, the root's
                    // children) can contain a kubepods parent.
                    next.push(child);
                }
            }
        }
        if !found.is_empty() {
            break;
        }
        level = next;
    }
    found
}

/// The pod's directory below a kubepods directory, then the container's inside it.
fn container_dir(base: &Path, pod: &PodInfo, id: &ContainerId) -> Option<PathBuf> {
    pod_dirs(base, pod)
        .into_iter()
        .filter(|d| d.is_dir())
        .find_map(|pod_dir| {
            subdirs(&pod_dir)
                .into_iter()
                .find(|c| id.matches_dir(&file_name(c)))
        })
}

/// Candidate pod directories, the QoS class's first.
fn pod_dirs(base: &Path, pod: &PodInfo) -> Vec<PathBuf> {
    let base_name = file_name(base);
    let uid = pod.uid.to_ascii_lowercase();
    if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Vec::new();
    }
    let mut order = vec![pod.qos];
    for q in [
        Some(QosClass::Burstable),
        Some(QosClass::BestEffort),
        Some(QosClass::Guaranteed),
    ] {
        if !order.contains(&q) {
            order.push(q);
        }
    }
    let mut out = Vec::new();
    for qos in order.into_iter().flatten() {
        match base_name.strip_suffix(".slice") {
            // systemd driver: every level is a slice named after its parent.
            Some(prefix) => {
                let uid_ = uid.replace('-', "_");
                match qos.dir() {
                    Some(q) => out.push(
                        base.join(format!("{prefix}-{q}.slice"))
                            .join(format!("{prefix}-{q}-pod{uid_}.slice")),
                    ),
                    None => out.push(base.join(format!("{prefix}-pod{uid_}.slice"))),
                }
            }
            None => match qos.dir() {
                Some(q) => out.push(base.join(q).join(format!("pod{uid}"))),
                None => out.push(base.join(format!("pod{uid}"))),
            },
        }
    }
    out
}

/// The container's cgroup and its descendants, a bounded number.
fn container_cgroups(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut level = vec![dir.to_path_buf()];
    for _ in 0..CONTAINER_SUBTREE_DEPTH {
        let mut next = Vec::new();
        for d in &level {
            next.extend(subdirs(d));
        }
        for d in &next {
            if out.len() >= MAX_CGROUPS_PER_CONTAINER {
                return out;
            }
            out.push(d.clone());
        }
        level = next;
    }
    out
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_dir().then(|| e.path())
        })
        .collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const UID: &str = "5e6f1d2c-aaaa-4bbb-8ccc-0123456789ab";
    const UID_: &str = "5e6f1d2c_aaaa_4bbb_8ccc_0123456789ab";
    const ID: &str = "0f3c9e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766";
    const ID2: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    struct Tree {
        root: PathBuf,
    }

    impl Tree {
        fn new(tag: &str) -> Self {
            let root = std::env::temp_dir().join(format!(
                "routeskew-podcg-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            fs::create_dir_all(&root).unwrap();
            Tree { root }
        }
        /// A cgroup v2 mount at `rel` ("" for the root).
        fn v2_mount(&self, rel: &str) {
            let d = self.root.join(rel);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        }
        fn cgroup(&self, rel: &str, procs: &[u32]) -> u64 {
            let d = self.root.join(rel);
            fs::create_dir_all(&d).unwrap();
            let text: String = procs.iter().map(|p| format!("{p}\n")).collect();
            fs::write(d.join("cgroup.procs"), text).unwrap();
            cgroup_id(&d).unwrap()
        }
        fn resolver(&self) -> PodResolver {
            let layout = CgroupLayout::detect(&self.root).unwrap();
            PodResolver::new(layout, self.root.join("proc"))
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn pod(qos: Option<QosClass>, ids: &[(&str, &str)]) -> PodInfo {
        PodInfo {
            name: "traefik-7d9f-abcde".into(),
            namespace: "traefik".into(),
            uid: UID.into(),
            qos,
            ips: vec!["10.1.2.3".parse().unwrap()],
            ports: vec![
                PodPort {
                    name: Some("web".into()),
                    port: 8000,
                },
                PodPort {
                    name: None,
                    port: 9100,
                },
            ],
            containers: ids
                .iter()
                .map(|(name, id)| ContainerInfo {
                    name: name.to_string(),
                    id: ContainerId::parse(id).unwrap(),
                })
                .collect(),
            unusable: vec![],
        }
    }

    fn ids(scan: &PodScan) -> Vec<u64> {
        scan.scan
            .targets
            .targets()
            .iter()
            .map(|t| t.cgroup_id)
            .collect()
    }

    #[test]
    fn parses_container_ids() {
        let c = ContainerId::parse(&format!("containerd://{ID}")).unwrap();
        assert_eq!((c.runtime.as_str(), c.id.as_str()), ("containerd", ID));
        assert!(ContainerId::parse(ID).is_err());
        assert!(ContainerId::parse("cri-o://../../etc").is_err());
        assert!(ContainerId::parse("docker://abc").is_err());
        assert!(c.matches_dir(&format!("cri-containerd-{ID}.scope")));
        assert!(c.matches_dir(&format!("crio-{ID}.scope")));
        assert!(c.matches_dir(&format!("crio-{ID}")));
        assert!(c.matches_dir(ID));
        assert!(!c.matches_dir(&format!("crio-conmon-{ID}.scope")));
        assert!(!c.matches_dir(&format!("x{ID}")));
    }

    #[test]
    fn detects_layouts() {
        let t = Tree::new("layout");
        assert!(CgroupLayout::detect(&t.root).is_err());
        fs::create_dir_all(t.root.join("memory")).unwrap();
        assert!(matches!(
            CgroupLayout::detect(&t.root),
            Ok(CgroupLayout::Legacy { .. })
        ));
        t.v2_mount("unified");
        assert_eq!(
            CgroupLayout::detect(&t.root),
            Ok(CgroupLayout::Hybrid {
                v2: t.root.join("unified"),
                v1: t.root.clone()
            })
        );
        t.v2_mount("");
        assert!(matches!(
            CgroupLayout::detect(&t.root),
            Ok(CgroupLayout::Unified { .. })
        ));
    }

    #[test]
    fn systemd_driver_containerd_burstable_and_guaranteed() {
        let t = Tree::new("systemd");
        t.v2_mount("");
        let pod_dir =
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        let want = t.cgroup(&format!("{pod_dir}/cri-containerd-{ID}.scope"), &[4242]);
        // The sandbox and a sibling container of the same pod are not ours.
        t.cgroup(&format!("{pod_dir}/cri-containerd-{ID2}.scope"), &[4243]);
        t.cgroup("system.slice/containerd.service", &[1]);
        let r = t.resolver();
        let s = r.resolve(&[pod(
            Some(QosClass::Burstable),
            &[("traefik", &format!("containerd://{ID}"))],
        )]);
        assert!(s.scan.failures.is_empty(), "{:?}", s.scan.failures);
        assert_eq!(ids(&s), vec![want]);
        let tg = &s.scan.targets.targets()[0];
        assert_eq!(tg.replica.name, "traefik-7d9f-abcde");
        assert_eq!(tg.replica.namespace, "traefik");
        assert_eq!(tg.pids, vec![4242]);
        assert_eq!(tg.attribution, Attribution::Cgroup);
        assert_eq!(
            tg.endpoints,
            vec![
                Endpoint {
                    addr: "10.1.2.3:8000".parse().unwrap(),
                    port_name: Some("web".into())
                },
                Endpoint {
                    addr: "10.1.2.3:9100".parse().unwrap(),
                    port_name: None
                },
            ]
        );

        // A Guaranteed pod sits directly in kubepods.slice; a wrong QoS hint still finds it.
        fs::remove_dir_all(t.root.join("kubepods.slice/kubepods-burstable.slice")).unwrap();
        let g = t.cgroup(
            &format!("kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID2}.scope"),
            &[],
        );
        let s = r.resolve(&[pod(
            Some(QosClass::BestEffort),
            &[("traefik", &format!("containerd://{ID2}"))],
        )]);
        assert_eq!(ids(&s), vec![g]);
    }

    #[test]
    fn cgroupfs_driver_crio_and_containerd_besteffort() {
        let t = Tree::new("cgroupfs");
        t.v2_mount("");
        let a = t.cgroup(&format!("kubepods/besteffort/pod{UID}/crio-{ID}"), &[7]);
        let b = t.cgroup(&format!("kubepods/besteffort/pod{UID}/{ID2}"), &[8]);
        let s = t.resolver().resolve(&[pod(
            Some(QosClass::BestEffort),
            &[
                ("traefik", &format!("cri-o://{ID}")),
                ("sidecar", &format!("containerd://{ID2}")),
            ],
        )]);
        assert!(s.scan.failures.is_empty(), "{:?}", s.scan.failures);
        let mut want = vec![a, b];
        want.sort_unstable();
        assert_eq!(ids(&s), want);
        // Both containers are the same replica.
        assert!(s
            .scan
            .targets
            .targets()
            .iter()
            .all(|t| t.replica.name == "traefik-7d9f-abcde"));
    }

    #[test]
    fn crio_systemd_scope_with_container_child_and_kind_prefix() {
        let t = Tree::new("crio");
        t.v2_mount("");
        let base = format!(
            "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice"
        );
        let scope = t.cgroup(&format!("{base}/crio-{ID}.scope"), &[]);
        let leaf = t.cgroup(&format!("{base}/crio-{ID}.scope/container"), &[99]);
        t.cgroup(&format!("{base}/crio-conmon-{ID}.scope"), &[98]);
        let s = t.resolver().resolve(&[pod(
            Some(QosClass::Burstable),
            &[("traefik", &format!("cri-o://{ID}"))],
        )]);
        assert!(s.scan.failures.is_empty(), "{:?}", s.scan.failures);
        let mut want = vec![scope, leaf];
        want.sort_unstable();
        assert_eq!(ids(&s), want);
        let pids: Vec<u32> = s
            .scan
            .targets
            .targets()
            .iter()
            .flat_map(|t| t.pids.clone())
            .collect();
        assert_eq!(pids, vec![99]);
    }

    #[test]
    fn hybrid_uses_unified_and_v1_only_fails_clearly() {
        let t = Tree::new("hybrid");
        t.v2_mount("unified");
        let pod_dir =
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        // systemd mirrors the tree into the v1 hierarchies and unified/.
        t.cgroup(&format!("systemd/{pod_dir}/docker-{ID}.scope"), &[5]);
        t.cgroup(&format!("memory/{pod_dir}/docker-{ID}.scope"), &[5]);
        let v2 = t.cgroup(&format!("unified/{pod_dir}/docker-{ID}.scope"), &[5]);
        // cgroupfs driver on a hybrid host: only v1 has the container.
        t.cgroup(&format!("memory/kubepods/burstable/pod{UID}/{ID2}"), &[6]);
        let s = t.resolver().resolve(&[pod(
            Some(QosClass::Burstable),
            &[
                ("traefik", &format!("docker://{ID}")),
                ("other", &format!("containerd://{ID2}")),
            ],
        )]);
        assert_eq!(ids(&s), vec![v2]);
        assert_eq!(s.scan.failures.len(), 1);
        let f = &s.scan.failures[0];
        assert_eq!(f.what, "pod traefik/traefik-7d9f-abcde container other");
        assert!(f.reason.contains("only in cgroup v1"), "{}", f.reason);
        assert!(f.reason.contains("needs cgroup v2"), "{}", f.reason);
    }

    #[test]
    fn legacy_host_and_missing_cgroups_are_failures() {
        let t = Tree::new("legacy");
        t.cgroup(&format!("memory/kubepods/pod{UID}/{ID}"), &[5]);
        let r = t.resolver();
        assert!(matches!(r.layout(), CgroupLayout::Legacy { .. }));
        let s = r.resolve(&[pod(
            Some(QosClass::Guaranteed),
            &[("traefik", &format!("containerd://{ID}"))],
        )]);
        assert!(s.scan.targets.targets().is_empty());
        assert!(s.scan.failures[0].reason.contains("needs cgroup v2"));

        let t = Tree::new("missing");
        t.v2_mount("");
        t.cgroup("kubepods.slice", &[]);
        let mut p = pod(
            Some(QosClass::Burstable),
            &[("traefik", &format!("containerd://{ID}"))],
        );
        p.unusable = vec![("init".into(), "not an id".into())];
        let s = t.resolver().resolve(&[p]);
        assert!(s.scan.targets.targets().is_empty());
        let reasons: Vec<&str> = s.scan.failures.iter().map(|f| f.reason.as_str()).collect();
        assert_eq!(reasons.len(), 2);
        assert_eq!(reasons[0], "not an id");
        assert!(
            reasons[1].starts_with("no cgroup for pod uid"),
            "{}",
            reasons[1]
        );
    }

    #[test]
    fn processes_and_binaries_through_host_proc() {
        let t = Tree::new("procs");
        t.v2_mount("");
        t.cgroup(
            &format!("kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            &[4242, 4243],
        );
        let pdir = t.root.join("proc/4242");
        fs::create_dir_all(&pdir).unwrap();
        std::os::unix::fs::symlink("/usr/local/bin/traefik", pdir.join("exe")).unwrap();
        // 4243 has no /proc entry (exited): skipped.
        let s = t.resolver().resolve(&[pod(
            Some(QosClass::Guaranteed),
            &[("traefik", &format!("containerd://{ID}"))],
        )]);
        assert_eq!(s.processes.len(), 1);
        let (replica, procs) = &s.processes[0];
        assert_eq!(replica.name, "traefik-7d9f-abcde");
        assert_eq!(
            procs,
            &vec![Process {
                pid: 4242,
                exe: PathBuf::from("/usr/local/bin/traefik"),
                host_path: pdir.join("root/usr/local/bin/traefik"),
            }]
        );
    }
}
