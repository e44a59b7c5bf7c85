//! Host labels follow Ingress and IngressRoute objects, in both IngressRoute API groups.

use routeskew::discovery::kubernetes::KubeDiscovery;

use crate::fake_apiserver::{ingress, ingress_route, FakeApi, Kind};
use crate::support::{config, metric_line, metrics, until, Cgroups};

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
