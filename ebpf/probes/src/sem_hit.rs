//! What every semantic uprobe does first: is this a replica the semantic sensor counts,
//! which binary's verified plan applies (the uprobe cookie is its slot), and the key of
//! the goroutine it runs on.

use aya_ebpf::{bindings::pt_regs, helpers::generated, programs::ProbeContext, EbpfContext as _};
use routeskew_common::{GoHttpBinary, GoroutineKey, Program};

use crate::{
    filter::{pid_tgid, semantic_cgroup},
    maps::{count, Counter, SEM_BINARIES},
};

#[inline(always)]
pub(crate) fn goroutine(g: u64) -> GoroutineKey {
    GoroutineKey {
        tgid: (pid_tgid() >> 32) as u32,
        _pad: 0,
        g,
    }
}

/// A probe hit in a replica the semantic sensor counts: its cgroup, the binary's verified
/// plan and the registers; `None` for any other process (and an anomaly counted when the
/// binary's slot holds no valid plan).
#[inline(always)]
pub(crate) fn hit(
    ctx: &ProbeContext,
    prog: Program,
) -> Option<(u64, &'static GoHttpBinary, &pt_regs)> {
    let cgroup_id = semantic_cgroup()?;
    let bin = binary(ctx, prog)?;
    Some((cgroup_id, bin, unsafe { &*ctx.regs }))
}

/// The verified plan of the binary this probe was attached to (cookie = slot).
#[inline(always)]
fn binary(ctx: &ProbeContext, prog: Program) -> Option<&'static GoHttpBinary> {
    let slot = unsafe { generated::bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    match SEM_BINARIES.get(slot) {
        Some(bin) if bin.valid == 1 => Some(bin),
        _ => {
            count(prog, Counter::Anomaly);
            None
        }
    }
}
