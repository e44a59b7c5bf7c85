//! Which local processes are Traefik replicas, and how kernel events map back to them.

pub mod endpoints;
#[cfg(test)]
mod fuzz_tests;
pub mod kubernetes;
pub mod local;
pub mod metrics;
pub mod pod_cgroup;
pub mod traefik_rule;

use std::collections::HashMap;

use crate::event::Origin;

/// The identity a replica's metrics are labelled with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Replica {
    /// Pod name in Kubernetes; a stable process identity in local mode.
    pub name: String,
    pub namespace: String,
}

/// How events are attributed to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribution {
    /// Every process in the cgroup belongs to the replica (a pod's container, a dedicated
    /// systemd unit or a cgroup given with `--cgroup`).
    Cgroup,
    /// Only the listed processes belong to the replica; other processes in the same
    /// cgroup are ignored.
    Pids,
}

/// One replica to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub replica: Replica,
    /// cgroup v2 id the kernel filter matches on.
    pub cgroup_id: u64,
    /// Processes of the replica at discovery time.
    pub pids: Vec<u32>,
    pub attribution: Attribution,
    /// Addresses the replica serves on, reachable from the agent: probes go straight there.
    pub endpoints: Vec<Endpoint>,
    /// Replicas of one group are siblings: the owning controller in Kubernetes
    /// (`ReplicaSet/name`), the namespace in local mode.
    pub group: String,
    /// When the replica last turned ready, where known (a pod's Ready condition).
    pub ready_since: Option<std::time::SystemTime>,
}

/// One address a replica listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: std::net::SocketAddr,
    /// The port's name where one is known (a container port's name in Kubernetes, the
    /// Traefik entrypoint in local mode once its API told us).
    pub port_name: Option<String>,
}

/// A snapshot of all targets; the sensor watches their cgroups, the pipeline resolves
/// event origins through it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetSet {
    targets: Vec<Target>,
    by_pid: HashMap<u32, usize>,
    by_cgroup: HashMap<u64, usize>,
}

impl TargetSet {
    pub fn new(targets: Vec<Target>) -> Self {
        let mut by_pid = HashMap::new();
        let mut by_cgroup = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            match t.attribution {
                Attribution::Pids => {
                    for &pid in &t.pids {
                        by_pid.insert(pid, i);
                    }
                }
                Attribution::Cgroup => {
                    by_cgroup.insert(t.cgroup_id, i);
                }
            }
        }
        TargetSet {
            targets,
            by_pid,
            by_cgroup,
        }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// cgroup ids the kernel must watch (deduplicated, sorted).
    pub fn cgroup_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.targets.iter().map(|t| t.cgroup_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Distinct replicas (a pod with several containers has several targets).
    pub fn replica_count(&self) -> usize {
        let mut r: Vec<&Replica> = self.targets.iter().map(|t| &t.replica).collect();
        r.sort_unstable();
        r.dedup();
        r.len()
    }

    /// The replica an event belongs to, if any.
    pub fn resolve(&self, origin: Origin) -> Option<&Replica> {
        let idx = self
            .by_pid
            .get(&origin.tgid)
            .or_else(|| self.by_cgroup.get(&origin.cgroup_id))?;
        Some(&self.targets[*idx].replica)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, cg: u64, pids: &[u32], attribution: Attribution) -> Target {
        Target {
            replica: Replica {
                name: name.into(),
                namespace: "local".into(),
            },
            cgroup_id: cg,
            pids: pids.to_vec(),
            attribution,
            endpoints: Vec::new(),
            group: "local".into(),
            ready_since: None,
        }
    }

    #[test]
    fn resolves_by_pid_then_cgroup() {
        let set = TargetSet::new(vec![
            target("a", 10, &[100], Attribution::Pids),
            target("b", 10, &[101], Attribution::Pids),
            target("c", 20, &[200], Attribution::Cgroup),
        ]);
        let o = |tgid, cgroup_id| Origin { tgid, cgroup_id };
        assert_eq!(set.resolve(o(100, 10)).map(|r| r.name.as_str()), Some("a"));
        assert_eq!(set.resolve(o(101, 10)).map(|r| r.name.as_str()), Some("b"));
        // Another process in a pid-attributed cgroup is not a replica.
        assert_eq!(set.resolve(o(102, 10)), None);
        // Any process in a cgroup-attributed cgroup is.
        assert_eq!(set.resolve(o(999, 20)).map(|r| r.name.as_str()), Some("c"));
        assert_eq!(set.cgroup_ids(), vec![10, 20]);
    }
}
