//! Pods resolved against fixture cgroup trees shaped like each cgroup driver's and
//! runtime's.
use std::fs;
use std::path::PathBuf;

use super::*;
use crate::discovery::local::cgroup_id;
use crate::discovery::{Attribution, Endpoint};

const UID: &str = "5e6f1d2c-aaaa-4bbb-8ccc-0123456789ab";
const UID_: &str = "5e6f1d2c_aaaa_4bbb_8ccc_0123456789ab";
pub(super) const ID: &str = "0f3c9e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766";
const ID2: &str = "1111111111111111111111111111111111111111111111111111111111111111";

pub(super) struct Tree {
    pub(super) root: PathBuf,
}

impl Tree {
    pub(super) fn new(tag: &str) -> Self {
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
    pub(super) fn v2_mount(&self, rel: &str) {
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
        owner: Some("ReplicaSet/traefik-7d9f".into()),
        ready_since: None,
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
    let reason = f.reason.to_string();
    assert!(reason.contains("only in cgroup v1"), "{reason}");
    assert!(reason.contains("needs cgroup v2"), "{reason}");
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
    assert!(s.scan.failures[0]
        .reason
        .to_string()
        .contains("needs cgroup v2"));

    let t = Tree::new("missing");
    t.v2_mount("");
    t.cgroup("kubepods.slice", &[]);
    let mut p = pod(
        Some(QosClass::Burstable),
        &[("traefik", &format!("containerd://{ID}"))],
    );
    p.unusable = vec![(
        "init".into(),
        ContainerId::parse("containerd://zz").expect_err("too short"),
    )];
    let s = t.resolver().resolve(&[p]);
    assert!(s.scan.targets.targets().is_empty());
    let reasons: Vec<String> = s
        .scan
        .failures
        .iter()
        .map(|f| f.reason.to_string())
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0], "container id \"containerd://zz\" is not an id");
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
