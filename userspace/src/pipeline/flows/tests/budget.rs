//! The memory budget and the request age limit on HTTP/1 connections: what is shed is
//! counted, and responses still pair with the right requests afterwards.

use super::*;
use crate::pipeline::budget::Budget;
use crate::pipeline::metrics::{MemoryPart, Shed};
use prometheus_client::metrics::gauge::Gauge;

fn flows_with(limit: u64, max_request_age: Duration) -> (Flows, Budget) {
    let metrics = PipelineMetrics::default();
    let budget = Budget::new(limit, metrics.memory.clone(), &Gauge::default());
    let cfg = FlowConfig {
        max_request_age,
        ..FlowConfig::default()
    };
    (Flows::new(cfg, metrics, budget.clone()), budget)
}

fn pipelined(hosts: &[&str]) -> Vec<u8> {
    hosts.iter().flat_map(|h| req(h, "/")).collect()
}

#[test]
fn an_aged_request_is_shed_and_its_late_answer_pairs_with_nothing() {
    let (mut f, budget) = flows_with(1 << 30, Duration::from_secs(60));
    let mut out = run(
        &mut f,
        &[data(S, 3, Direction::Read, &pipelined(&["old.test"]))],
    );
    assert!(budget.charged(MemoryPart::Requests) > 0);
    f.tick(30 * S);
    assert_eq!(f.metrics.shed.get(Shed::RequestAged), 0);
    f.tick(62 * S);
    assert_eq!(f.metrics.shed.get(Shed::RequestAged), 1);
    assert_eq!(budget.charged(MemoryPart::Requests), 0);
    out.extend(run(
        &mut f,
        &[
            data(63 * S, 3, Direction::Read, &pipelined(&["new.test"])),
            // The aged request's answer, then the new one's.
            data(64 * S, 3, Direction::Write, MISS),
            data(65 * S, 3, Direction::Write, OK),
        ],
    ));
    assert_eq!(statuses(&out), [("new.test".into(), 200)]);
    assert_eq!(f.metrics.unmatched_responses.get(Leg::Client), 0);
}

#[test]
fn a_request_the_budget_has_no_room_for_is_refused_with_those_before_it() {
    // Room for the connection and 8 queued requests, not for 20.
    let limit = super::http1::CONN_COST_FOR_TESTS + 8 * std::mem::size_of::<ClientRequest>();
    let (mut f, budget) = flows_with(limit as u64, Duration::from_secs(300));
    let hosts: Vec<String> = (0..20).map(|i| format!("h{i}.test")).collect();
    let refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let mut evs = vec![data(S, 3, Direction::Read, &pipelined(&refs))];
    // Later requests on the same connection, then every answer in order.
    evs.push(data(2 * S, 3, Direction::Read, &pipelined(&["after.test"])));
    for i in 0..21 {
        evs.push(data((3 + i) * S, 3, Direction::Write, OK));
    }
    let out = run(&mut f, &evs);
    let refused = f.metrics.shed.get(Shed::RequestRefused);
    assert!(refused > 0 && refused <= 20, "{refused}");
    assert!(budget.used() <= budget.limit());
    // Every request not shed got its own answer; none went to the wrong request.
    let got = statuses(&out);
    assert_eq!(got.len() as u64, 21 - refused, "{got:?}");
    assert_eq!(got.last(), Some(&("after.test".to_string(), 200)));
    for ((host, _), want) in got.iter().zip(hosts.iter().skip(refused as usize)) {
        assert_eq!(host, want);
    }
    assert_eq!(f.metrics.unmatched_responses.get(Leg::Client), 0);
}

#[test]
fn a_new_connection_evicts_the_least_recently_active_when_the_budget_is_full() {
    let (mut f, budget) = flows_with(
        4 * super::http1::CONN_COST_FOR_TESTS as u64,
        Duration::from_secs(300),
    );
    let evs: Vec<Event> = (0..6)
        .map(|fd| {
            data(
                (1 + u64::from(fd)) * S,
                fd,
                Direction::Read,
                &pipelined(&["a.test"]),
            )
        })
        .collect();
    run(&mut f, &evs);
    assert!(budget.used() <= budget.limit());
    assert!(f.connections() < 6);
    let evicted = f.metrics.shed.get(Shed::Connection);
    assert_eq!(evicted, 6 - f.connections() as u64);
    assert_eq!(f.metrics.shed.get(Shed::RequestEvicted), evicted);
    assert_eq!(
        f.metrics
            .evicted_connections
            .get(crate::pipeline::metrics::Eviction::Budget),
        evicted
    );
}
