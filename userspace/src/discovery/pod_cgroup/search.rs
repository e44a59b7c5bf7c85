//! Walking the host's cgroup tree: kubelet's kubepods directory near the root, a pod's
//! directory below it (cgroup driver and QoS class decide the names), the container's
//! directory inside, and the processes of a cgroup.

use std::fs;
use std::path::{Path, PathBuf};

use super::pod::{ContainerId, PodInfo, QosClass};

/// How deep below the cgroup root the kubepods directory may be.
const KUBEPODS_SEARCH_DEPTH: usize = 3;
/// Directories below a container's cgroup that are watched too (runtimes such as crun
/// may put the processes in a `container` child).
const CONTAINER_SUBTREE_DEPTH: usize = 2;
/// Bound on cgroups per container, against odd trees.
const MAX_CGROUPS_PER_CONTAINER: usize = 16;

/// Directories named like kubelet's pod parent (`kubepods`, `kubepods.slice`,
/// `<prefix>-kubepods.slice`) within a few levels of `root`.
pub(super) fn kubepods_dirs(root: &Path) -> Vec<PathBuf> {
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
pub(super) fn container_dir(base: &Path, pod: &PodInfo, id: &ContainerId) -> Option<PathBuf> {
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
pub(super) fn container_cgroups(dir: &Path) -> Vec<PathBuf> {
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

pub(super) fn read_procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}
