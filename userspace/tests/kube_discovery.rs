//! Kubernetes discovery against an in-process API server that speaks the list/watch
//! protocol (see `fake_apiserver`), with pods resolved against cgroup fixture trees.
#![allow(clippy::unwrap_used)]

mod fake_apiserver;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_apiserver::{ingress, ingress_route, pod, FakeApi, Kind, NODE};
use routeskew::agent::AgentMetrics;
use routeskew::discovery::kubernetes::{KubeConfig, KubeDiscovery};
use routeskew::metrics::{BuildInfo, Exposition, Readiness};
use routeskew::pipeline::{Pipeline, PipelineConfig};

const UID_A: &str = "3f1d2c4b-5a69-4788-9a6b-5c4d3e2f1a0b";
const UID_B: &str = "7a6b5c4d-3e2f-4a0b-8c9d-0e1f2a3b4c5d";
const ID_A1: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const ID_A2: &str = "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2";
const ID_B1: &str = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1";

/// A host cgroup v2 tree in a temp dir, laid out like a systemd-driver kubelet's.
struct Cgroups {
    root: PathBuf,
}

impl Cgroups {
    fn new(tag: &str) -> Self {
        let root =
            std::env::temp_dir().join(format!("routeskew-kube-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        Cgroups { root }
    }

    fn dir(&self, uid: &str, id: &str) -> PathBuf {
        self.root.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        ))
    }

    /// Creates the container's cgroup; returns its cgroup id (inode).
    fn add(&self, uid: &str, id: &str, pid: u32) -> u64 {
        let d = self.dir(uid, id);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.procs"), format!("{pid}\n")).unwrap();
        std::fs::metadata(&d).unwrap().ino()
    }

    fn remove(&self, uid: &str, id: &str) {
        std::fs::remove_dir_all(self.dir(uid, id)).unwrap();
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn metrics() -> AgentMetrics {
    AgentMetrics::register(BuildInfo {
        version: "test".into(),
        kernel: "test".into(),
    })
}

fn config(cgroups: &Path, static_hosts: &[&str]) -> KubeConfig {
    KubeConfig {
        node_name: NODE.into(),
        label_selector: "app.kubernetes.io/name=traefik".into(),
        pod_namespace: None,
        containers: vec![],
        ingress_class: "traefik".into(),
        static_hosts: static_hosts.iter().map(|s| s.to_string()).collect(),
        host_cgroup_root: cgroups.to_path_buf(),
        host_proc: cgroups.join("no-proc"),
        crd_recheck: Duration::from_millis(300),
    }
}

/// Polls `f` until it returns `Some`, for at most 30 s (watch backoff can reach several
/// seconds after an outage).
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
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
fn targets(d: &KubeDiscovery) -> Vec<(String, u64)> {
    d.scan()
        .scan
        .targets
        .targets()
        .iter()
        .map(|t| (t.replica.name.clone(), t.cgroup_id))
        .collect()
}

fn metric_line(registry: &prometheus_client::registry::Registry, prefix: &str) -> Option<String> {
    routeskew::metrics::encode(registry)
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string)
}

#[tokio::test]
async fn pod_churn_attaches_restarts_and_detaches() {
    let api = FakeApi::start(false).await;
    let cg = Cgroups::new("churn");
    let m = metrics();
    let d = KubeDiscovery::start(
        api.kube_config(),
        config(&cg.root, &[]),
        m.discovery.clone(),
    )
    .unwrap();

    until("first pod list", || d.readiness().ready.then_some(())).await;
    assert!(targets(&d).is_empty());

    // A pod still creating its container: nothing to watch, nothing failed.
    api.put(Kind::Pod, pod("traefik-a", UID_A, NODE, None, "10.42.0.11"));
    // A Traefik pod on another node and a non-Traefik pod here are not ours.
    api.put(
        Kind::Pod,
        pod("traefik-x", UID_B, "node-b", Some(ID_B1), "10.42.1.9"),
    );
    let mut other = pod("web-0", UID_B, NODE, Some(ID_B1), "10.42.0.30");
    other["metadata"]["labels"] = serde_json::json!({"app.kubernetes.io/name": "web"});
    api.put(Kind::Pod, other);
    cg.add(UID_B, ID_B1, 900);

    // The container starts.
    let a1 = cg.add(UID_A, ID_A1, 4242);
    api.put(
        Kind::Pod,
        pod("traefik-a", UID_A, NODE, Some(ID_A1), "10.42.0.11"),
    );
    until("traefik-a attached", || {
        (targets(&d) == vec![("traefik-a".to_string(), a1)]).then_some(())
    })
    .await;
    let scan = d.scan();
    assert!(scan.scan.failures.is_empty(), "{:?}", scan.scan.failures);
    let t = &scan.scan.targets.targets()[0];
    assert_eq!(t.replica.namespace, "traefik");
    assert_eq!(t.pids, vec![4242]);
    let web = t
        .endpoints
        .iter()
        .find(|e| e.port_name.as_deref() == Some("web"))
        .unwrap();
    assert_eq!(web.addr, "10.42.0.11:8000".parse().unwrap());
    // UDP (HTTP/3) ports are not probe endpoints.
    assert_eq!(t.endpoints.len(), 4);

    // The series of the replica exist from the start, and go after the grace period.
    let mut pipeline = Pipeline::new(
        PipelineConfig {
            known_hosts: vec!["app.test".into()],
            series_grace: Duration::from_secs(1),
            ..PipelineConfig::default()
        },
        m.contract.clone(),
        m.pipeline.clone(),
    );
    pipeline.set_targets(scan.scan.targets.clone());
    assert!(m
        .encode()
        .contains("replica=\"traefik-a\",namespace=\"traefik\""));

    // Restart: a new container id, a new cgroup; the old one goes away.
    let a2 = cg.add(UID_A, ID_A2, 4300);
    cg.remove(UID_A, ID_A1);
    let mut restarted = pod("traefik-a", UID_A, NODE, Some(ID_A2), "10.42.0.11");
    restarted["status"]["containerStatuses"][0]["restartCount"] = serde_json::json!(1);
    api.put(Kind::Pod, restarted);
    until("traefik-a on its new cgroup", || {
        (targets(&d) == vec![("traefik-a".to_string(), a2)]).then_some(())
    })
    .await;
    assert_ne!(a1, a2);

    // The pod is deleted.
    api.delete(Kind::Pod, "traefik", "traefik-a");
    until("traefik-a detached", || {
        targets(&d).is_empty().then_some(())
    })
    .await;
    pipeline.set_targets(d.scan().scan.targets);
    const S: u64 = 1_000_000_000;
    pipeline.tick(10 * S);
    assert!(m.encode().contains("replica=\"traefik-a\""));
    pipeline.tick(11 * S);
    assert!(!m.encode().contains("replica=\"traefik-a\""));

    // The server was asked for this node's Traefik pods only, with bookmarks.
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("/api/v1/pods?")
            && r.contains("fieldSelector=spec.nodeName=node-a")
            && r.contains("labelSelector=app.kubernetes.io/name=traefik")
            && r.contains("watch=true")
            && r.contains("allowWatchBookmarks=true")),
        "{reqs:#?}"
    );
}

