//! Each discovery result applied: the semantic sensor (and the byte-capture fallback for
//! replicas it cannot count), the kernel cgroup filter, the Go TLS uprobes, the
//! pipeline's targets, the prober's copy and the target gauges, logging only what changed.

use std::collections::{BTreeSet, HashSet};

use tokio::sync::watch;

use crate::discovery::local::{Scan, ScanFailure};
use crate::discovery::{Target, TargetSet};
use crate::metrics::Contract;
use crate::pipeline::Pipeline;
use crate::sensor::metrics::{ModeLabels, SensorModes};
use crate::sensor::Sensor;

/// The Go TLS uprobes across scans.
pub(super) struct TlsState {
    pub(super) enabled: bool,
    /// Replicas whose binary the uprobes could not be put on (they stay watched in
    /// plaintext, and count as failed targets too).
    pub(super) failed_replicas: i64,
    /// The processes the uprobes were last asked for.
    pub(super) pids: BTreeSet<u32>,
}

/// Whether one of the target's processes is in `pids`.
fn runs_any(t: &Target, pids: &BTreeSet<u32>) -> bool {
    t.pids.iter().any(|p| pids.contains(p))
}

fn pids_of<'a>(targets: impl IntoIterator<Item = &'a Target>) -> Vec<u32> {
    targets
        .into_iter()
        .flat_map(|t| t.pids.iter().copied())
        .collect()
}

/// Puts the TLS uprobes on the binaries of `pids` (and takes them off every other);
/// returns how many of `targets` run a binary where that failed.
fn sync_tls(targets: &[&Target], pids: &BTreeSet<u32>, sensor: &mut Sensor) -> i64 {
    let pids: Vec<u32> = pids.iter().copied().collect();
    let failed_pids: HashSet<u32> = sensor
        .set_tls_processes(&pids)
        .into_iter()
        .filter(|b| b.outcome.is_err())
        .flat_map(|b| b.pids)
        .collect();
    targets
        .iter()
        .filter(|t| t.pids.iter().any(|p| failed_pids.contains(p)))
        .count() as i64
}

/// The semantic sensor across scans.
pub(super) struct SemanticState {
    pub(super) enabled: bool,
    /// `routeskew_sensor_mode`.
    pub(super) modes: SensorModes,
    /// Cgroups it counts now.
    pub(super) counted: BTreeSet<u64>,
    /// Cgroups it kept missing probes of: byte capture for them from then on.
    pub(super) demoted: BTreeSet<u64>,
    /// A demotion waits to be applied (the targets did not change).
    pub(super) dirty: bool,
}

/// Missed probes in a row (none confirmed in between) after which the semantic sensor
/// is no longer trusted for a replica.
const BLIND_STREAK: u32 = 3;

/// The run-time check of the semantic sensor: a replica whose last [`BLIND_STREAK`]
/// answered probes it all missed (wrong offsets verification did not catch, a binary
/// that changed under it) goes to byte capture. True when the scan must be applied
/// again.
pub(super) fn demote_blind(state: &mut Watched, pipeline: &mut Pipeline) -> bool {
    let sem = &mut state.semantic;
    if !sem.enabled {
        return false;
    }
    for o in pipeline.blind_replicas(BLIND_STREAK) {
        if sem.counted.contains(&o.cgroup_id) && sem.demoted.insert(o.cgroup_id) {
            let replica = state
                .current
                .targets()
                .iter()
                .find(|t| t.cgroup_id == o.cgroup_id)
                .map(|t| t.replica.name.clone())
                .unwrap_or_default();
            tracing::warn!(%replica, cgroup_id = o.cgroup_id, missed = BLIND_STREAK, "the semantic sensor missed this replica's last probes: byte capture takes over");
            sem.dirty = true;
        }
        pipeline.forgive_blindness(o);
    }
    sem.dirty
}

/// Puts the semantic uprobes on the targets' binaries; returns the cgroups of the
/// targets it counts: every process of theirs runs a binary it is attached to (a target
/// with no process yet has nothing to capture either way). The others fall back to byte
/// capture.
fn sync_semantic(targets: &TargetSet, sensor: &mut Sensor) -> BTreeSet<u64> {
    let counted: HashSet<u32> = sensor
        .set_semantic_processes(&pids_of(targets.targets()))
        .into_iter()
        .filter(|b| b.outcome.is_ok())
        .flat_map(|b| b.pids)
        .collect();
    targets
        .targets()
        .iter()
        .filter(|t| t.pids.iter().all(|p| counted.contains(p)))
        .map(|t| t.cgroup_id)
        .collect()
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
    /// Replicas whose binary is still being resolved (their probes are not on yet): the
    /// agent is not ready while there are any, and each pass asks again.
    pub(super) pending: usize,
}

