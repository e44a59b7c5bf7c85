//! API server outages, expired resource versions, readiness before the first list, and a
//! missing cluster configuration.

use std::sync::Arc;

use routeskew::discovery::kubernetes::KubeDiscovery;
use routeskew::metrics::{Exposition, Readiness};

use crate::fake_apiserver::{ingress, pod, FakeApi, Kind, NODE};
use crate::support::{
    config, http_get, metric_line, metrics, targets, until, Cgroups, ID_A1, ID_A2, ID_B1, UID_A,
    UID_B,
};

#[tokio::test]
async fn api_outage_keeps_the_last_state_and_recovers() {
    let api = FakeApi::start(false).await;
    let cg = Cgroups::new("outage");
    let all = metrics();
    let discovery_metrics = all.discovery.clone();
    let readiness = Readiness::new("starting");
    let m = Arc::new(Exposition::new(all.registry, readiness.clone(), all.server));
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
        metric_line(m.registry(), "routeskew_discovery_api_up").as_deref(),
        Some("routeskew_discovery_api_up 1")
    );

    api.stop().await;
    until("api_up 0", || (!d.api_up()).then_some(())).await;
    assert_eq!(
        metric_line(m.registry(), "routeskew_discovery_api_up").as_deref(),
        Some("routeskew_discovery_api_up 0")
    );
    let errors = metric_line(
        m.registry(),
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

    // A live watch told 410 relists as well. The watch after the relist must be live
    // first: a compaction before it arrives leaves nothing to tell (it would then start
    // at the compacted version itself and see the deletion as a plain event).
    until("watching again after the relist", || {
        api.requests()
            .iter()
            .rfind(|r| r.starts_with("/api/v1/pods?"))
            .is_some_and(|r| r.contains("watch=true"))
            .then_some(())
    })
    .await;
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