#[tokio::test]
async fn pod_whose_cgroup_is_missing_is_a_failure_until_it_appears() {
    let api = FakeApi::start(false).await;
    let cg = Cgroups::new("missing");
    let d = KubeDiscovery::start(
        api.kube_config(),
        config(&cg.root, &[]),
        metrics().discovery,
    )
    .unwrap();
    api.put(
        Kind::Pod,
        pod("traefik-a", UID_A, NODE, Some(ID_A1), "10.42.0.11"),
    );
    let f = until("a failure", || d.scan().scan.failures.first().cloned()).await;
    assert_eq!(f.what, "pod traefik/traefik-a container traefik");
    assert!(f.reason.contains("no cgroup for pod uid"), "{}", f.reason);
    // The runtime creates the cgroup a moment later; the next scan finds it.
    let id = cg.add(UID_A, ID_A1, 1);
    assert_eq!(targets(&d), vec![("traefik-a".to_string(), id)]);
    assert!(d.scan().scan.failures.is_empty());
}

#[tokio::test]
async fn hosts_follow_ingresses_and_ingress_routes() {
    let api = FakeApi::start(false).await;
    let cg = Cgroups::new("hosts");
    let m = metrics();
    let d = KubeDiscovery::start(
        api.kube_config(),
        config(&cg.root, &["static.test"]),
        m.discovery.clone(),
    )
    .unwrap();
    until("first lists", || {
        (d.readiness().ready && d.readiness().detail.is_empty()).then_some(())
    })
    .await;
    assert_eq!(d.hosts().hosts, vec!["static.test"]);
    until("IngressRoute group discovered", || {
        (d.ingress_route_groups() == vec!["traefik.io"]).then_some(())
    })
    .await;

    api.put(
        Kind::Ingress,
        ingress("shop", &["Shop.Test", "*.wild.test"], Some("traefik")),
    );
    api.put(
        Kind::Ingress,
        ingress("internal", &["internal.test"], Some("nginx")),
    );
    api.put(Kind::Ingress, ingress("classless", &["plain.test"], None));
    until("ingress hosts", || {
        (d.hosts().hosts == vec!["static.test", "plain.test", "shop.test"]).then_some(())
    })
    .await;
    // The wildcard cannot be a label value.
    assert_eq!(d.hosts().dropped, 1);

    api.put(
        Kind::IngressRoute,
        ingress_route(
            "chat",
            &[
                "Host(`chat.test`) && PathPrefix(`/ws`)",
                "Host(`a.chat.test`) || (Host(`b.chat.test`) && !Host(`not.test`))",
                "HostRegexp(`^.+\\.chat\\.test$`)",
                "Host(`broken.test`",
            ],
        ),
    );
    until("ingress route hosts", || {
        (d.hosts().hosts
            == vec![
                "static.test",
                "a.chat.test",
                "b.chat.test",
                "chat.test",
                "plain.test",
                "shop.test",
            ])
        .then_some(())
    })
    .await;
    assert_eq!(d.hosts().unparsable_rules, 1);
    assert_eq!(
        metric_line(&m.registry, "routeskew_discovery_unparsable_rules").as_deref(),
        Some("routeskew_discovery_unparsable_rules 1")
    );
    assert_eq!(
        metric_line(&m.registry, "routeskew_discovery_known_hosts").as_deref(),
        Some("routeskew_discovery_known_hosts 6")
    );

    // The Ingress goes away: its hosts follow.
    api.delete(Kind::Ingress, "apps", "shop");
    api.delete(Kind::IngressRoute, "apps", "chat");
    until("hosts after deletion", || {
        (d.hosts().hosts == vec!["static.test", "plain.test"]).then_some(())
    })
    .await;

    // The Traefik v2 CRD group appears later: it is found and watched too.
    api.put(
        Kind::IngressRouteOld,
        ingress_route("legacy", &["Host(`legacy.test`)"]),
    );
    api.set_old_group(true);
    until("old group watched", || {
        (d.ingress_route_groups() == vec!["traefik.io", "traefik.containo.us"]).then_some(())
    })
    .await;
    until("old group hosts", || {
        d.hosts()
            .hosts
            .contains(&"legacy.test".to_string())
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn old_crd_group_present_from_the_start() {
    let api = FakeApi::start(true).await;
    let cg = Cgroups::new("oldgroup");
    api.put(
        Kind::IngressRouteOld,
        ingress_route("v2", &["Host(`v2.test`, `v2b.test`)"]),
    );
    api.put(
        Kind::IngressRoute,
        ingress_route("v3", &["Host(`v3.test`)"]),
    );
    let d = KubeDiscovery::start(
        api.kube_config(),
        config(&cg.root, &[]),
        metrics().discovery,
    )
    .unwrap();
    until("hosts of both groups", || {
        (d.hosts().hosts == vec!["v2.test", "v2b.test", "v3.test"]).then_some(())
    })
    .await;
    let mut groups = d.ingress_route_groups();
    groups.sort_unstable();
    assert_eq!(groups, vec!["traefik.containo.us", "traefik.io"]);
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
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

#[tokio::test]
async fn api_outage_keeps_the_last_state_and_recovers() {
    let api = FakeApi::start(false).await;
    let cg = Cgroups::new("outage");
    let all = metrics();
    let discovery_metrics = all.discovery.clone();
    let readiness = Readiness::new("starting");
    let m = Arc::new(Exposition {
        registry: all.registry,
        readiness: readiness.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(routeskew::metrics::serve(listener, m.clone()));

    let a1 = cg.add(UID_A, ID_A1, 10);
    api.put(
        Kind::Pod,
        pod("traefik-a", UID_A, NODE, Some(ID_A1), "10.42.0.11"),
    );
    api.put(Kind::Ingress, ingress("shop", &["shop.test"], None));
    let d =
        KubeDiscovery::start(api.kube_config(), config(&cg.root, &[]), discovery_metrics).unwrap();
    until("state listed", || {
        (targets(&d).len() == 1 && d.hosts().hosts == vec!["shop.test"]).then_some(())
    })
    .await;
    d.publish_readiness(&readiness);
    assert_eq!(http_get(addr, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(
        metric_line(&m.registry, "routeskew_discovery_api_up").as_deref(),
        Some("routeskew_discovery_api_up 1")
    );

    api.stop().await;
    until("api_up 0", || (!d.api_up()).then_some(())).await;
    assert_eq!(
        metric_line(&m.registry, "routeskew_discovery_api_up").as_deref(),
        Some("routeskew_discovery_api_up 0")
    );
    let errors = metric_line(
        &m.registry,
        "routeskew_discovery_api_errors_total{resource=\"pods\"}",
    )
    .unwrap();
    assert_ne!(
        errors,
        "routeskew_discovery_api_errors_total{resource=\"pods\"} 0"
    );
    // The last known state stays: the replica is still watched, its host still labelled.
    assert_eq!(targets(&d), vec![("traefik-a".to_string(), a1)]);
    assert_eq!(d.hosts().hosts, vec!["shop.test"]);
    d.publish_readiness(&readiness);
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("ready\nkubernetes API unreachable for "),
        "{body}"
    );
    assert!(body.contains("serving the last known state"), "{body}");

    // While it is down the pod restarts; once the server is back, the change arrives.
    let a2 = cg.add(UID_A, ID_A2, 11);
    api.put(
        Kind::Pod,
        pod("traefik-a", UID_A, NODE, Some(ID_A2), "10.42.0.11"),
    );
    api.restart().await;
    until("api_up 1", || d.api_up().then_some(())).await;
    until("restart seen after the outage", || {
        (targets(&d) == vec![("traefik-a".to_string(), a2)]).then_some(())
    })
    .await;
    d.publish_readiness(&readiness);
    assert_eq!(http_get(addr, "/readyz").await, (200, "ready\n".into()));
}

#[tokio::test]
async fn expired_resource_version_forces_a_relist() {
    let api = FakeApi::start(false).await;
    let cg = Cgroups::new("gone");
    let a = cg.add(UID_A, ID_A1, 10);
    let b = cg.add(UID_B, ID_B1, 20);
    api.put(
        Kind::Pod,
        pod("traefik-a", UID_A, NODE, Some(ID_A1), "10.42.0.11"),
    );
    let d = KubeDiscovery::start(
        api.kube_config(),
        config(&cg.root, &[]),
        metrics().discovery,
    )
    .unwrap();
    until("traefik-a", || {
        (targets(&d) == vec![("traefik-a".to_string(), a)]).then_some(())
    })
    .await;
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods?") && !r.contains("watch=true"))
        .count();

    // Outage during which history is compacted: the watch resumes from a version the
    // server no longer has, gets 410 Gone, and the watcher lists again. The deletion
    // happened while nobody watched; only the relist can reveal it.
    api.stop().await;
    api.delete(Kind::Pod, "traefik", "traefik-a");
    api.put(
        Kind::Pod,
        pod("traefik-b", UID_B, NODE, Some(ID_B1), "10.42.0.12"),
    );
    api.compact();
    api.restart().await;
    until("relisted state", || {
        (targets(&d) == vec![("traefik-b".to_string(), b)]).then_some(())
    })
    .await;
    let reqs = api.requests();
    let lists_after = reqs
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods?") && !r.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "{reqs:#?}");

    // A live watch told 410 relists as well.
    let lists_before = lists_after;
    api.compact();
    api.delete(Kind::Pod, "traefik", "traefik-b");
    until("second relist", || targets(&d).is_empty().then_some(())).await;
    let lists_after = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("/api/v1/pods?") && !r.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before);
}

#[tokio::test]
async fn not_ready_until_the_first_list() {
    let api = FakeApi::start(false).await;
    api.stop().await;
    let cg = Cgroups::new("notready");
    let readiness = Readiness::new("starting");
    let d = KubeDiscovery::start(
        api.kube_config(),
        config(&cg.root, &[]),
        metrics().discovery,
    )
    .unwrap();
    until("api_up 0", || (!d.api_up()).then_some(())).await;
    let r = d.readiness();
    assert!(!r.ready);
    assert!(
        r.detail
            .starts_with("waiting for the first list of Traefik pods: kubernetes API unreachable"),
        "{}",
        r.detail
    );
    d.publish_readiness(&readiness);
    assert!(!readiness.is_ready());
    api.restart().await;
    until("ready", || d.readiness().ready.then_some(())).await;
    d.publish_readiness(&readiness);
    assert!(readiness.is_ready());
}

#[test]
fn missing_cluster_config_is_a_clear_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // No in-cluster variables and a kubeconfig path that does not exist.
    let err = rt.block_on(async {
        // No other test in this binary infers its configuration from the environment.
        std::env::remove_var("KUBERNETES_SERVICE_HOST");
        std::env::set_var("KUBECONFIG", "/nonexistent/routeskew-kubeconfig");
        routeskew::discovery::kubernetes::infer_config().await
    });
    let msg = err.err().unwrap().to_string();
    assert!(
        msg.starts_with("no usable Kubernetes configuration"),
        "{msg}"
    );
}

/// A real cgroup v2 subtree shaped like kubelet's, removed on drop.
struct RealCgroup {
    top: PathBuf,
    leaf: PathBuf,
    child: Option<std::process::Child>,
}

impl RealCgroup {
    fn create(v2: &Path, uid: &str, id: &str) -> Self {
        let top = v2.join(format!("routeskew-e2e-{}.slice", std::process::id()));
        let leaf = top.join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        ));
        std::fs::create_dir_all(&leaf).unwrap();
        let child = std::process::Command::new("sleep")
            .arg("120")
            .spawn()
            .unwrap();
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
        RealCgroup {
            top,
            leaf,
            child: Some(child),
        }
    }
}

impl Drop for RealCgroup {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Leaf first: cgroup directories are removed one level at a time.
        let mut dir = self.leaf.clone();
        while dir.starts_with(&self.top) {
            let _ = std::fs::remove_dir(&dir);
            if !dir.pop() {
                break;
            }
        }
    }
}

/// `routeskew run --discovery kubernetes` as a process: kubeconfig pointing at the fake
/// API server, the real kernel sensor, a real cgroup for the pod's container.
#[tokio::test]
#[ignore = "needs root, a cgroup v2 mount and the eBPF object (cargo xtask build-ebpf)"]
async fn agent_runs_with_kubernetes_discovery() {
    let object = std::env::var_os("ROUTESKEW_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ebpf/routeskew-probes.o")
        });
    assert!(object.is_file(), "{} missing", object.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v2 = routeskew::discovery::local::cgroup2_mount(&mountinfo).expect("cgroup2 mount");
    let host_root = if v2.ends_with("unified") {
        v2.parent().unwrap().to_path_buf()
    } else {
        v2.clone()
    };
    let cg = RealCgroup::create(&v2, UID_A, ID_A1);

    let api = FakeApi::start(false).await;
    api.put(
        Kind::Pod,
        pod("traefik-a", UID_A, NODE, Some(ID_A1), "10.42.0.11"),
    );
    let dir = std::env::temp_dir().join(format!("routeskew-e2e-kube-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            api.url()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_routeskew"))
        .args(["run", "--discovery", "kubernetes", "--node-name", NODE])
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--ebpf-object")
        .arg(&object)
        .arg("--host-cgroup-root")
        .arg(&host_root)
        .args(["--host", "static.test", "--series-grace", "1s"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .spawn()
        .unwrap();
    let mut agent = Agent(child);

    let metrics_text = || async {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => Some(http_get(addr, "/metrics").await.1),
            Err(_) => None,
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let r = http_get(addr, "/readyz").await;
            if r.0 == 200 {
                break r;
            }
        }
        assert!(Instant::now() < deadline, "agent never became ready");
        assert!(agent.0.try_wait().unwrap().is_none(), "agent exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.1, "ready\n");

    let wait_metric = |want: &'static str| {
        let metrics_text = &metrics_text;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = metrics_text().await.unwrap_or_default();
                if text.contains(want) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{want} never appeared in:\n{text}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_metric("routeskew_targets{state=\"attached\"} 1\n").await;
    wait_metric("routeskew_http_responses_total{replica=\"traefik-a\",namespace=\"traefik\",host=\"static.test\",class=\"router_miss\",source=\"passive\"} 0\n").await;
    assert!(metrics_text()
        .await
        .unwrap()
        .contains("routeskew_discovery_api_up 1\n"));

    // An Ingress adds a host label at run time.
    api.put(Kind::Ingress, ingress("shop", &["shop.test"], None));
    wait_metric("routeskew_http_responses_total{replica=\"traefik-a\",namespace=\"traefik\",host=\"shop.test\",class=\"router_miss\",source=\"passive\"} 0\n").await;

    // The pod goes: detached, and its series go after the grace period.
    api.delete(Kind::Pod, "traefik", "traefik-a");
    wait_metric("routeskew_targets{state=\"attached\"} 0\n").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics_text()
        .await
        .unwrap()
        .contains("replica=\"traefik-a\"")
    {
        assert!(Instant::now() < deadline, "series of traefik-a stayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // API outage: still ready, the body says why it is degraded.
    api.stop().await;
    wait_metric("routeskew_discovery_api_up 0\n").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(addr, "/readyz").await;
        assert_eq!(status, 200);
        if body.contains("kubernetes API unreachable") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never reported the outage: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM, the way the kubelet stops the agent: a clean exit that detaches.
    // SAFETY: kill(2) on the pid of the child this test spawned and has not reaped.
    unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
    drop(cg);
}

/// Kills the agent if the test fails before stopping it.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
