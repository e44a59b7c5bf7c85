//! Settling probe reports against the semantic sensor's counts, by (replica, host,
//! status): see the rule in the [ledger](super).

use std::collections::{HashMap, VecDeque};

use super::{Entry, Ledger};
use crate::event::{Origin, ProbeReport};
use crate::hosts::{normalize_host, Host};

/// How long a kernel count without its report waits for it (reports follow the
/// response within milliseconds; the kernel's count reaches the pipeline within a fold).
const CREDIT_NS: u64 = 10_000_000_000;
/// How long a blind probe's debt waits for a late kernel count.
const DEBT_NS: u64 = 30_000_000_000;

/// (replica, normalised host or "", status).
type Key = (Origin, String, u16);

fn host_key(host: &Host) -> String {
    host.name().unwrap_or_default().to_owned()
}

fn key_of(origin: Origin, report: &ProbeReport) -> Option<Key> {
    let status = report.response.as_ref()?.status;
    Some((
        origin,
        host_key(&normalize_host(report.host.as_bytes())),
        status,
    ))
}

/// A count that fades: how many, and when it last grew.
#[derive(Debug, Default, Clone, Copy)]
struct Fading {
    n: u64,
    at_ns: u64,
}

#[derive(Debug, Default)]
pub(super) struct Keyed {
    /// Ids of reports awaiting the kernel, oldest first (settled ids are skipped).
    awaiting: HashMap<Key, VecDeque<u64>>,
    credits: HashMap<Key, Fading>,
    debts: HashMap<Key, Fading>,
}

impl Keyed {
    /// A kernel count came before this report: settles it (true) with the credit.
    pub(super) fn take_credit(
        &mut self,
        origin: Origin,
        report: &ProbeReport,
        now_ns: u64,
    ) -> bool {
        let Some(key) = key_of(origin, report) else {
            return false;
        };
        match self.credits.get_mut(&key) {
            Some(c) if c.n > 0 && now_ns.saturating_sub(c.at_ns) < CREDIT_NS => {
                c.n -= 1;
                true
            }
            _ => false,
        }
    }

    pub(super) fn awaiting(&mut self, origin: Origin, report: &ProbeReport) {
        if let Some(key) = key_of(origin, report) {
            self.awaiting.entry(key).or_default().push_back(report.id);
        }
    }

    /// A report declared blind: a kernel count for it arriving later is not counted.
    pub(super) fn missed(&mut self, origin: Origin, report: &ProbeReport, now_ns: u64) {
        if let Some(key) = key_of(origin, report) {
            let d = self.debts.entry(key).or_default();
            d.n += 1;
            d.at_ns = now_ns;
        }
    }

    /// Forgets faded credits and debts, and ids no longer awaiting.
    pub(super) fn expire(&mut self, now_ns: u64, still_awaiting: impl Fn(u64) -> bool) {
        self.credits
            .retain(|_, c| c.n > 0 && now_ns.saturating_sub(c.at_ns) < CREDIT_NS);
        self.debts
            .retain(|_, d| d.n > 0 && now_ns.saturating_sub(d.at_ns) < DEBT_NS);
        self.awaiting.retain(|_, ids| {
            ids.retain(|&id| still_awaiting(id));
            !ids.is_empty()
        });
    }
}

impl Ledger {
    /// The semantic sensor counted `n` probe responses of (`origin`, `host`, `status`):
    /// how many of them to count (the rest were counted already from blind reports).
    pub fn kernel_counted(
        &mut self,
        origin: Origin,
        host: &Host,
        status: u16,
        n: u64,
        now_ns: u64,
    ) -> u64 {
        let key = (origin, host_key(host), status);
        let mut left = n;
        if let Some(ids) = self.keyed.awaiting.get_mut(&key) {
            while left > 0 {
                let Some(id) = ids.pop_front() else {
                    break;
                };
                if let Some(e @ Entry::Awaiting { .. }) = self.entries.get_mut(&id) {
                    let settled = std::mem::replace(e, Entry::Done { at_ns: now_ns });
                    self.stats.confirmed += 1;
                    self.streaks.remove(&origin);
                    left -= 1;
                    match settled {
                        Entry::Awaiting { report, .. } if super::refused_upgrade(&report) => {
                            self.settled_upgrades.push((origin, report));
                        }
                        _ => {}
                    }
                }
            }
        }
        let confirmed = n - left;
        let late = match self.keyed.debts.get_mut(&key) {
            Some(d) => {
                let paid = d.n.min(left);
                d.n -= paid;
                paid
            }
            None => 0,
        };
        self.stats.late += late;
        let early = left - late;
        if early > 0 {
            let c = self.keyed.credits.entry(key).or_default();
            c.n += early;
            c.at_ns = now_ns;
        }
        confirmed + early
    }
}
