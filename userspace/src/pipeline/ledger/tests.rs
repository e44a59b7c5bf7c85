//! The ledger's rules, by id (byte capture) and by key (semantic sensor).
use super::*;
use crate::event::ProbeCheck;

const MS: u64 = 1_000_000;
const O: Origin = Origin {
    tgid: 7,
    cgroup_id: 70,
};

fn report(id: u64, answered: bool) -> Box<ProbeReport> {
    Box::new(ProbeReport {
        id,
        check: ProbeCheck::Http,
        host: "a.test".into(),
        response: answered.then(|| crate::event::ProbeAnswer {
            status: 200,
            reason: "OK".into(),
            headers: http::HeaderMap::new(),
            body_prefix: bytes::Bytes::new(),
        }),
        elapsed: std::time::Duration::from_millis(1),
    })
}

fn expire(l: &mut Ledger, now: u64) -> Vec<u64> {
    let mut out = Vec::new();
    l.expire(now, &mut out);
    out.into_iter().map(|(_, r)| r.id).collect()
}

#[test]
fn kernel_before_prober_counts_once() {
    let mut l = Ledger::new(500 * MS);
    assert_eq!(l.kernel_saw(1, 10 * MS), Sighting::Count);
    l.reported(O, report(1, true), 12 * MS);
    assert!(expire(&mut l, 2_000 * MS).is_empty());
    assert_eq!(l.stats().confirmed, 1);
    // A duplicate kernel copy is not counted again.
    assert_eq!(l.kernel_saw(1, 2_100 * MS), Sighting::Late);
}

#[test]
fn prober_before_kernel_within_deadline() {
    let mut l = Ledger::new(500 * MS);
    l.reported(O, report(2, true), 10 * MS);
    assert!(expire(&mut l, 400 * MS).is_empty());
    assert_eq!(l.kernel_saw(2, 450 * MS), Sighting::Count);
    assert!(expire(&mut l, 5_000 * MS).is_empty());
    assert_eq!(l.stats().confirmed, 1);
    assert_eq!(l.stats().missed, 0);
}

