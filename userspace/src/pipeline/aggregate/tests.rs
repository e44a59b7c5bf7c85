use super::slot::{class_index, outcome_index, reason_index, source_index};
use super::*;
use crate::discovery::{Attribution, Target};
use crate::event::UpstreamFailureReason;
use crate::hosts::{Host, MAX_KNOWN_HOSTS, OTHER_HOST};
use crate::metrics::{encode, BuildInfo};
use crate::pipeline::classify::{HttpClass, Source, WsOutcome};
use prometheus_client::registry::Registry;

fn target(name: &str, cg: u64) -> Target {
    Target {
        replica: Replica {
            name: name.into(),
            namespace: "ns".into(),
        },
        cgroup_id: cg,
        pids: vec![],
        attribution: Attribution::Cgroup,
        group: "traefik".into(),
        ready_since: None,
        endpoints: Vec::new(),
    }
}

fn origin(cg: u64) -> Origin {
    Origin {
        tgid: 1,
        cgroup_id: cg,
    }
}

fn setup() -> (Aggregator, Registry) {
    let (a, m, _) = setup_with(
        KnownHosts::new(["App.Example.test.", "bad host"]),
        Duration::from_secs(60),
    );
    (a, m)
}

/// An aggregator over replicas r1 and r2, its registry, and its pipeline metrics.
fn setup_with(
    hosts: KnownHosts,
    grace: Duration,
) -> (
    Aggregator,
    Registry,
    crate::pipeline::metrics::PipelineMetrics,
) {
    let mut m = Registry::with_prefix("routeskew");
    let contract = Contract::register(
        &mut m,
        BuildInfo {
            version: "t".into(),
            kernel: "k".into(),
        },
    );
    let metrics = crate::pipeline::metrics::PipelineMetrics::register(&mut m);
    let mut a = Aggregator::new(
        hosts.into(),
        grace,
        contract,
        metrics.removed_replicas.clone(),
        metrics.evicted_hosts.clone(),
    );
    a.set_targets(TargetSet::new(vec![target("r1", 10), target("r2", 20)]));
    (a, m, metrics)
}

fn http(cg: u64, host: Host) -> Observation {
    Observation::Http {
        origin: origin(cg),
        host,
        class: HttpClass::Ok,
        source: Source::Passive,
    }
}

#[test]
fn host_label_is_bounded() {
    let (a, _) = setup();
    assert_eq!(
        a.host_label(&Host::Name("app.example.test".into())),
        "app.example.test"
    );
    assert_eq!(a.host_label(&Host::Name("evil.test".into())), OTHER_HOST);
    assert_eq!(a.host_label(&Host::Invalid), OTHER_HOST);
    assert_eq!(a.host_label(&Host::Missing), OTHER_HOST);
    assert_eq!(a.host_label(&Host::Name("bad host".into())), OTHER_HOST);
}

#[test]
fn records_per_replica_and_removes_after_grace() {
    let (mut a, m) = setup();
    let app = || Host::Name("app.example.test".into());
    assert!(a.record(&http(10, app())));
    assert!(a.record(&http(10, app())));
    assert!(a.record(&http(20, Host::Name("zzz.test".into()))));
    assert!(!a.record(&http(30, app())));
    let t = encode(&m);
    assert!(t.contains("routeskew_http_responses_total{replica=\"r1\",namespace=\"ns\",host=\"app.example.test\",class=\"ok\",source=\"passive\"} 2\n"), "{t}");
    assert!(t.contains("routeskew_http_responses_total{replica=\"r2\",namespace=\"ns\",host=\"other\",class=\"ok\",source=\"passive\"} 1\n"));
    // Alerting series exist at zero from the start.
    assert!(t.contains("routeskew_http_responses_total{replica=\"r2\",namespace=\"ns\",host=\"app.example.test\",class=\"router_miss\",source=\"passive\"} 0\n"));

    const S: u64 = 1_000_000_000;
    a.set_targets(TargetSet::new(vec![target("r2", 20)]));
    a.tick(100 * S);
    a.tick(159 * S);
    assert!(encode(&m).contains("replica=\"r1\""));
    a.tick(160 * S);
    let t = encode(&m);
    assert!(!t.contains("replica=\"r1\""), "{t}");
    assert!(t.contains("replica=\"r2\""));
    assert!(t.contains("routeskew_pipeline_removed_replicas_total 1\n"));

    // A replica that comes back within the grace period keeps its series.
    a.set_targets(TargetSet::new(vec![]));
    a.tick(200 * S);
    a.set_targets(TargetSet::new(vec![target("r2", 20)]));
    a.tick(300 * S);
    assert!(encode(&m).contains("replica=\"r2\""));
}

