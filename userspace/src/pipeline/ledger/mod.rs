//! Matches each probe check the prober reports with the kernel's report of the same
//! exchange, and decides which of the two is counted.
//!
//! A probe check has two witnesses: the prober, which sent the request and read the
//! answer, and the kernel sensor, which sees the replica read that request and write that
//! answer (the probe's User-Agent carries the check's id, so the pipeline can tell which
//! probe a kernel-observed exchange belongs to). The rule that makes every answered probe
//! count exactly once in `http_responses_total{source="probe"}` /
//! `ws_upgrades_total{source="probe"}`:
//!
//! * the kernel's copy is counted, when it comes, by the same flows → classify →
//!   aggregate code as passive traffic (the probe User-Agent makes it `source="probe"`,
//!   so probe traffic is never passive);
//! * the prober's copy is never counted while the kernel's can still come: it waits
//!   here until a deadline;
//! * when the deadline passes without the kernel's copy, the sensor was blind to that
//!   exchange: `sensor_blind_probes_total{replica}` goes up and the prober's copy is
//!   counted instead (classified by the same code, without upstream corroboration);
//! * a kernel copy arriving after that is not counted again.
//!
//! Probes that got no answer expect nothing from the kernel (there was no exchange to
//! see); if the kernel saw the request anyway (a WebSocket reset) its copy is counted.
//!
//! The semantic sensor counts probe responses in the kernel without their ids (it knows
//! the agent's connections by address, not their User-Agent): those settle by key,
//! (replica, host, status), in [`keyed`]. Each counted probe response confirms the oldest
//! report awaiting that key; one that finds none leaves a short-lived credit for a report
//! still on its way; a report declared blind leaves a debt that a late kernel count pays
//! instead of being counted twice.
//!
//! The clock is an argument everywhere (CLOCK_MONOTONIC nanoseconds in the agent), so the
//! tests drive it by hand.

mod keyed;

use std::collections::HashMap;

use crate::event::{Origin, ProbeCheck, ProbeReport};
use keyed::Keyed;

/// Probe checks tracked at once; the prober sends a few per replica, host and interval.
const MAX_ENTRIES: usize = 16_384;
/// How long a settled id is remembered, to recognise a late or duplicate kernel copy.
const RETAIN_NS: u64 = 120_000_000_000;

#[derive(Debug)]
enum Entry {
    /// The kernel's copy came first and was counted.
    Seen { at_ns: u64 },
    /// The prober reported an answer; the kernel's copy is due by `deadline_ns`.
    Awaiting {
        deadline_ns: u64,
        origin: Origin,
        report: Box<ProbeReport>,
    },
    /// Settled: the prober's report was matched, or it was declared missed.
    Done { at_ns: u64 },
}

/// What to do with a kernel-observed probe exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sighting {
    /// Count it.
    Count,
    /// Already settled (counted from the prober's report, or a duplicate): drop it.
    Late,
}

/// Statistics, monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerStats {
    /// Prober reports confirmed by the kernel.
    pub confirmed: u64,
    /// Prober reports the kernel never confirmed within the deadline.
    pub missed: u64,
    /// Kernel copies that came after their probe was settled.
    pub late: u64,
    /// Entries not tracked because the ledger was full.
    pub overflow: u64,
}

/// A WebSocket check answered with something other than `101`.
fn refused_upgrade(report: &ProbeReport) -> bool {
    report.check == ProbeCheck::WebSocket
        && report.response.as_ref().is_some_and(|r| r.status != 101)
}

pub struct Ledger {
    deadline_ns: u64,
    entries: HashMap<u64, Entry>,
    stats: LedgerStats,
    keyed: Keyed,
    /// Per replica: probes declared blind since its last confirmed one.
    streaks: HashMap<Origin, u32>,
    /// WebSocket checks a semantic count settled with an answer other than `101`: the
    /// count made their response, their upgrade outcome is judged from the report (the
    /// kernel copies no head of the agent's own requests). Drained by the pipeline.
    settled_upgrades: Vec<(Origin, Box<ProbeReport>)>,
}

impl Ledger {
    /// `deadline_ns`: how long after the prober's report the kernel's copy may still come.
    pub fn new(deadline_ns: u64) -> Self {
        Ledger {
            deadline_ns,
            entries: HashMap::new(),
            stats: LedgerStats::default(),
            keyed: Keyed::default(),
            streaks: HashMap::new(),
            settled_upgrades: Vec::new(),
        }
    }

    /// A report settled by a semantic count.
    fn settled_by_count(&mut self, origin: Origin, report: Box<ProbeReport>) {
        if refused_upgrade(&report) {
            self.settled_upgrades.push((origin, report));
        }
    }

