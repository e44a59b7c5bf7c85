//! Kubernetes discovery against an in-process API server that speaks the list/watch
//! protocol (see `fake_apiserver`), with pods resolved against cgroup fixture trees.
//!
//! Modules: `pods` (targets from pods), `hosts` (host labels from Ingress and
//! IngressRoute objects), `outage` (API server outages, relists, readiness), `support`
//! and `e2e` (fixtures). The end-to-end test stays here, at the root: `cargo xtask test`
//! runs it by its exact name.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions unwrap too (clippy.toml covers only tests); a panic there fails the test"
)]

mod e2e;
#[path = "../fake_apiserver/mod.rs"]
mod fake_apiserver;
mod hosts;
mod outage;
mod pods;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{Agent, RealCgroup};
use fake_apiserver::{ingress, pod, FakeApi, Kind, NODE};
use support::{http_get, ID_A1, UID_A};

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
            // Ready may first carry a note (Ingress objects not listed yet): wait for the
            // state with everything listed.
            if r.0 == 200 && r.1 == "ready\n" {
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