#[test]
fn known_hosts_change_at_run_time_and_departed_hosts_expire() {
    let (mut a, m) = setup();
    let host = |h: &str| Host::Name(h.into());
    let series = |replica: &str, host: &str| {
        format!("routeskew_http_responses_total{{replica=\"{replica}\",namespace=\"ns\",host=\"{host}\",class=\"ok\",source=\"passive\"}} ")
    };
    let value = |m: &Registry, replica: &str, host: &str| {
        encode(m)
            .lines()
            .find_map(|l| l.strip_prefix(series(replica, host).as_str()))
            .map(|v| v.to_string())
    };
    assert!(a.record(&http(10, host("new.test"))));
    assert_eq!(value(&m, "r1", "other").as_deref(), Some("1"));

    a.set_known_hosts(KnownHosts::new(["app.example.test", "NEW.test"]).into());
    assert_eq!(a.host_labels(), ["app.example.test", "new.test", "other"]);
    // Zero router-miss series exist for the new host on every replica.
    assert!(encode(&m).contains("routeskew_http_responses_total{replica=\"r2\",namespace=\"ns\",host=\"new.test\",class=\"router_miss\",source=\"passive\"} 0\n"));
    assert!(a.record(&http(10, host("new.test"))));
    assert!(a.record(&http(10, host("app.example.test"))));
    assert_eq!(value(&m, "r1", "new.test").as_deref(), Some("1"));
    assert_eq!(value(&m, "r1", "app.example.test").as_deref(), Some("1"));

    // app.example.test leaves: counted as other at once, its series stay for the grace.
    a.set_known_hosts(KnownHosts::new(["new.test"]).into());
    assert!(a.record(&http(10, host("app.example.test"))));
    assert_eq!(value(&m, "r1", "other").as_deref(), Some("2"));
    assert!(a.record(&http(10, host("new.test"))));
    assert_eq!(value(&m, "r1", "new.test").as_deref(), Some("2"));
    const S: u64 = 1_000_000_000;
    a.tick(100 * S);
    a.tick(159 * S);
    assert_eq!(value(&m, "r1", "app.example.test").as_deref(), Some("1"));
    a.tick(160 * S);
    assert!(!encode(&m).contains("host=\"app.example.test\""));
    assert_eq!(value(&m, "r1", "new.test").as_deref(), Some("2"));

    // A host that comes back within the grace continues its series.
    a.set_known_hosts(KnownHosts::default().into());
    a.tick(200 * S);
    a.set_known_hosts(KnownHosts::new(["new.test"]).into());
    a.tick(300 * S);
    assert!(a.record(&http(10, host("new.test"))));
    assert_eq!(value(&m, "r1", "new.test").as_deref(), Some("3"));

    // Bounded: past the limit hosts are other.
    let many: Vec<String> = (0..MAX_KNOWN_HOSTS + 10)
        .map(|i| format!("h{i}.test"))
        .collect();
    a.set_known_hosts(KnownHosts::new(&many).into());
    assert_eq!(a.host_labels().len(), MAX_KNOWN_HOSTS + 1);
    assert_eq!(
        a.host_label(&host(&format!("h{}.test", MAX_KNOWN_HOSTS))),
        OTHER_HOST
    );
    assert_eq!(a.host_label(&host("h0.test")), "h0.test");
}

#[test]
fn label_indexes_follow_the_all_arrays() {
    for (i, c) in HttpClass::ALL.iter().enumerate() {
        assert_eq!(class_index(*c), i);
    }
    for (i, o) in WsOutcome::ALL.iter().enumerate() {
        assert_eq!(outcome_index(*o), i);
    }
    for (i, s) in Source::ALL.iter().enumerate() {
        assert_eq!(source_index(*s), i);
    }
    for (i, r) in UpstreamFailureReason::ALL.iter().enumerate() {
        assert_eq!(reason_index(*r), i);
    }
}

#[test]
fn cached_counters_follow_target_changes_and_removal() {
    let (mut a, m) = setup();
    let app = || Host::Name("app.example.test".into());
    let series = |replica: &str| {
        format!("routeskew_http_responses_total{{replica=\"{replica}\",namespace=\"ns\",host=\"app.example.test\",class=\"ok\",source=\"passive\"}} ")
    };
    let value = |m: &Registry, replica: &str| {
        let t = encode(m);
        t.lines()
            .find_map(|l| l.strip_prefix(series(replica).as_str()))
            .map(|v| v.to_string())
    };
    assert!(a.record(&http(10, app())));
    assert_eq!(value(&m, "r1").as_deref(), Some("1"));
    // The cgroup now belongs to another replica: counted there, from the first event.
    a.set_targets(TargetSet::new(vec![target("r3", 10), target("r2", 20)]));
    assert!(a.record(&http(10, app())));
    assert_eq!(value(&m, "r3").as_deref(), Some("1"));
    assert_eq!(value(&m, "r1").as_deref(), Some("1"));
    // r1's series go after the grace period; when it comes back, its counters start
    // from new series rather than counting into the removed ones.
    const S: u64 = 1_000_000_000;
    a.tick(10 * S);
    a.tick(70 * S);
    assert_eq!(value(&m, "r1"), None);
    a.set_targets(TargetSet::new(vec![target("r1", 30)]));
    assert!(a.record(&http(30, app())));
    assert!(a.record(&http(30, app())));
    assert_eq!(value(&m, "r1").as_deref(), Some("2"));
    // Unknown origins stay unknown, cached or not.
    assert!(!a.record(&http(10, app())));
    assert!(!a.record(&http(10, app())));
    assert!(!a.is_known(origin(10)));
    assert!(a.is_known(origin(30)));
}

