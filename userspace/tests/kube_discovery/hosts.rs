//! Host labels follow Ingress and IngressRoute objects, in both IngressRoute API groups.

use routeskew::discovery::kubernetes::{KubeDiscovery, CLASS_ANNOTATION};
use routeskew::hosts::MAX_KNOWN_HOSTS;

use crate::fake_apiserver::{ingress, ingress_route, pod, FakeApi, Kind, NODE};
use crate::support::{config, metric_line, metrics, until, Cgroups, ID_A1, UID_A};

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
        // Named our class first, then class-less objects' (tenants') hosts.
        (d.hosts().hosts == vec!["static.test", "shop.test", "plain.test"]).then_some(())
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
                "shop.test",
                "a.chat.test",
                "b.chat.test",
                "chat.test",
                "plain.test",
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

/// Tenants cannot push the watched Traefik's own hosts out of the bounded `host` label
/// (issue 16, item 7): 1,200 class-less tenant Ingresses, whose hosts sort before the real
/// ones, beside five real hosts (`--host`, two Ingresses naming our class, a class-less
/// Ingress in the Traefik pod's namespace, an IngressRoute naming our class).
#[tokio::test]
async fn tenant_ingresses_cannot_crowd_out_the_real_hosts() {
    let api = FakeApi::start(false).await;
    let cg = Cgroups::new("tenants");
    api.put(
        Kind::Pod,
        pod("traefik-a", UID_A, NODE, Some(ID_A1), "10.42.0.11"),
    );
    let traefik_ns = api_pod_namespace();
    let in_ns = |mut o: serde_json::Value, ns: &str| {
        o["metadata"]["namespace"] = ns.into();
        o
    };
    api.put(
        Kind::Ingress,
        ingress("real-1", &["z-real-1.test"], Some("traefik")),
    );
    api.put(
        Kind::Ingress,
        ingress("real-2", &["z-real-2.test"], Some("traefik")),
    );
    api.put(
        Kind::Ingress,
        in_ns(ingress("real-3", &["z-real-3.test"], None), &traefik_ns),
    );
    let mut route = ingress_route("real-4", &["Host(`z-real-4.test`)"]);
    route["metadata"]["annotations"] = serde_json::json!({CLASS_ANNOTATION: "traefik"});
    api.put(Kind::IngressRoute, route);
    // 1,100 tenants with one host each, and one with 100.
    for i in 0..1100 {
        let host = format!("a-tenant-{i:04}.test");
        api.put(
            Kind::Ingress,
            in_ns(ingress("t", &[&host], None), &format!("tenant-{i:04}")),
        );
    }
    for i in 0..100 {
        let host = format!("a-crowd-{i:03}.test");
        api.put(
            Kind::Ingress,
            in_ns(ingress(&format!("c{i}"), &[&host], None), "crowd"),
        );
    }
    let m = metrics();
    let d = KubeDiscovery::start(
        api.kube_config(),
        config(&cg.root, &["z-static.test"]),
        m.discovery.clone(),
    )
    .unwrap();
    let real = [
        "z-static.test",
        "z-real-1.test",
        "z-real-2.test",
        "z-real-3.test",
        "z-real-4.test",
    ];
    let set = until("every object listed", || {
        let set = d.hosts();
        (set.hosts.len() == MAX_KNOWN_HOSTS
            && real.iter().all(|r| set.hosts.contains(&r.to_string())))
        .then_some(set)
    })
    .await;
    // The five come first, --host before the rest.
    assert_eq!(set.hosts[..5], real);
    let crowd = set
        .hosts
        .iter()
        .filter(|h| h.starts_with("a-crowd-"))
        .count();
    assert_eq!(crowd, 50, "one namespace gets its quota, no more");
    // 1,150 tenant hosts within their quotas, 995 of them labelled; 50 over the quota.
    assert_eq!(set.dropped, (1150 - 995) + 50);
    assert_eq!(
        metric_line(&m.registry, "routeskew_discovery_dropped_hosts").as_deref(),
        Some("routeskew_discovery_dropped_hosts 205")
    );
}

/// The namespace of the fake API server's Traefik pods.
fn api_pod_namespace() -> String {
    pod("x", UID_A, NODE, None, "10.0.0.1")["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_string()
}
