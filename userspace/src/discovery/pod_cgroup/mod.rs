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
//!
//! Submodules: `pod` (the plain pod types, container-id matching), `layout` (which
//! hierarchies the host has), `search` (walking the tree to a container's cgroups).

mod layout;
mod pod;
mod search;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use super::local::{cgroup_id, Scan, ScanFailure, ScanFailureReason};
use super::{Attribution, Replica, Target, TargetSet};
use layout::V1_HIERARCHIES;
use search::{container_cgroups, container_dir, kubepods_dirs, read_procs};

pub use layout::{CgroupLayout, CgroupLayoutError};
pub use pod::{ContainerId, ContainerIdError, ContainerInfo, PodInfo, PodPort, Process, QosClass};

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
                let source = Arc::new(reason.clone());
                failures.push(failure(
                    pod,
                    container,
                    ScanFailureReason::Container { source },
                ));
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
                        Some(dir) => ScanFailureReason::OnlyCgroupV1 { dir },
                        None => ScanFailureReason::NoCgroup {
                            uid: pod.uid.clone(),
                            container_id: c.id.id.clone(),
                            under: self.layout.v2().map_or_else(
                                || "the v1 hierarchies".to_string(),
                                |p| p.display().to_string(),
                            ),
                            layout: self.layout.describe(),
                        },
                    };
                    failures.push(failure(pod, &c.name, reason));
                    continue;
                };
                for cg in container_cgroups(&dir) {
                    let id = match cgroup_id(&cg) {
                        Ok(id) => id,
                        Err(e) => {
                            // The container stopped between lookup and stat.
                            failures.push(failure(pod, &c.name, e.into()));
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
                        group: pod.owner.clone().unwrap_or_else(|| pod.namespace.clone()),
                        ready_since: pod.ready_since,
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

fn failure(pod: &PodInfo, container: &str, reason: ScanFailureReason) -> ScanFailure {
    ScanFailure {
        what: format!("pod {}/{} container {}", pod.namespace, pod.name, container),
        reason,
    }
}
