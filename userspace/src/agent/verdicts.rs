//! The agent's verdict stage: feeds the prober's events to [`Verdicts`], and publishes
//! the verdicts as the `/api/v1/replicas` document once a second.

use std::sync::Arc;
use std::time::SystemTime;

use crate::event::Event;
use crate::metrics::Exposition;
use crate::pipeline::Pipeline;
use crate::verdict::{self, VerdictConfig, Verdicts};

/// Probes a sensor missed in a row before its replica's verdicts say "blind" (as the
/// semantic sensor's run-time check counts them).
const BLIND_STREAK: u32 = 3;

pub(super) struct VerdictStage {
    verdicts: Verdicts,
    exposition: Arc<Exposition>,
}

impl VerdictStage {
    pub(super) fn new(cfg: VerdictConfig, exposition: Arc<Exposition>) -> Self {
        VerdictStage {
            verdicts: Verdicts::new(cfg),
            exposition,
        }
    }

    /// A prober event, once the pipeline has it.
    pub(super) fn observe(&mut self, pipeline: &Pipeline, ev: &Event) {
        if let Some(replica) = pipeline.resolve(ev.origin) {
            self.verdicts.observe(replica, ev);
        }
    }

    /// Brings the replicas and their blindness up to date and publishes the verdicts.
    pub(super) fn publish(&mut self, pipeline: &Pipeline, now: u64) {
        let wall = SystemTime::now();
        self.verdicts.sync_targets(pipeline.targets(), wall);
        self.verdicts.forget_stale_hosts(now);
        let blind: Vec<_> = pipeline
            .blind_replicas(BLIND_STREAK)
            .into_iter()
            .filter_map(|o| pipeline.resolve(o).cloned())
            .collect();
        self.verdicts.set_blind_only(&blind);
        let report = verdict::render(&self.verdicts.evaluate(now, wall), now, wall);
        match serde_json::to_string(&report) {
            Ok(json) => self.exposition.set_verdicts(json),
            Err(e) => tracing::warn!(error = %e, "could not encode the verdicts"),
        }
    }
}
