//! The semantic sensor's aya half: per distinct binary that watched replicas run, its
//! verified plan written into a `SEM_BINARIES` slot and the three uprobes attached at the
//! plan's file offsets with the slot as their cookie. A binary none of them runs any more
//! is detached and its slot freed (invalidated first, so that a late hit is an anomaly,
//! never a read with another binary's offsets).
//!
//! A binary whose plan cannot be resolved is remembered with its error for as long as it
//! is in use: the plan depends on the file's bytes only, and a new release is a new file
//! (another inode), so trying again would only repeat the failure. Plans are resolved
//! off the run loop ([`crate::sensor::resolve`]): a binary whose plan is not in yet is
//! pending, and its processes are in [`SemanticProbes::pending_pids`].

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::Arc,
};

use tokio::sync::Notify;

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use routeskew_common::{GoHttpBinary, Program, SemProbe, SEM_BINARY_SLOTS};

use super::{plan_path_with, SemanticError, SemanticPlan};
use crate::sensor::{
    gotls::{binary_ids, BinaryId},
    names,
    resolve::{Resolutions, ResolveError, RESOLVE_TIMEOUT},
    uprobes::{self, Links, UprobeError},
};

const PROG_H1: &str = names::program(Program::SemH1WriteHeader);
const PROG_H2: &str = names::program(Program::SemH2WriteHeader);
const PROG_NOT_FOUND: &str = names::program(Program::SemNotFound);
const PROG_UPGRADE: &str = names::program(Program::SemUpgrade);
const PROG_CONN_CLOSE: &str = names::program(Program::SemConnClose);
/// One program per probe, loaded once for every binary.
const PROGRAMS: [&str; SemProbe::ALL.len()] = {
    let mut p = [""; SemProbe::ALL.len()];
    let mut i = 0;
    while i < p.len() {
        p[i] = program_of(SemProbe::ALL[i]);
        i += 1;
    }
    p
};

const fn program_of(probe: SemProbe) -> &'static str {
    match probe {
        SemProbe::H1WriteHeader => PROG_H1,
        SemProbe::H2WriteHeader => PROG_H2,
        SemProbe::NotFound => PROG_NOT_FOUND,
        SemProbe::Upgrade => PROG_UPGRADE,
        SemProbe::ConnClose => PROG_CONN_CLOSE,
    }
}

