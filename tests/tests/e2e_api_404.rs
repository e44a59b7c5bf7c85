//! A 404 from Traefik's own API is not a router miss (issue 13, item 1): the API answers
//! unknown paths with the same `404 page not found` as the router chain, through the same
//! `net/http.NotFound`. The semantic sensor tells them apart by `NotFound`'s caller (the
//! API's router, resolved from the binary), so requests for unknown API paths count as
//! `client_error`, while an unrouted Host on an entrypoint stays a `router_miss`.
//!
//! Run as root after building the agent: `cargo test -p routeskew-testbed --test
//! e2e_api_404`.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::time::Duration;

use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::{e2e, http, Agent, AgentConfig, Testbed, TestbedConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_404s_are_client_errors_and_unrouted_hosts_router_misses() {
    let agent_bin = e2e::preconditions();
    let bed = Testbed::start(TestbedConfig {
        replicas: 1,
        broken_replica: None,
        access_log: false,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let replica = bed.replicas()[0].clone();
    let agent = Agent::start(AgentConfig {
        binary: Some(agent_bin),
        extra_args: ["--sensor", "semantic", "--probe-interval", "0s"]
            .map(String::from)
            .to_vec(),
        ..AgentConfig::for_testbed(&bed)
    })
    .await
    .expect("starting the agent");

    let api = replica.api_addr;
    for path in [
        "/api/no-such-thing",
        "/api/http/routers/nope@file",
        "/api/entrypoints/none",
    ] {
        let r = http::get_local(api, path).await.expect("the API answers");
        assert_eq!(r.status, 404, "{path}");
    }
    let web = replica.web_addr;
    for _ in 0..2 {
        let r = http::get_once(web, "unrouted.example.test", "/")
            .await
            .expect("the entrypoint answers");
        assert_eq!(r.status, 404);
    }
    let class = |m: &Metrics, class: &str| {
        m.sum(
            "routeskew_http_responses_total",
            &[("replica", replica.name.as_str()), ("class", class)],
        )
    };
    let m = agent
        .scrape_until(Duration::from_secs(10), |m| {
            class(m, "client_error") + class(m, "router_miss") >= 5.0
        })
        .await
        .expect("scrape");
    assert_eq!(
        (class(&m, "client_error"), class(&m, "router_miss")),
        (3.0, 2.0),
        "three API 404s are client errors, two unrouted hosts router misses; agent log:\n{}",
        agent.log_tail()
    );
}
