use std::time::{Duration, SystemTime};

use super::*;

const S: u64 = 1_000_000_000;

fn replica(name: &str) -> Replica {
    Replica {
        name: name.to_string(),
        namespace: "traefik".to_string(),
    }
}

fn facts(name: &str, group: &str, ready_ago: Duration, wall: SystemTime) -> ReplicaFacts {
    ReplicaFacts {
        replica: replica(name),
        group: group.to_string(),
        ready_since: Some(wall - ready_ago),
    }
}

/// Three siblings ready for an hour, `a` missing `h.test` from t = 10 s, the others
/// routing it, probed every 10 s until `until` seconds; API inventories as given.
fn three(until: u64, lacks_a: Option<Vec<String>>) -> (Verdicts, SystemTime) {
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut v = Verdicts::new(VerdictConfig::default());
    let hour = Duration::from_secs(3600);
    v.set_replicas(
        vec![
            facts("a", "rs/traefik-1", hour, wall),
            facts("b", "rs/traefik-1", hour, wall),
            facts("c", "rs/traefik-1", hour, wall),
        ],
        wall,
    );
    for t in (10..=until).step_by(10) {
        v.probed(&replica("a"), "h.test", true, true, t * S);
        v.probed(&replica("b"), "h.test", true, false, t * S);
        v.probed(&replica("c"), "h.test", true, false, t * S);
    }
    if let Some(l) = lacks_a {
        v.inventory(&replica("a"), l);
    }
    (v, wall)
}

fn of<'v>(vs: &'v [Verdict], name: &str) -> &'v Verdict {
    vs.iter().find(|v| v.replica.name == name).unwrap()
}

#[test]
fn confirmed_after_the_window_with_siblings_routing_and_routers_lacking() {
    let lacks = vec!["terminal@kubernetes".to_string()];
    let (v, wall) = three(200, Some(lacks.clone()));
    // 2 minutes into the run: still confirming.
    let early = v.evaluate(130 * S, wall);
    assert_eq!(of(&early, "a").state, State::Suspect);
    assert_eq!(of(&early, "a").reason, Some(Reason::Confirming));
    // 3 minutes after the first miss (t = 10 s): routeless since then.
    let vs = v.evaluate(190 * S, wall);
    let a = of(&vs, "a");
    assert_eq!((a.state, a.reason), (State::Routeless, None));
    assert_eq!(a.since_ns, 190 * S);
    assert_eq!((a.siblings, a.siblings_routing), (2, 2));
    assert_eq!(a.lacks.as_deref(), Some(&lacks[..]));
    assert_eq!(a.router_miss_rounds, 20);
    for name in ["b", "c"] {
        assert_eq!(of(&vs, name).state, State::Ok);
    }
}

#[test]
fn each_guard_keeps_a_replica_suspect() {
    // The API lists every router the siblings have.
    let (v, wall) = three(200, Some(Vec::new()));
    let a = v.evaluate(200 * S, wall);
    assert_eq!(of(&a, "a").reason, Some(Reason::InventoryComplete));

    // API never read: the inventory condition is skipped.
    let (v, wall) = three(200, None);
    assert_eq!(of(&v.evaluate(200 * S, wall), "a").state, State::Routeless);

    // Blind sensor.
    let (mut v, wall) = three(200, None);
    v.set_blind(&replica("a"), true);
    assert_eq!(
        of(&v.evaluate(200 * S, wall), "a").reason,
        Some(Reason::SensorBlind)
    );

    // Ready for 30 s only.
    let (mut v, wall) = three(200, None);
    let young = facts("a", "rs/traefik-1", Duration::from_secs(30), wall);
    let mut all = vec![young];
    for n in ["b", "c"] {
        all.push(facts(n, "rs/traefik-1", Duration::from_secs(3600), wall));
    }
    v.set_replicas(all, wall);
    assert_eq!(
        of(&v.evaluate(200 * S, wall), "a").reason,
        Some(Reason::TooYoung)
    );
}

#[test]
fn a_host_every_sibling_misses_is_configuration_not_one_replica() {
    let (mut v, wall) = three(200, None);
    v.probed(&replica("b"), "h.test", true, true, 210 * S);
    let a = v.evaluate(210 * S, wall);
    // One of two siblings routes it: half, still enough.
    assert_eq!(of(&a, "a").state, State::Routeless);
    v.probed(&replica("c"), "h.test", true, true, 210 * S);
    let a = v.evaluate(210 * S, wall);
    assert_eq!(of(&a, "a").reason, Some(Reason::SiblingsMissToo));
    // Siblings of another group do not count.
    let wall2 = wall;
    let mut lone = Verdicts::new(VerdictConfig::default());
    lone.set_replicas(
        vec![
            facts("a", "rs/one", Duration::from_secs(3600), wall2),
            facts("x", "rs/other", Duration::from_secs(3600), wall2),
        ],
        wall2,
    );
    lone.probed(&replica("a"), "h.test", true, true, S);
    lone.probed(&replica("x"), "h.test", true, false, S);
    let vs = lone.evaluate(400 * S, wall2);
    assert_eq!(of(&vs, "a").reason, Some(Reason::SiblingsMissToo));
    assert_eq!(of(&vs, "a").siblings, 0);
}

#[test]
fn a_routed_answer_clears_the_run_and_a_silent_replica_is_unknown() {
    let (mut v, wall) = three(200, None);
    v.probed(&replica("a"), "h.test", true, false, 210 * S);
    let a = v.evaluate(210 * S, wall);
    assert_eq!(
        (of(&a, "a").state, of(&a, "a").router_miss_rounds),
        (State::Ok, 0)
    );
    v.probed(&replica("b"), "h.test", false, false, 220 * S);
    let vs = v.evaluate(220 * S, wall);
    assert_eq!(of(&vs, "b").state, State::Unknown);
    // A silent sibling is not counted among those probed.
    assert_eq!(of(&vs, "a").siblings, 1);
}

#[test]
fn hosts_no_longer_probed_are_forgotten() {
    let (mut v, wall) = three(200, None);
    v.probed(&replica("a"), "other.test", true, false, 300 * S);
    v.forget_stale_hosts(201 * S + STALE_HOST.as_nanos() as u64);
    let vs = v.evaluate(1200 * S, wall);
    assert!(vs.iter().all(|x| x.host == "other.test"), "{vs:?}");
    assert_eq!(vs.len(), 1);
}

#[test]
fn replicas_gone_take_their_evidence_with_them() {
    let (mut v, wall) = three(200, None);
    v.set_replicas(
        vec![facts("b", "rs/traefik-1", Duration::from_secs(3600), wall)],
        wall,
    );
    let vs = v.evaluate(200 * S, wall);
    assert_eq!(vs.len(), 1);
    assert_eq!(vs[0].replica.name, "b");
}

#[test]
fn the_json_document_round_trips_and_the_table_names_the_evidence() {
    let (v, wall) = three(200, Some(vec!["terminal@kubernetes".to_string()]));
    let report = render(&v.evaluate(200 * S, wall), 200 * S, wall);
    let text = serde_json::to_string(&report).unwrap();
    let back: VerdictReport = serde_json::from_str(&text).unwrap();
    assert_eq!(back, report);
    let a = &back.replicas[0];
    assert_eq!((a.replica.as_str(), a.state.as_str()), ("a", "routeless"));
    assert_eq!(a.since, 1_800_000_000 - 10);
    let table = back.table();
    assert!(table.starts_with("REPLICA"), "{table}");
    assert!(
        table.contains("routeless") && table.contains("lacks 1 (terminal@kubernetes)"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 4);
}
