//! The kernel's cgroup filter: the programs keep only events of watched cgroups, looked
//! up in a small array first and a hash map beyond it.

use std::collections::BTreeSet;

use aya::{
    maps::{Array, HashMap, Map, MapError},
    Ebpf,
};
use routeskew_common::{watch_mode, WatchedSet, WATCHED_FAST};

use super::{
    map_err,
    names::{MAP_WATCHED, MAP_WATCHED_SET},
    Sensor, SensorError,
};

/// The cgroup ids the kernel watches, as last written.
pub(super) struct Watched {
    ids: BTreeSet<u64>,
    /// Those the semantic sensor counts (the byte-capture programs skip them).
    semantic: BTreeSet<u64>,
    /// Entries the kernel's hash map holds.
    capacity: u32,
}

impl Watched {
    /// Nothing watched yet, with the capacity of `ebpf`'s filter.
    pub(super) fn new(ebpf: &Ebpf) -> Result<Watched, SensorError> {
        let capacity = match ebpf.map(MAP_WATCHED) {
            Some(Map::HashMap(data)) => data.info().map_err(map_err(MAP_WATCHED))?.max_entries(),
            _ => return Err(SensorError::MapMissing { name: MAP_WATCHED }),
        };
        Ok(Watched {
            ids: BTreeSet::new(),
            semantic: BTreeSet::new(),
            capacity,
        })
    }

    /// The cgroup ids last written.
    pub(super) fn ids(&self) -> &BTreeSet<u64> {
        &self.ids
    }
}

impl Sensor {
    /// Makes the kernel watch exactly these cgroup ids, all with byte capture.
    pub fn set_watched_cgroups(&mut self, ids: &[u64]) -> Result<(), SensorError> {
        self.set_watched(ids, &BTreeSet::new())
    }

    /// Makes the kernel watch exactly these cgroup ids (applies the diff to
    /// WATCHED_CGROUPS); those in `semantic` are counted by the semantic sensor, the
    /// others captured as bytes.
    pub fn set_watched(
        &mut self,
        ids: &[u64],
        semantic: &BTreeSet<u64>,
    ) -> Result<(), SensorError> {
        let watched = &mut self.watched;
        let wanted: BTreeSet<u64> = ids.iter().copied().collect();
        if wanted.len() > watched.capacity as usize {
            return Err(SensorError::TooManyCgroups {
                requested: wanted.len(),
                capacity: watched.capacity,
            });
        }
        let map = self
            .ebpf
            .map_mut(MAP_WATCHED)
            .ok_or(SensorError::MapMissing { name: MAP_WATCHED })?;
        let mut map = HashMap::<_, u64, u32>::try_from(map).map_err(map_err(MAP_WATCHED))?;
        let stale: Vec<u64> = watched.ids.difference(&wanted).copied().collect();
        for id in stale {
            match map.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(MAP_WATCHED)(e)),
            }
            watched.ids.remove(&id);
        }
        // New ids, and ids whose mode changed (a replica falling back to byte capture).
        let mode = |id: &u64| {
            if semantic.contains(id) {
                watch_mode::SEMANTIC
            } else {
                watch_mode::BYTES
            }
        };
        let changed: Vec<u64> = wanted
            .iter()
            .filter(|id| {
                !watched.ids.contains(id) || watched.semantic.contains(id) != semantic.contains(id)
            })
            .copied()
            .collect();
        for id in changed {
            map.insert(id, mode(&id), 0).map_err(map_err(MAP_WATCHED))?;
            watched.ids.insert(id);
        }
        watched.semantic = wanted.intersection(semantic).copied().collect();
        // The kernel scans this first; written after the hash so that it never points
        // the kernel at a hash missing an id.
        let mut set = WatchedSet {
            ids: [0; WATCHED_FAST],
            count: u32::MAX,
            semantic_mask: 0,
        };
        if watched.ids.len() <= WATCHED_FAST {
            for (i, (slot, id)) in set.ids.iter_mut().zip(&watched.ids).enumerate() {
                *slot = *id;
                if watched.semantic.contains(id) {
                    set.semantic_mask |= 1 << i;
                }
            }
            set.count = watched.ids.len() as u32;
        }
        let array = self
            .ebpf
            .map_mut(MAP_WATCHED_SET)
            .ok_or(SensorError::MapMissing {
                name: MAP_WATCHED_SET,
            })?;
        let mut array =
            Array::<_, WatchedSet>::try_from(array).map_err(map_err(MAP_WATCHED_SET))?;
        array.set(0, set, 0).map_err(map_err(MAP_WATCHED_SET))?;
        tracing::debug!(cgroups = watched.ids.len(), "watched cgroups updated");
        Ok(())
    }
}
