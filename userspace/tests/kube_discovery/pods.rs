//! Pods on this node become targets as their containers start, restart and go.

use std::time::Duration;

use routeskew::discovery::kubernetes::KubeDiscovery;
use routeskew::pipeline::{Pipeline, PipelineConfig};

use crate::fake_apiserver::{pod, FakeApi, Kind, NODE};
use crate::support::{config, metrics, targets, until, Cgroups, ID_A1, ID_A2, ID_B1, UID_A, UID_B};

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
    let reason = f.reason.to_string();
    assert!(reason.contains("no cgroup for pod uid"), "{reason}");
    // The runtime creates the cgroup a moment later; the next scan finds it.
    let id = cg.add(UID_A, ID_A1, 1);
    assert_eq!(targets(&d), vec![("traefik-a".to_string(), id)]);
    assert!(d.scan().scan.failures.is_empty());
}
