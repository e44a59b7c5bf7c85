//! What the verdict engine reads from the rest of the agent: the watched replicas (from
//! the target set) and the prober's events for each (round verdicts, inventories).

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::{ReplicaFacts, Verdicts};
use crate::discovery::{Replica, TargetSet};
use crate::event::{Event, EventKind, ProbeCheck};

impl Verdicts {
    /// The replicas of `targets` (a replica with several cgroups counts once).
    pub fn sync_targets(&mut self, targets: &TargetSet, now_wall: SystemTime) {
        let mut facts: BTreeMap<&Replica, ReplicaFacts> = BTreeMap::new();
        for t in targets.targets() {
            facts.entry(&t.replica).or_insert_with(|| ReplicaFacts {
                replica: t.replica.clone(),
                group: t.group.clone(),
                ready_since: t.ready_since,
            });
        }
        self.set_replicas(facts.into_values().collect(), now_wall);
    }

    /// A prober event of `replica`: the HTTP check's round verdict, or its inventory.
    pub fn observe(&mut self, replica: &Replica, ev: &Event) {
        match &ev.kind {
            EventKind::ProbeVerdict(v) if v.check == ProbeCheck::Http => {
                self.probed(replica, &v.host, v.answered, v.router_miss, ev.ts_ns);
            }
            EventKind::RouterInventory { lacks, .. } => self.inventory(replica, lacks.clone()),
            _ => {}
        }
    }
}