    /// Moves the WebSocket checks settled by semantic counts with an answer other than
    /// `101` since the last call into `out`.
    pub fn take_settled_upgrades(&mut self, out: &mut Vec<(Origin, Box<ProbeReport>)>) {
        out.append(&mut self.settled_upgrades);
    }

    pub fn stats(&self) -> &LedgerStats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The kernel reported the exchange of probe `id`.
    pub fn kernel_saw(&mut self, id: u64, now_ns: u64) -> Sighting {
        match self.entries.get_mut(&id) {
            None => {
                if self.entries.len() >= MAX_ENTRIES {
                    self.stats.overflow += 1;
                } else {
                    self.entries.insert(id, Entry::Seen { at_ns: now_ns });
                }
                Sighting::Count
            }
            Some(e @ Entry::Awaiting { .. }) => {
                if let Entry::Awaiting { origin, .. } = e {
                    self.streaks.remove(origin);
                }
                *e = Entry::Done { at_ns: now_ns };
                self.stats.confirmed += 1;
                Sighting::Count
            }
            Some(Entry::Seen { .. } | Entry::Done { .. }) => {
                self.stats.late += 1;
                Sighting::Late
            }
        }
    }

    /// The prober reported probe check `report` sent to the replica of `origin`.
    pub fn reported(&mut self, origin: Origin, report: Box<ProbeReport>, now_ns: u64) {
        let id = report.id;
        match self.entries.get(&id) {
            Some(Entry::Seen { .. }) => {
                self.entries.insert(id, Entry::Done { at_ns: now_ns });
                self.stats.confirmed += 1;
                self.streaks.remove(&origin);
            }
            Some(_) => {}
            None if report.response.is_none() => {}
            None => {
                if self.entries.len() >= MAX_ENTRIES {
                    self.stats.overflow += 1;
                    return;
                }
                if self.keyed.take_credit(origin, &report, now_ns) {
                    self.entries.insert(id, Entry::Done { at_ns: now_ns });
                    self.stats.confirmed += 1;
                    self.streaks.remove(&origin);
                    self.settled_by_count(origin, report);
                    return;
                }
                self.keyed.awaiting(origin, &report);
                self.entries.insert(
                    id,
                    Entry::Awaiting {
                        deadline_ns: now_ns.saturating_add(self.deadline_ns),
                        origin,
                        report,
                    },
                );
            }
        }
    }

    /// Probe checks whose kernel copy is overdue, to be counted as blind; also forgets
    /// settled ids past their retention.
    pub fn expire(&mut self, now_ns: u64, missed: &mut Vec<(Origin, Box<ProbeReport>)>) {
        let overdue: Vec<u64> = self
            .entries
            .iter()
            .filter_map(|(id, e)| match e {
                Entry::Awaiting { deadline_ns, .. } if *deadline_ns <= now_ns => Some(*id),
                _ => None,
            })
            .collect();
        for id in overdue {
            if let Some(Entry::Awaiting { origin, report, .. }) =
                self.entries.insert(id, Entry::Done { at_ns: now_ns })
            {
                self.stats.missed += 1;
                *self.streaks.entry(origin).or_default() += 1;
                self.keyed.missed(origin, &report, now_ns);
                missed.push((origin, report));
            }
        }
        let entries = &self.entries;
        self.keyed.expire(now_ns, |id| {
            matches!(entries.get(&id), Some(Entry::Awaiting { .. }))
        });
        self.entries.retain(|_, e| match e {
            Entry::Seen { at_ns } | Entry::Done { at_ns } => {
                now_ns.saturating_sub(*at_ns) < RETAIN_NS
            }
            Entry::Awaiting { .. } => true,
        });
    }

    /// Replicas whose last `min` or more answered probes were all missed by the sensor
    /// (none confirmed in between): a sensor that is blind there, not one that missed one.
    pub fn blind_replicas(&self, min: u32) -> impl Iterator<Item = Origin> + '_ {
        self.streaks
            .iter()
            .filter(move |(_, n)| **n >= min)
            .map(|(o, _)| *o)
    }

    /// Starts the replica's streak afresh (its sensor was changed).
    pub fn forgive(&mut self, origin: Origin) {
        self.streaks.remove(&origin);
    }

    /// Keeps the streaks of replicas `keep` says are still watched.
    pub fn retain_streaks(&mut self, mut keep: impl FnMut(Origin) -> bool) {
        self.streaks.retain(|o, _| keep(*o));
    }

    /// The earliest deadline pending, if any (lets the caller skip needless sweeps).
    pub fn next_deadline(&self) -> Option<u64> {
        self.entries
            .values()
            .filter_map(|e| match e {
                Entry::Awaiting { deadline_ns, .. } => Some(*deadline_ns),
                _ => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests;
