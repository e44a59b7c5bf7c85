//! The semantic sensor's counters in userspace: the known hosts published into
//! `SEM_HOSTS` (by the FNV-1a hash the kernel computes of the normalised Host), and the
//! per-CPU `SEM_COUNTS` folded into one [`EventKind::Responses`] event per key that grew
//! since the previous fold.
//!
//! Keys are bounded by the map (`SEM_COUNT_KEYS`; a full map is counted by the kernel as
//! `map_full`): keys of cgroups no longer watched go at once, keys that did not grow for
//! [`IDLE_FOLDS`] folds go too (their total was reported; an increment racing with the
//! delete is the only count that can be lost, and only on a key idle for a minute).

use std::collections::{BTreeSet, HashMap};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuHashMap},
    Ebpf,
};
use routeskew_common::{host_hash, sem_flags, SemKey};

use crate::{
    event::{Event, EventKind, Origin, ResponseCount},
    hosts::{normalize_host, Host, KnownHosts},
    sensor::{map_err, names, SensorError},
};

/// Folds a key may stay unchanged before it is deleted (a minute at the agent's 1 s tick).
pub const IDLE_FOLDS: u32 = 60;

struct Seen {
    total: u64,
    idle: u32,
}

/// What the agent remembers of the kernel's counters between folds.
#[derive(Default)]
pub struct SemanticCounts {
    seen: HashMap<SemKey, Seen>,
    /// Host hash → the host, of the hosts last published.
    hosts: HashMap<u64, Host>,
}

/// One fold's bookkeeping, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FoldStats {
    pub keys: usize,
    pub events: usize,
    pub deleted: usize,
}

fn counts_map(ebpf: &mut Ebpf) -> Result<PerCpuHashMap<&mut MapData, SemKey, u64>, SensorError> {
    let name = names::MAP_SEM_COUNTS;
    let map = ebpf.map_mut(name).ok_or(SensorError::MapMissing { name })?;
    PerCpuHashMap::try_from(map).map_err(map_err(name))
}

impl SemanticCounts {
    /// Makes `SEM_HOSTS` hold exactly the hashes of `hosts` (a diff: a host staying known
    /// is never absent from the map). Two known hosts with one hash would be
    /// indistinguishable in the kernel: the second is left out (counted as `other`) and
    /// logged.
    pub fn set_known_hosts(
        &mut self,
        ebpf: &mut Ebpf,
        hosts: &KnownHosts,
    ) -> Result<(), SensorError> {
        let mut wanted: HashMap<u64, Host> = HashMap::with_capacity(hosts.len());
        for name in hosts.hosts() {
            let hash = host_hash(name.as_bytes());
            match wanted.get(&hash) {
                Some(first) => {
                    tracing::warn!(host = %name, first = ?first.name(), hash, "two known hosts share a hash; the second counts as other in the semantic sensor")
                }
                None => {
                    wanted.insert(hash, normalize_host(name.as_bytes()));
                }
            }
        }
        let name = names::MAP_SEM_HOSTS;
        let map = ebpf.map_mut(name).ok_or(SensorError::MapMissing { name })?;
        let mut map = BpfHashMap::<_, u64, u32>::try_from(map).map_err(map_err(name))?;
        for hash in wanted.keys().filter(|h| !self.hosts.contains_key(h)) {
            map.insert(hash, 1, 0).map_err(map_err(name))?;
        }
        let stale: Vec<u64> = self
            .hosts
            .keys()
            .filter(|h| !wanted.contains_key(h))
            .copied()
            .collect();
        for hash in stale {
            match map.remove(&hash) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        self.hosts = wanted;
        Ok(())
    }

    /// Reads every counter and appends one event per key that grew; deletes keys of
    /// cgroups not in `watched` and keys idle for [`IDLE_FOLDS`] folds.
    pub fn fold(
        &mut self,
        ebpf: &mut Ebpf,
        watched: &BTreeSet<u64>,
        now_ns: u64,
        out: &mut Vec<Event>,
    ) -> Result<FoldStats, SensorError> {
        let name = names::MAP_SEM_COUNTS;
        let mut map = counts_map(ebpf)?;
        let mut stats = FoldStats::default();
        let mut doomed = Vec::new();
        let mut live = BTreeSet::new();
        for entry in map.iter() {
            let (key, per_cpu) = entry.map_err(map_err(name))?;
            stats.keys += 1;
            live.insert(key);
            let total = per_cpu.iter().fold(0u64, |a, &v| a.wrapping_add(v));
            let seen = self.seen.entry(key).or_insert(Seen { total: 0, idle: 0 });
            // A key deleted and created again starts from zero.
            let delta = if total >= seen.total {
                total - seen.total
            } else {
                total
            };
            seen.total = total;
            if delta > 0 {
                seen.idle = 0;
                stats.events += 1;
                out.push(self.event(key, delta, now_ns));
            } else {
                seen.idle = seen.idle.saturating_add(1);
            }
            let idle = self.seen.get(&key).is_some_and(|s| s.idle >= IDLE_FOLDS);
            if !watched.contains(&key.cgroup_id) || idle {
                doomed.push(key);
            }
        }
        for key in doomed {
            match map.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
            self.seen.remove(&key);
            stats.deleted += 1;
        }
        self.seen.retain(|k, _| live.contains(k));
        Ok(stats)
    }

    fn event(&self, key: SemKey, count: u64, now_ns: u64) -> Event {
        let host = match key.host_hash {
            0 => None,
            h => self.hosts.get(&h).cloned(),
        };
        Event {
            ts_ns: now_ns,
            origin: Origin {
                tgid: key.tgid,
                cgroup_id: key.cgroup_id,
            },
            kind: EventKind::Responses(ResponseCount {
                host: host.unwrap_or(Host::Missing),
                status: key.status,
                router_miss: key.flags & sem_flags::ROUTER_MISS != 0,
                h2: key.flags & sem_flags::H2 != 0,
                probe: key.flags & sem_flags::PROBE != 0,
                upgrade: key.flags & sem_flags::UPGRADE != 0,
                housekeeping: key.flags & sem_flags::HOUSEKEEPING != 0,
                count,
            }),
        }
    }
}