/// The same replica in both sets: same name, namespace and cgroup.
fn same_replica(a: &Target, b: &Target) -> bool {
    a.replica == b.replica && a.cgroup_id == b.cgroup_id
}

/// Logs replicas that came, went, or whose processes changed.
fn log_changes(before: &TargetSet, after: &TargetSet) {
    for t in after.targets() {
        match before.targets().iter().find(|b| same_replica(b, t)) {
            None => {
                tracing::info!(replica = %t.replica.name, namespace = %t.replica.namespace, cgroup_id = t.cgroup_id, pids = ?t.pids, "watching replica");
            }
            Some(b) if b.pids != t.pids => {
                tracing::info!(replica = %t.replica.name, namespace = %t.replica.namespace, pids = ?t.pids, "replica's processes changed");
            }
            Some(_) => {}
        }
    }
    for t in before.targets() {
        if !after.targets().iter().any(|a| same_replica(a, t)) {
            tracing::info!(replica = %t.replica.name, namespace = %t.replica.namespace, "replica gone");
        }
    }
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
        pending,
    } = state;
    for f in &scan.failures {
        if !failures.contains(f) {
            tracing::warn!(target = %f.what, reason = %f.reason, "replica could not be resolved");
        }
    }
    *failures = scan.failures.clone();
    let failed = scan.failures.len() as i64;
    if scan.targets == *current && !semantic.dirty && *pending == 0 {
        metrics.set_targets(current.replica_count() as i64, failed + tls.failed_replicas);
        return;
    }
    log_changes(current, &scan.targets);
    let counted = if semantic.enabled {
        sync_semantic(&scan.targets, sensor)
    } else {
        BTreeSet::new()
    };
    let counted: BTreeSet<u64> = counted.difference(&semantic.demoted).copied().collect();
    semantic.counted = counted.clone();
    semantic.dirty = false;
    // A replica whose semantic plan is not in yet waits for it rather than turning on
    // the global byte capture for a moment.
    let sem_pending: BTreeSet<u32> = sensor.semantic_pending_pids().iter().copied().collect();
    let captured: Vec<&Target> = scan
        .targets
        .targets()
        .iter()
        .filter(|t| !counted.contains(&t.cgroup_id))
        .filter(|t| !runs_any(t, &sem_pending))
        .collect();
    if semantic.enabled && !captured.is_empty() {
        for hook in sensor.ensure_byte_capture() {
            match &hook.error {
                None => tracing::info!(hook = %hook.name, "hook attached for byte capture"),
                Some(e) => tracing::warn!(hook = %hook.name, error = %e, "hook unavailable"),
            }
        }
    }
    if tls.enabled {
        // A replica waiting for a semantic plan (a new process in it) keeps the TLS
        // uprobes its other processes have, since it may stay on byte capture: taking
        // them off and putting them back would leave its TLS traffic unseen meanwhile.
        // It gets no new ones until the plan is in.
        let mut pids: BTreeSet<u32> = pids_of(captured.iter().copied()).into_iter().collect();
        pids.extend(
            scan.targets
                .targets()
                .iter()
                .filter(|t| !counted.contains(&t.cgroup_id) && runs_any(t, &sem_pending))
                .flat_map(|t| t.pids.iter().copied())
                .filter(|p| tls.pids.contains(p)),
        );
        tls.failed_replicas = sync_tls(&captured, &pids, sensor);
        tls.pids = pids;
    }
    let all_pending = sensor.pending_pids();
    let was_pending = *pending;
    *pending = scan
        .targets
        .targets()
        .iter()
        .filter(|t| runs_any(t, &all_pending))
        .count();
    if *pending != was_pending {
        tracing::info!(
            replicas = *pending,
            "replica binaries being resolved (their probes go on when done)"
        );
    }
    semantic.modes.set(scan.targets.targets().iter().map(|t| {
        ModeLabels {
            replica: t.replica.name.clone(),
            namespace: t.replica.namespace.clone(),
            mode: if counted.contains(&t.cgroup_id) {
                "semantic"
            } else {
                "bytes"
            }
            .into(),
        }
    }));
    match sensor.set_watched(&scan.targets.cgroup_ids(), &counted) {
        Ok(()) => metrics.set_targets(
            scan.targets.replica_count() as i64,
            failed + tls.failed_replicas,
        ),
        Err(e) => {
            tracing::error!(error = %e, "updating the kernel cgroup filter failed");
            metrics.set_targets(0, failed + scan.targets.replica_count() as i64);
        }
    }
    pipeline.set_targets(scan.targets.clone());
    // Probes of a replica whose probes are not on yet would go unseen and count against
    // the sensor (three in a row demote it to byte capture): it is probed once they are.
    published.send_replace(TargetSet::new(
        scan.targets
            .targets()
            .iter()
            .filter(|t| !runs_any(t, &all_pending))
            .cloned()
            .collect(),
    ));
    *current = scan.targets;
}