#[test]
fn blind_sensor_is_detected_at_the_deadline() {
    let mut l = Ledger::new(500 * MS);
    l.reported(O, report(3, true), 10 * MS);
    l.reported(O, report(4, true), 20 * MS);
    assert_eq!(l.next_deadline(), Some(510 * MS));
    assert!(expire(&mut l, 509 * MS).is_empty());
    assert_eq!(expire(&mut l, 510 * MS), vec![3]);
    assert_eq!(expire(&mut l, 600 * MS), vec![4]);
    assert_eq!(l.stats().missed, 2);
    // The kernel copy, when it finally comes, was already counted from the report.
    assert_eq!(l.kernel_saw(3, 700 * MS), Sighting::Late);
    assert_eq!(l.stats().late, 1);
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn unanswered_probes_expect_nothing() {
    let mut l = Ledger::new(500 * MS);
    l.reported(O, report(5, false), 10 * MS);
    assert!(expire(&mut l, 10_000 * MS).is_empty());
    assert_eq!(l.stats().missed, 0);
    // The kernel saw the request of a reset WebSocket probe: counted.
    assert_eq!(l.kernel_saw(5, 10_001 * MS), Sighting::Count);
}

#[test]
fn settled_ids_are_forgotten_and_memory_is_bounded() {
    let mut l = Ledger::new(500 * MS);
    for id in 0..10 {
        assert_eq!(l.kernel_saw(id, 0), Sighting::Count);
    }
    expire(&mut l, RETAIN_NS);
    assert!(l.is_empty());
    for id in 0..(MAX_ENTRIES as u64 + 5) {
        l.reported(O, report(id, true), 0);
    }
    assert_eq!(l.len(), MAX_ENTRIES);
    assert_eq!(l.stats().overflow, 5);
}

fn report_for(id: u64, host: &str, status: u16) -> Box<ProbeReport> {
    let mut r = report(id, true);
    r.host = host.into();
    if let Some(a) = r.response.as_mut() {
        a.status = status;
    }
    r
}

fn name(h: &str) -> crate::hosts::Host {
    crate::hosts::normalize_host(h.as_bytes())
}

#[test]
fn kernel_counts_confirm_reports_by_replica_host_and_status() {
    let mut l = Ledger::new(2_000 * MS);
    l.reported(O, report_for(1, "A.test", 200), 10 * MS);
    l.reported(O, report_for(2, "a.test", 200), 20 * MS);
    l.reported(O, report_for(3, "a.test", 404), 30 * MS);
    // Another status, host or replica settles nothing: counted, left as credit.
    let other = Origin {
        tgid: 8,
        cgroup_id: 80,
    };
    assert_eq!(l.kernel_counted(other, &name("a.test"), 200, 1, 40 * MS), 1);
    assert_eq!(l.kernel_counted(O, &name("b.test"), 200, 1, 40 * MS), 1);
    assert_eq!(l.kernel_counted(O, &name("a.test"), 200, 2, 50 * MS), 2);
    assert_eq!(l.stats().confirmed, 2);
    assert_eq!(expire(&mut l, 2_100 * MS), vec![3]);
    assert_eq!(l.stats().missed, 1);
}

#[test]
fn a_kernel_count_before_its_report_is_credited_once() {
    let mut l = Ledger::new(2_000 * MS);
    assert_eq!(l.kernel_counted(O, &name("a.test"), 200, 1, 10 * MS), 1);
    l.reported(O, report_for(1, "a.test", 200), 20 * MS);
    l.reported(O, report_for(2, "a.test", 200), 30 * MS);
    assert_eq!(l.stats().confirmed, 1);
    // The second report has no credit left: blind at its deadline.
    assert_eq!(expire(&mut l, 2_030 * MS), vec![2]);
}

#[test]
fn a_kernel_count_after_the_blind_verdict_is_not_counted_again() {
    let mut l = Ledger::new(2_000 * MS);
    l.reported(O, report_for(1, "a.test", 101), 10 * MS);
    assert_eq!(expire(&mut l, 2_010 * MS), vec![1]);
    assert_eq!(l.kernel_counted(O, &name("a.test"), 101, 3, 2_500 * MS), 2);
    assert_eq!(l.stats().late, 1);
    // Credits fade: a report long after the kernel's count is blind.
    l.reported(O, report_for(2, "a.test", 101), 60_000 * MS);
    let _ = expire(&mut l, 60_001 * MS);
    l.reported(O, report_for(3, "a.test", 101), 60_002 * MS);
    let mut blind = expire(&mut l, 63_000 * MS);
    blind.sort_unstable();
    assert_eq!(blind, vec![2, 3]);
}

#[test]
fn blind_streaks_count_misses_in_a_row_per_replica() {
    let mut l = Ledger::new(500 * MS);
    let other = Origin {
        tgid: 8,
        cgroup_id: 80,
    };
    for id in 1..=3 {
        l.reported(O, report(id, true), id * 10 * MS);
    }
    l.reported(other, report(9, true), 10 * MS);
    assert_eq!(l.kernel_saw(9, 20 * MS), Sighting::Count);
    let _ = expire(&mut l, 1_000 * MS);
    assert_eq!(l.blind_replicas(3).collect::<Vec<_>>(), vec![O]);
    assert_eq!(l.blind_replicas(4).count(), 0);
    // A confirmed probe ends the streak; so does forgiving it.
    l.reported(O, report(4, true), 1_100 * MS);
    assert_eq!(l.kernel_saw(4, 1_110 * MS), Sighting::Count);
    assert_eq!(l.blind_replicas(1).count(), 0);
    l.reported(O, report(5, true), 1_200 * MS);
    let _ = expire(&mut l, 2_000 * MS);
    assert_eq!(l.blind_replicas(1).count(), 1);
    l.forgive(O);
    assert_eq!(l.blind_replicas(1).count(), 0);
}
