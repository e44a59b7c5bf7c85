//! The contract families and the exposition, end to end through the encoder.

use std::sync::Arc;

use super::*;

fn setup() -> (Registry, Contract) {
    let mut reg = Registry::with_prefix("routeskew");
    let c = Contract::register(
        &mut reg,
        BuildInfo {
            version: "1.2.3".into(),
            kernel: "6.18.0".into(),
        },
    );
    (reg, c)
}

fn replica_labels() -> ReplicaLabels {
    ReplicaLabels {
        replica: "r".into(),
        namespace: "n".into(),
    }
}

#[test]
fn contract_names_types_and_labels() {
    let (reg, m) = setup();
    let _ = m.http_responses.get_or_create(&HttpLabels {
        replica: "r".into(),
        namespace: "n".into(),
        host: "h".into(),
        class: "ok",
        source: "passive",
    });
    let _ = m.ws_upgrades.get_or_create(&WsLabels {
        replica: "r".into(),
        namespace: "n".into(),
        host: "h".into(),
        outcome: "reset",
        source: "probe",
    });
    let _ = m.ws_early_closes.get_or_create(&HostLabels {
        replica: "r".into(),
        namespace: "n".into(),
        host: "h".into(),
    });
    let _ = m.upstream_connect_failures.get_or_create(&UpstreamLabels {
        replica: "r".into(),
        namespace: "n".into(),
        reason: "refused",
    });
    m.probe_success
        .get_or_create(&ProbeLabels {
            replica: "r".into(),
            namespace: "n".into(),
            host: "h".into(),
            check: "websocket",
        })
        .set(1);
    m.probe_duration
        .get_or_create(&ProbeCheckLabels {
            replica: "r".into(),
            namespace: "n".into(),
            check: "http",
        })
        .observe(0.02);
    m.replica_routers.get_or_create(&replica_labels()).set(12);
    m.sensor_blind_probes.get_or_create(&replica_labels()).inc();
    let text = encode(&reg);
    for series in [
        "routeskew_http_responses_total{replica=\"r\",namespace=\"n\",host=\"h\",class=\"ok\",source=\"passive\"} 0\n",
        "routeskew_ws_upgrades_total{replica=\"r\",namespace=\"n\",host=\"h\",outcome=\"reset\",source=\"probe\"} 0\n",
        "routeskew_ws_early_closes_total{replica=\"r\",namespace=\"n\",host=\"h\"} 0\n",
        "routeskew_upstream_connect_failures_total{replica=\"r\",namespace=\"n\",reason=\"refused\"} 0\n",
        "routeskew_probe_success{replica=\"r\",namespace=\"n\",host=\"h\",check=\"websocket\"} 1\n",
        "routeskew_probe_duration_seconds_count{replica=\"r\",namespace=\"n\",check=\"http\"} 1\n",
        "routeskew_replica_routers{replica=\"r\",namespace=\"n\"} 12\n",
        "routeskew_sensor_blind_probes_total{replica=\"r\",namespace=\"n\"} 1\n",
    ] {
        assert!(text.contains(series), "{series} missing in:\n{text}");
    }
    for (name, ty) in [
        ("routeskew_http_responses", "counter"),
        ("routeskew_ws_upgrades", "counter"),
        ("routeskew_ws_early_closes", "counter"),
        ("routeskew_upstream_connect_failures", "counter"),
        ("routeskew_probe_success", "gauge"),
        ("routeskew_probe_duration_seconds", "histogram"),
        ("routeskew_replica_routers", "gauge"),
        ("routeskew_sensor_blind_probes", "counter"),
        ("routeskew_targets", "gauge"),
        ("routeskew_build_info", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {ty}\n")),
            "{name} {ty} missing in:\n{text}"
        );
    }
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("routeskew_build_info{version=\"1.2.3\",kernel=\"6.18.0\"} 1\n"));
    assert!(text.contains("routeskew_targets{state=\"attached\"} 0\n"));
}

#[test]
fn targets_gauge() {
    let (reg, m) = setup();
    m.set_targets(3, 1);
    let t = encode(&reg);
    assert!(t.contains("routeskew_targets{state=\"attached\"} 3\n"));
    assert!(t.contains("routeskew_targets{state=\"failed\"} 1\n"));
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let ct = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (status, ct, body.to_string())
}

#[tokio::test]
async fn serves_endpoints() {
    let (registry, m) = setup();
    let readiness = Readiness::new("starting");
    let r = readiness.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Exposition::new(
            registry,
            readiness,
            ServerMetrics::default(),
        )),
    ));

    let (status, _, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok\n");

    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body, "not ready: starting\n");
    r.set(false, "sensor not attached");
    assert_eq!(
        get(addr, "/readyz").await.2,
        "not ready: sensor not attached\n"
    );
    r.set(true, "");
    assert_eq!(get(addr, "/readyz").await.0, 200);
    r.set_note("kubernetes API unreachable");
    assert_eq!(
        get(addr, "/readyz").await,
        (
            200,
            "text/plain; charset=utf-8".into(),
            "ready\nkubernetes API unreachable\n".into()
        )
    );
    r.set_note("");
    assert_eq!(get(addr, "/readyz").await.2, "ready\n");

    m.set_targets(2, 0);
    let (status, ct, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(ct, OPENMETRICS_CONTENT_TYPE);
    assert!(body.contains("routeskew_targets{state=\"attached\"} 2\n"));
    assert_eq!(get(addr, "/nope").await.0, 404);
    server.abort();
}

#[test]
fn sample_names_follow_the_type_lines() {
    let text = "# HELP a_requests Requests.\n\
                # TYPE a_requests counter\n\
                a_requests_total{x=\"1\"} 3\n\
                # TYPE a_seconds histogram\n\
                # UNIT a_seconds seconds\n\
                # TYPE a_up gauge\n\
                a_up 1\n\
                # TYPE a_build info\n\
                # TYPE a_q summary\n\
                # TYPE a_odd\n\
                a_not_typed 2\n\
                # EOF\n";
    let want: std::collections::BTreeSet<String> = [
        "a_requests_total",
        "a_seconds_bucket",
        "a_seconds_sum",
        "a_seconds_count",
        "a_up",
        "a_build_info",
        "a_q",
        "a_q_sum",
        "a_q_count",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(sample_names(text), want);
    assert!(sample_names("").is_empty());
}

/// A burst of 100 scrapes of a large exposition: each gets the whole exposition or a
/// counted 503.
#[tokio::test]
async fn a_burst_of_scrapes_is_served_whole_or_refused_and_counted() {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Row {
        row: u32,
    }
    let (mut registry, _m) = setup();
    let server_metrics = ServerMetrics::register(&mut registry);
    let big = Family::<Row, Gauge>::default();
    registry.register("big", "Many series", big.clone());
    for row in 0..20_000 {
        big.get_or_create(&Row { row }).set(1);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Exposition::new(
            registry,
            Readiness::new("starting"),
            server_metrics,
        )),
    ));
    let scrapes: Vec<_> = (0..100)
        .map(|_| tokio::spawn(async move { get(addr, "/metrics").await }))
        .collect();
    let (mut served, mut refused) = (0u64, 0u64);
    for s in scrapes {
        let (status, _, body) = s.await.unwrap();
        match status {
            200 => {
                assert!(body.contains("big{row=\"19999\"} 1\n"));
                assert!(body.ends_with("# EOF\n"));
                served += 1;
            }
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(served > 0);
    let (_, _, body) = get(addr, "/metrics").await;
    assert!(
        body.contains(&format!("routeskew_scrapes_refused_total {refused}\n")),
        "{refused} refused"
    );
    server.abort();
}
