//! Lean API caches (issue 16, item 8): what the agent keeps of 20,000 Ingresses of 20 KB
//! each (a `last-applied-configuration` annotation and `managedFields`, as `kubectl apply`
//! leaves them), fed as watcher events to the host index the Ingress watch feeds, and
//! what one update costs (the event, then the hosts read out as discovery does).
//!
//! Its own test binary, one test: the heap measurement (glibc's `mallinfo2`, bytes in use)
//! sees no other test's allocations.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::watcher;
use routeskew::discovery::kubernetes::host_index::HostIndex;
use routeskew::discovery::kubernetes::label_hosts;
use routeskew::hosts::MAX_KNOWN_HOSTS;

const INGRESSES: usize = 20_000;
const BLOAT: usize = 20_000;
const BUDGET: usize = 64 << 20;
const UPDATE_BUDGET: Duration = Duration::from_millis(5);

/// Heap bytes in use (small chunks and mmapped ones).
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

fn fat_ingress(i: usize, version: u32) -> Ingress {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("web-{i}"), "namespace": format!("tenant-{}", i % 400),
            "uid": format!("uid-{i}"), "resourceVersion": version.to_string(),
            "labels": {"app": "web", "team": format!("t{}", i % 50)},
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(BLOAT),
                "kubernetes.io/ingress.class": "traefik",
            },
            "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                "apiVersion": "networking.k8s.io/v1", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:annotations": {".": {}}}, "f:spec": {"f:rules": {}}}}]
        },
        "spec": {"rules": [{"host": format!("h{i}-v{version}.example.com"), "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.9"}]}}
    }))
    .expect("a valid Ingress")
}

#[test]
fn twenty_thousand_fat_ingresses_cost_little_memory_and_an_update_is_cheap() {
    let mut index = HostIndex::default();
    let before = heap_in_use();
    index.event(&watcher::Event::<Ingress>::Init, "traefik");
    for i in 0..INGRESSES {
        index.event(&watcher::Event::InitApply(fat_ingress(i, 1)), "traefik");
    }
    index.event(&watcher::Event::<Ingress>::InitDone, "traefik");
    assert_eq!(index.len(), INGRESSES);
    assert_eq!(index.hosts().count(), INGRESSES);
    let retained = heap_in_use().saturating_sub(before);
    eprintln!(
        "{INGRESSES} Ingresses of {} KB: {:.1} MiB retained ({} bytes each)",
        BLOAT / 1000,
        retained as f64 / f64::from(1 << 20),
        retained / INGRESSES
    );
    assert!(
        retained <= BUDGET,
        "the cache holds {retained} bytes, over {BUDGET}"
    );

    // One update (a host renamed): the event, then the bounded label set discovery builds
    // from the index. The object arrives decoded, as from the
    // watcher: its decoding is the client's.
    let mut samples = Vec::new();
    for round in 0..5 {
        let ing = fat_ingress(round, 2 + round as u32);
        let t = Instant::now();
        index.event(&watcher::Event::Apply(ing), "traefik");
        let (labels, _) = label_hosts(&[], &[&index], &Default::default(), 50);
        samples.push(t.elapsed());
        assert_eq!(labels.hosts().len(), MAX_KNOWN_HOSTS);
        let hosts: Vec<&String> = index.hosts().collect();
        assert!(hosts.contains(&&format!("h{round}-v{}.example.com", 2 + round)));
        assert!(!hosts.contains(&&format!("h{round}-v1.example.com")));
    }
    samples.sort();
    // The best of five: a sample the scheduler interrupted says nothing of the work (this
    // runs beside other tests on a shared machine).
    let best = samples[0];
    eprintln!(
        "one update and the hosts again: {samples:?} (best {best:?}, median {:?})",
        samples[samples.len() / 2]
    );
    assert!(
        best < UPDATE_BUDGET,
        "one update costs {best:?}, over {UPDATE_BUDGET:?}"
    );
}
