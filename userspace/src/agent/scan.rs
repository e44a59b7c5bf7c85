//! Each discovery result applied: the kernel cgroup filter, the Go TLS uprobes, the
//! pipeline's targets, the prober's copy and the target gauges, logging only what changed.

use tokio::sync::watch;

use crate::discovery::local::{Scan, ScanFailure};
use crate::discovery::TargetSet;
use crate::metrics::Contract;
use crate::pipeline::Pipeline;
use crate::sensor::Sensor;

/// The Go TLS uprobes across scans.
pub(super) struct TlsState {
    pub(super) enabled: bool,
    /// Replicas whose binary the uprobes could not be put on (they stay watched in
    /// plaintext, and count as failed targets too).
    pub(super) failed_replicas: i64,
}

/// Puts the TLS uprobes on the targets' binaries; returns how many targets run a binary
/// where that failed.
fn sync_tls(targets: &TargetSet, sensor: &mut Sensor) -> i64 {
    let pids: Vec<u32> = targets
        .targets()
        .iter()
        .flat_map(|t| t.pids.iter().copied())
        .collect();
    let failed_pids: std::collections::HashSet<u32> = sensor
        .set_tls_processes(&pids)
        .into_iter()
        .filter(|b| b.outcome.is_err())
        .flat_map(|b| b.pids)
        .collect();
    targets
        .targets()
        .iter()
        .filter(|t| t.pids.iter().any(|p| failed_pids.contains(p)))
        .count() as i64
}

/// The semantic sensor's uprobes across scans.
pub(super) struct SemanticState {
    pub(super) enabled: bool,
    /// Replicas whose binary the semantic sensor could not be put on (their responses
    /// go uncounted; they count as failed targets).
    pub(super) failed_replicas: i64,
}

/// Puts the semantic uprobes on the targets' binaries; returns how many targets run a
/// binary where that failed.
fn sync_semantic(targets: &TargetSet, sensor: &mut Sensor) -> i64 {
    let pids: Vec<u32> = targets
        .targets()
        .iter()
        .flat_map(|t| t.pids.iter().copied())
        .collect();
    let failed_pids: std::collections::HashSet<u32> = sensor
        .set_semantic_processes(&pids)
        .into_iter()
        .filter(|b| b.outcome.is_err())
        .flat_map(|b| b.pids)
        .collect();
    targets
        .targets()
        .iter()
        .filter(|t| t.pids.iter().any(|p| failed_pids.contains(p)))
        .count() as i64
}

/// What the agent watches, across discovery scans.
pub(super) struct Watched {
    pub(super) current: TargetSet,
    /// The last scan's failures, so that a persistent one is logged once.
    pub(super) failures: Vec<ScanFailure>,
    /// The targets as the prober sees them.
    pub(super) published: watch::Sender<TargetSet>,
    pub(super) tls: TlsState,
    pub(super) semantic: SemanticState,
}

/// Pushes a discovery result to the kernel filter, the TLS uprobes, the pipeline and the
/// target gauges; logs only what changed (failures too: a persistent one is logged once).
pub(super) fn apply_scan(
    scan: Scan,
    state: &mut Watched,
    sensor: &mut Sensor,
    pipeline: &mut Pipeline,
    metrics: &Contract,
) {
    let Watched {
        current,
        failures,
        published,
        tls,
        semantic,
    } = state;
    for f in &scan.failures {
        if !failures.contains(f) {
            tracing::warn!(target = %f.what, reason = %f.reason, "replica could not be resolved");
        }
    }
    *failures = scan.failures.clone();
    let failed = scan.failures.len() as i64;
    if scan.targets == *current {
        metrics.set_targets(
            current.replica_count() as i64,
            failed + tls.failed_replicas + semantic.failed_replicas,
        );
        return;
    }
    for t in scan.targets.targets() {
        if !current.targets().contains(t) {
            tracing::info!(replica = %t.replica.name, namespace = %t.replica.namespace, cgroup_id = t.cgroup_id, pids = ?t.pids, "watching replica");
        }
    }
    for t in current.targets() {
        if !scan.targets.targets().contains(t) {
            tracing::info!(replica = %t.replica.name, namespace = %t.replica.namespace, "replica gone");
        }
    }
    if tls.enabled {
        tls.failed_replicas = sync_tls(&scan.targets, sensor);
    }
    if semantic.enabled {
        semantic.failed_replicas = sync_semantic(&scan.targets, sensor);
    }
    match sensor.set_watched_cgroups(&scan.targets.cgroup_ids()) {
        Ok(()) => metrics.set_targets(
            scan.targets.replica_count() as i64,
            failed + tls.failed_replicas + semantic.failed_replicas,
        ),
        Err(e) => {
            tracing::error!(error = %e, "updating the kernel cgroup filter failed");
            metrics.set_targets(0, failed + scan.targets.replica_count() as i64);
        }
    }
    pipeline.set_targets(scan.targets.clone());
    published.send_replace(scan.targets.clone());
    *current = scan.targets;
}
