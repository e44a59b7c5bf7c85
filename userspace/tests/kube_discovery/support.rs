//! What the discovery tests share: container ids, a fixture cgroup tree, the discovery's
//! configuration and metrics, polling, and a bare HTTP GET.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use routeskew::agent::AgentMetrics;
use routeskew::discovery::kubernetes::{KubeConfig, KubeDiscovery};
use routeskew::metrics::BuildInfo;

use crate::fake_apiserver::NODE;

pub(crate) const UID_A: &str = "3f1d2c4b-5a69-4788-9a6b-5c4d3e2f1a0b";
pub(crate) const UID_B: &str = "7a6b5c4d-3e2f-4a0b-8c9d-0e1f2a3b4c5d";
pub(crate) const ID_A1: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
pub(crate) const ID_A2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
pub(crate) const ID_B1: &str = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";

/// A host cgroup v2 tree in a temp dir, laid out like a systemd-driver kubelet's.
pub(crate) struct Cgroups {
    pub(crate) root: PathBuf,
}

impl Cgroups {
    pub(crate) fn new(tag: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("routeskew-kube-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        Cgroups { root }
    }

    pub(crate) fn dir(&self, uid: &str, id: &str) -> PathBuf {
        self.root.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        ))
    }

    /// Creates the container's cgroup; returns its cgroup id (inode).
    pub(crate) fn add(&self, uid: &str, id: &str, pid: u32) -> u64 {
        let d = self.dir(uid, id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.procs"), format!("{pid}\n")).unwrap();
        std::fs::metadata(&d).unwrap().ino()
    }

    pub(crate) fn remove(&self, uid: &str, id: &str) {
        std::fs::remove_dir_all(self.dir(uid, id)).unwrap();
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub(crate) fn metrics() -> AgentMetrics {
    AgentMetrics::register(BuildInfo {
        version: "test".into(),
        kernel: "test".into(),
    })
}

pub(crate) fn config(cgroups: &Path, static_hosts: &[&str]) -> KubeConfig {
    KubeConfig {
        node_name: NODE.into(),
        label_selector: "app.kubernetes.io/name=traefik".into(),
        pod_namespace: None,
        containers: vec![],
        ingress_class: "traefik".into(),
        hosts_per_namespace: 50,
        static_hosts: static_hosts.iter().map(|s| s.to_string()).collect(),
        host_cgroup_root: cgroups.to_path_buf(),
        host_proc: cgroups.join("no-proc"),
        crd_recheck: Duration::from_millis(300),
    }
}

/// Polls `f` until it returns `Some`, for at most 30 s (watch backoff can reach several
/// seconds after an outage).
pub(crate) async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(replica, cgroup id)` of every target.
pub(crate) fn targets(d: &KubeDiscovery) -> Vec<(String, u64)> {
    d.scan()
        .scan
        .targets
        .targets()
        .iter()
        .map(|t| (t.replica.name.clone(), t.cgroup_id))
        .collect()
}

pub(crate) fn metric_line(
    registry: &prometheus_client::registry::Registry,
    prefix: &str,
) -> Option<String> {
    routeskew::metrics::encode(registry)
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string)
}

pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}
