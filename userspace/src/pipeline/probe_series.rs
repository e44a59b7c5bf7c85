//! The per-replica series the prober's reports fill: `probe_success{host, check}`,
//! `probe_duration_seconds{check}` and `replica_routers`. They live in the aggregator's
//! replica slot, so they share its grace period and go with the replica's other series;
//! the prober keeps no series of its own.
//!
//! These events come a few times per replica and probe interval, so labels are built and
//! looked up per event rather than cached as handles.

use std::collections::HashSet;
use std::time::Duration;

use crate::discovery::Replica;
use crate::event::ProbeCheck;
use crate::metrics::{Contract, ProbeCheckLabels, ProbeLabels, ReplicaLabels};

#[derive(Debug, Default)]
pub(super) struct ProbeSeries {
    success: HashSet<ProbeLabels>,
    duration: HashSet<ProbeCheckLabels>,
    routers: Option<ReplicaLabels>,
}

impl ProbeSeries {
    /// The verdict of the last round for `host` (a label value) and `check`.
    pub(super) fn verdict(
        &mut self,
        c: &Contract,
        r: &Replica,
        host: &str,
        check: ProbeCheck,
        success: bool,
    ) {
        let l = ProbeLabels {
            replica: r.name.clone(),
            namespace: r.namespace.clone(),
            host: host.to_string(),
            check: check.as_str(),
        };
        c.probe_success.get_or_create(&l).set(i64::from(success));
        self.success.insert(l);
    }

    pub(super) fn duration(
        &mut self,
        c: &Contract,
        r: &Replica,
        check: ProbeCheck,
        took: Duration,
    ) {
        let l = ProbeCheckLabels {
            replica: r.name.clone(),
            namespace: r.namespace.clone(),
            check: check.as_str(),
        };
        c.probe_duration
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        self.duration.insert(l);
    }

    pub(super) fn routers(&mut self, c: &Contract, r: &Replica, enabled: u64) {
        let l = self.routers.get_or_insert_with(|| ReplicaLabels {
            replica: r.name.clone(),
            namespace: r.namespace.clone(),
        });
        c.replica_routers
            .get_or_create(l)
            .set(i64::try_from(enabled).unwrap_or(i64::MAX));
    }

    /// The replica's series go (it left the target set longer than the grace period ago).
    pub(super) fn remove_all(&self, c: &Contract) {
        for l in &self.success {
            c.probe_success.remove(l);
        }
        for l in &self.duration {
            c.probe_duration.remove(l);
        }
        if let Some(l) = &self.routers {
            c.replica_routers.remove(l);
        }
    }

    /// The verdicts of hosts no longer known go.
    pub(super) fn remove_hosts(&mut self, c: &Contract, gone: impl Fn(&str) -> bool) {
        self.success.retain(|l| {
            let keep = !gone(&l.host);
            if !keep {
                c.probe_success.remove(l);
            }
            keep
        });
    }
}