/// Why the semantic sensor is not on a binary.
#[derive(Debug, thiserror::Error)]
pub enum SemanticAttachError {
    #[error(transparent)]
    Plan(#[from] SemanticError),
    #[error(transparent)]
    Uprobe(#[from] UprobeError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("the eBPF object has no map {name} (stale object?)")]
    MapMissing { name: &'static str },
    #[error("all {SEM_BINARY_SLOTS} binary slots are in use")]
    NoSlot,
    #[error("writing the binary's slot: {0}")]
    Slot(#[source] aya::maps::MapError),
}

/// How the semantic sensor fared on one binary.
#[derive(Debug, Clone)]
pub struct SemanticBinaryStatus {
    pub id: BinaryId,
    pub exe: PathBuf,
    /// Processes (of those passed in) that run it.
    pub pids: Vec<u32>,
    /// The Go version, or why the probes are not on it.
    pub outcome: Result<String, Arc<SemanticAttachError>>,
}

struct Attached {
    slot: u32,
    links: Links,
    go_version: String,
}

struct Binary {
    exe: PathBuf,
    outcome: Result<Attached, Arc<SemanticAttachError>>,
}

/// The semantic probes across discovery scans.
pub struct SemanticProbes {
    binaries: BTreeMap<BinaryId, Binary>,
    resolving: Resolutions<BinaryId, Result<SemanticPlan, SemanticError>>,
    /// Processes (of the last sync) whose binary's plan is not in yet.
    pending_pids: Vec<u32>,
    /// `--semantic-offset`: replaces one table entry before verification.
    tweak: Option<super::OffsetOverride>,
    /// `--semantic-kernel-offset`: replaces one entry of what the kernel gets, after
    /// verification (a test of the run-time check: the probes then go unseen).
    kernel_tweak: Option<super::OffsetOverride>,
    loaded: Option<Result<(), Arc<SemanticAttachError>>>,
}

fn slots(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, GoHttpBinary>, SemanticAttachError> {
    let map = ebpf
        .map_mut(names::MAP_SEM_BINARIES)
        .ok_or(SemanticAttachError::MapMissing {
            name: names::MAP_SEM_BINARIES,
        })?;
    Array::try_from(map).map_err(SemanticAttachError::Slot)
}

fn detach(ebpf: &mut Ebpf, attached: Attached) {
    uprobes::detach(ebpf, attached.links);
    // Invalidated after the links are gone: a hit in flight reads valid = 0 and counts
    // an anomaly instead of using the next binary's offsets.
    if let Err(error) = slots(ebpf).and_then(|mut s| {
        s.set(attached.slot, GoHttpBinary::default(), 0)
            .map_err(SemanticAttachError::Slot)
    }) {
        tracing::warn!(slot = attached.slot, %error, "clearing a semantic binary slot failed");
    }
}

/// Writes the plan into `slot` and attaches every probe; all or none.
fn attach(
    ebpf: &mut Ebpf,
    exe: &std::path::Path,
    plan: &SemanticPlan,
    slot: u32,
) -> Result<Attached, SemanticAttachError> {
    slots(ebpf)?
        .set(slot, plan.binary, 0)
        .map_err(SemanticAttachError::Slot)?;
    let mut attached = Attached {
        slot,
        links: Vec::with_capacity(plan.probes.len()),
        go_version: plan.go_version.clone(),
    };
    for probe in &plan.probes {
        let program = program_of(probe.probe);
        let offset = probe.file_offset;
        let result = uprobes::attach(ebpf, program, exe, offset, Some(u64::from(slot)));
        match result {
            Ok(link) => attached.links.push((program, link)),
            Err(e) => {
                detach(ebpf, attached);
                return Err(e.into());
            }
        }
    }
    Ok(attached)
}

impl SemanticProbes {
    /// Nothing attached yet; `tweak` replaces one offset table entry before
    /// verification, `kernel_tweak` one entry of what the kernel gets after it; `done`
    /// is woken when a plan is resolved.
    pub fn new(
        tweak: Option<super::OffsetOverride>,
        kernel_tweak: Option<super::OffsetOverride>,
        done: Arc<Notify>,
    ) -> Self {
        SemanticProbes {
            binaries: BTreeMap::new(),
            resolving: Resolutions::new(done, RESOLVE_TIMEOUT),
            pending_pids: Vec::new(),
            tweak,
            kernel_tweak,
            loaded: None,
        }
    }

    /// Processes (of the last [`Self::sync`]) whose binary's plan is being resolved.
    pub fn pending_pids(&self) -> &[u32] {
        &self.pending_pids
    }

    /// Attaches the semantic sensor to the binaries these processes run and detaches it
    /// from binaries none of them runs any more. One status per binary in use whose plan
    /// is resolved; the others are pending ([`Self::pending_pids`]).
    pub fn sync(&mut self, ebpf: &mut Ebpf, pids: &[u32]) -> Vec<SemanticBinaryStatus> {
        let in_use = binary_ids(pids);
        self.resolving.retain(|id| in_use.contains_key(id));
        self.pending_pids.clear();
        let gone: BTreeSet<BinaryId> = self
            .binaries
            .keys()
            .filter(|id| !in_use.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(Binary {
                exe,
                outcome: Ok(attached),
            }) = self.binaries.remove(&id)
            {
                tracing::info!(exe = %exe.display(), slot = attached.slot, "no watched replica runs this binary any more; semantic uprobes detached");
                detach(ebpf, attached);
            }
        }
        let mut out = Vec::with_capacity(in_use.len());
        for (id, (exe, pids)) in in_use {
            if !self.binaries.contains_key(&id) {
                let Some(outcome) = self.attach_new(ebpf, id, &exe) else {
                    self.pending_pids.extend(pids);
                    continue;
                };
                self.binaries.insert(
                    id,
                    Binary {
                        exe: exe.clone(),
                        outcome,
                    },
                );
            }
            let Some(b) = self.binaries.get(&id) else {
                continue;
            };
            out.push(SemanticBinaryStatus {
                id,
                exe: b.exe.clone(),
                pids,
                outcome: b
                    .outcome
                    .as_ref()
                    .map(|a| a.go_version.clone())
                    .map_err(Arc::clone),
            });
        }
        out
    }

    /// `None` while the binary's plan is being resolved.
    fn attach_new(
        &mut self,
        ebpf: &mut Ebpf,
        id: BinaryId,
        exe: &std::path::Path,
    ) -> Option<Result<Attached, Arc<SemanticAttachError>>> {
        let log_failure = |error: &SemanticAttachError| {
            tracing::warn!(
                exe = %exe.display(),
                dev = id.dev,
                inode = id.ino,
                %error,
                "semantic sensor not attached to this binary: its replicas fall back to byte capture"
            );
        };
        let loaded = self
            .loaded
            .get_or_insert_with(|| {
                uprobes::load_all(ebpf, &PROGRAMS)
                    .map_err(|e| Arc::new(SemanticAttachError::from(e)))
            })
            .clone();
        if let Err(e) = loaded {
            log_failure(&e);
            return Some(Err(e));
        }
        let tweak = self.tweak;
        let answer = self
            .resolving
            .poll(id, exe, move |exe| plan_path_with(&exe, tweak))?;
        let result = answer
            .map_err(SemanticAttachError::from)
            .and_then(|plan| plan.map_err(SemanticAttachError::from))
            .and_then(|mut plan| {
                if let Some(t) = self.kernel_tweak {
                    tracing::warn!(field = ?t.field, value = t.value, "the kernel gets a semantic offset the binary was not verified with (testing only)");
                    t.apply(&mut plan.binary.offsets);
                }
                let slot = self.free_slot().ok_or(SemanticAttachError::NoSlot)?;
                let attached = attach(ebpf, exe, &plan, slot)?;
                tracing::info!(
                    exe = %exe.display(),
                    dev = id.dev,
                    inode = id.ino,
                    go_version = %plan.go_version,
                    h2 = ?plan.h2,
                    slot,
                    uprobes = attached.links.len(),
                    "semantic uprobes attached"
                );
                Ok(attached)
            });
        if let Err(error) = &result {
            log_failure(error);
        }
        Some(result.map_err(Arc::new))
    }

    fn free_slot(&self) -> Option<u32> {
        let used: BTreeSet<u32> = self
            .binaries
            .values()
            .filter_map(|b| b.outcome.as_ref().ok().map(|a| a.slot))
            .collect();
        (0..SEM_BINARY_SLOTS).find(|s| !used.contains(s))
    }
}
