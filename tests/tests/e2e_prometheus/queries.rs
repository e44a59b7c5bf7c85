//! The PromQL checks: what Prometheus answers about the exposition, the router misses,
//! the per-replica ratio and skew that single out the broken replica, the WebSocket
//! outcomes, and the agent's own health.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use routeskew_testbed::http::HttpConn;
use routeskew_testbed::prometheus::{self, Prometheus};
use routeskew_testbed::tally::Table;
use routeskew_testbed::Agent;

use crate::tables::{by, count, show, Verdict};
use crate::{KERNEL_COUNTERS_TIMEOUT, WINDOW};

/// The replicas by role, and the host the broken one lacks.
pub(crate) struct Fleet {
    pub(crate) names: Vec<String>,
    pub(crate) broken: String,
    pub(crate) healthy: BTreeSet<String>,
    pub(crate) missing: String,
}

/// Before any traffic: the agent answers Prometheus's scrape with OpenMetrics, Prometheus
/// knows the contract families' types, and the router-miss series exist at zero.
pub(crate) async fn before_traffic(
    agent: &Agent,
    prom: &Prometheus,
    fleet: &Fleet,
    v: &mut Verdict,
) {
    let (names, missing) = (&fleet.names, &fleet.missing);
    // Prometheus 2.42 picks its parser from the answer's Content-Type, so `up` with no
    // error proves the OpenMetrics parser (which insists on `# EOF`) accepted the
    // exposition, provided the agent answers Prometheus's Accept with OpenMetrics.
    let mut conn = HttpConn::connect(agent.addr).await.unwrap();
    let scrape = conn
        .round_trip(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: {}\r\nAccept: {}\r\nConnection: close\r\n\r\n",
                agent.addr,
                prometheus::SCRAPE_ACCEPT
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let ctype = scrape.header("content-type").unwrap_or("").to_string();
    v.check(
        scrape.status == 200
            && ctype.starts_with("application/openmetrics-text")
            && scrape.body_text().ends_with("# EOF\n"),
        "the agent answers Prometheus's scrape with OpenMetrics",
        || format!("status {}, Content-Type {ctype:?}", scrape.status),
    );
    for (family, kind) in [
        ("routeskew_http_responses", "counter"),
        ("routeskew_ws_upgrades", "counter"),
        ("routeskew_targets", "gauge"),
    ] {
        let meta = prom.metadata(family).await.unwrap();
        v.check(
            meta.iter()
                .any(|m| m.get("type").map(String::as_str) == Some(kind)),
            &format!("Prometheus knows {family} as a {kind}"),
            || format!("metadata {meta:?}"),
        );
    }

    // Before any traffic: the router-miss series alerts are computed from already exist
    // at zero, so the first miss is an increase Prometheus can see, not a new series.
    let zeros = prom
        .query(&format!(
            r#"routeskew_http_responses_total{{host="{missing}",class="router_miss",source="passive"}}"#
        ))
        .await
        .unwrap();
    let zero_replicas: BTreeSet<&str> = zeros
        .iter()
        .filter(|s| s.value == 0.0)
        .map(|s| s.label("replica"))
        .collect();
    v.check(
        zeros.len() == names.len() && zero_replicas == names.iter().map(String::as_str).collect(),
        "router-miss series of every replica exist at 0 before traffic",
        || show(&zeros),
    );
}

/// After the traffic: router misses, their ratio and skew, WebSocket outcomes.
pub(crate) async fn verdict(
    prom: &Prometheus,
    fleet: &Fleet,
    want_ws: &Table,
    miss_http: u64,
    v: &mut Verdict,
) {
    let Fleet {
        names,
        broken,
        healthy,
        missing,
    } = fleet;
    let miss_ws = count(want_ws, broken, missing, "router_miss");
    // Router misses: only the broken replica, only the host it lacks, the exact number
    // sent there (plain requests and refused upgrades alike).
    let q = r#"sum by (replica, host) (routeskew_http_responses_total{class="router_miss"}) > 0"#;
    let misses = prom.query(q).await.unwrap();
    let got: BTreeMap<(String, String), f64> = misses
        .iter()
        .map(|s| ((s.label("replica").into(), s.label("host").into()), s.value))
        .collect();
    let want = BTreeMap::from([((broken.clone(), missing.clone()), miss_http as f64)]);
    v.check(got == want, q, || {
        format!("got {}, want {want:?}", show(&misses))
    });

    // The alerting form: a positive increase over the window, for that pair alone.
    let q = format!(
        r#"sum by (replica, host) (increase(routeskew_http_responses_total{{class="router_miss"}}[{WINDOW}])) > 0"#
    );
    let inc = prom.query(&q).await.unwrap();
    let got: BTreeSet<(String, String)> = inc
        .iter()
        .map(|s| (s.label("replica").into(), s.label("host").into()))
        .collect();
    v.check(
        got == BTreeSet::from([(broken.clone(), missing.clone())]),
        &q,
        || show(&inc),
    );

    // The per-replica router-miss ratio of the host: 1 on the broken replica, 0 elsewhere.
    let ratio = format!(
        r#"(sum by (replica) (routeskew_http_responses_total{{host="{missing}",class="router_miss"}}) / sum by (replica) (routeskew_http_responses_total{{host="{missing}"}}))"#
    );
    let ratios = prom.query(&ratio).await.unwrap();
    let want: BTreeMap<String, f64> = names
        .iter()
        .map(|n| (n.clone(), if n == broken { 1.0 } else { 0.0 }))
        .collect();
    v.check(by(&ratios, "replica") == want, &ratio, || {
        format!("got {}, want {want:?}", show(&ratios))
    });

    // Skew: each replica's ratio minus the fleet's average ratio. The broken one is 2/3
    // above it, the healthy ones 1/3 below; a threshold between singles it out.
    let skew = format!("{ratio} - on() group_left() avg({ratio})");
    let skews = prom.query(&skew).await.unwrap();
    let n = names.len() as f64;
    let skew_ok = skews.len() == names.len()
        && skews.iter().all(|s| {
            let want = if s.label("replica") == broken {
                1.0 - 1.0 / n
            } else {
                -1.0 / n
            };
            (s.value - want).abs() < 1e-9
        });
    v.check(skew_ok, &skew, || {
        format!(
            "got {}, want {broken} at 1-1/{n}, the others at -1/{n}",
            show(&skews)
        )
    });
    let alert = format!("({skew}) > 0.25");
    let firing = prom.query(&alert).await.unwrap();
    let got: BTreeSet<&str> = firing.iter().map(|s| s.label("replica")).collect();
    v.check(got == BTreeSet::from([broken.as_str()]), &alert, || {
        format!("got {}, want only {broken}", show(&firing))
    });

    // WebSocket upgrades of the host: refused by Traefik on the broken replica only,
    // upgraded on the others.
    let q = r#"sum by (replica) (routeskew_ws_upgrades_total{outcome="router_miss"}) > 0"#;
    let ws_miss = prom.query(q).await.unwrap();
    let want = BTreeMap::from([(broken.clone(), miss_ws as f64)]);
    v.check(by(&ws_miss, "replica") == want, q, || {
        format!("got {}, want {want:?}", show(&ws_miss))
    });
    let q = format!(
        r#"sum by (replica) (routeskew_ws_upgrades_total{{host="{missing}",outcome="upgraded"}}) > 0"#
    );
    let ws_up = prom.query(&q).await.unwrap();
    let want: BTreeMap<String, f64> = healthy
        .iter()
        .map(|h| (h.clone(), count(want_ws, h, missing, "upgraded") as f64))
        .collect();
    v.check(by(&ws_up, "replica") == want, &q, || {
        format!("got {}, want {want:?}", show(&ws_up))
    });
}

/// The agent's own health, as Prometheus sees it.
pub(crate) async fn agent_health(prom: &Prometheus, names: &[String], v: &mut Verdict) {
    let q = r#"routeskew_targets{state="attached"}"#;
    let attached = prom.query(q).await.unwrap();
    v.check(
        attached.len() == 1 && attached[0].value == names.len() as f64,
        q,
        || format!("got {}, want {}", show(&attached), names.len()),
    );
    // The kernel's counters reach /metrics on the agent's 1 s housekeeping tick, not with
    // each event, so they may trail the traffic counts above by a tick and a scrape.
    let q = "sum(routeskew_sensor_events_total) > 0";
    let t_kernel = Instant::now();
    let events = loop {
        let events = prom.query(q).await.unwrap();
        if !events.is_empty() || t_kernel.elapsed() > KERNEL_COUNTERS_TIMEOUT {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    v.check(events.len() == 1, q, || {
        format!("{} after {KERNEL_COUNTERS_TIMEOUT:?}", show(&events))
    });
    // `sum` of an absent metric is an empty result, not 0: one element is required.
    let q = "sum(routeskew_sensor_lost_events_total)";
    let lost = prom.query(q).await.unwrap();
    v.check(lost.len() == 1 && lost[0].value == 0.0, q, || {
        format!("got {}, want one element at 0", show(&lost))
    });
    let q = r#"up{job="routeskew"}"#;
    let up = prom.query(q).await.unwrap();
    v.check(up.len() == 1 && up[0].value == 1.0, q, || show(&up));
    let targets = prom.targets().await.unwrap();
    v.check(
        targets.len() == 1 && targets[0].health == "up" && targets[0].last_error.is_empty(),
        "the agent is Prometheus's only target, up and scraped without error",
        || format!("{targets:?}"),
    );
}