/// The prober's verdicts, durations and router counts are series of the replica: they
/// go with it after the grace period, and a dropped host's verdicts go with the host.
#[test]
fn probe_series_share_the_replica_and_host_lifetimes() {
    let (mut a, m) = setup();
    let verdict = |host: &str, success| ProbeVerdict {
        host: host.into(),
        check: ProbeCheck::Http,
        success,
        answered: true,
        router_miss: !success,
    };
    assert!(a.record_probe_verdict(origin(10), &verdict("App.Example.test", false)));
    assert!(a.record_probe_verdict(origin(20), &verdict("app.example.test", true)));
    assert!(a.record_probe_duration(origin(10), ProbeCheck::WebSocket, Duration::from_millis(20)));
    assert!(a.record_routers(origin(10), 7));
    assert!(!a.record_routers(origin(30), 7));
    let t = encode(&m);
    for series in [
        "routeskew_probe_success{replica=\"r1\",namespace=\"ns\",host=\"app.example.test\",check=\"http\"} 0\n",
        "routeskew_probe_success{replica=\"r2\",namespace=\"ns\",host=\"app.example.test\",check=\"http\"} 1\n",
        "routeskew_probe_duration_seconds_count{replica=\"r1\",namespace=\"ns\",check=\"websocket\"} 1\n",
        "routeskew_replica_routers{replica=\"r1\",namespace=\"ns\"} 7\n",
    ] {
        assert!(t.contains(series), "{series} missing in {t}");
    }

    const S: u64 = 1_000_000_000;
    // The host is dropped: its verdicts stay for the grace period, then go.
    a.set_known_hosts(Arc::new(KnownHosts::new(["other.test"])));
    a.tick(S);
    assert!(encode(&m).contains("routeskew_probe_success{"));
    a.tick(61 * S);
    assert!(!encode(&m).contains("routeskew_probe_success{"));
    // r1 leaves: its duration and router count go after the grace period.
    a.set_targets(TargetSet::new(vec![target("r2", 20)]));
    a.tick(100 * S);
    assert!(encode(&m).contains("routeskew_replica_routers{replica=\"r1\""));
    a.tick(160 * S);
    let t = encode(&m);
    assert!(
        !t.contains("routeskew_replica_routers{replica=\"r1\""),
        "{t}"
    );
    assert!(!t.contains("check=\"websocket\""), "{t}");
}

/// Tenants replacing their hosts cannot grow the series without bound (issue 16, item 7):
/// 1,000 hosts replaced every 10 s for 5 minutes, each new host counted on both replicas,
/// against a 5-minute grace period: the host-labelled series stay within twice the steady
/// state, and what went early is counted.
#[test]
fn host_churn_keeps_the_series_within_twice_the_steady_state() {
    let (mut a, _m, metrics) = setup_with(KnownHosts::default(), Duration::from_secs(300));
    const S: u64 = 1_000_000_000;
    let generation =
        |g: usize| -> Vec<String> { (0..1000).map(|i| format!("g{g}-h{i}.test")).collect() };
    let mut steady = 0;
    let mut most = 0;
    for g in 0..31 {
        let hosts = generation(g);
        a.set_known_hosts(KnownHosts::new(&hosts).into());
        for h in hosts.iter().step_by(10) {
            for cg in [10, 20] {
                assert!(a.record(&Observation::Http {
                    origin: origin(cg),
                    host: Host::Name(h.as_str().into()),
                    class: HttpClass::Ok,
                    source: Source::Passive,
                }));
            }
        }
        a.tick(g as u64 * 10 * S);
        let n = a.host_series();
        if g == 0 {
            steady = n;
        }
        most = most.max(n);
    }
    assert!(steady > 0);
    assert!(
        most <= 2 * steady,
        "{most} host series at most, steady state {steady}"
    );
    let evicted = metrics.evicted_hosts.get();
    assert!(evicted > 0, "hosts went early and were counted");
    eprintln!("steady {steady}, most {most}, evicted {evicted}");
}
