//! Loads through BTF pointers (the current task's saved user registers, its cgroup), at
//! offsets the agent read from the kernel's BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};

use crate::maps::cfg;

/// Address of the current task's saved user registers, as a BTF pointer the verifier lets
/// the program load from directly (a `struct pt_regs` member at a constant offset, with
/// a fault handler): no helper call per register. Only valid where `Config::flags` has
/// `REGS`, i.e. the kernel has BTF.
#[inline(always)]
pub(crate) fn current() -> u64 {
    unsafe { generated::bpf_task_pt_regs(generated::bpf_get_current_task_btf()) as u64 }
}

/// The 8 bytes at `off` in the object `ptr` points to: a register of `current()`, or a
/// pointer or id member on the way to the current cgroup. `ptr` must be a BTF pointer
/// and `off` a `CONFIG` field: frozen read-only data, which the verifier treats as the
/// constant it holds, as its check of the member access requires. A bad pointer reads
/// as 0 (the verifier turns these into loads with a fault handler).
#[inline(always)]
pub(crate) fn load(ptr: u64, off: &u32) -> u64 {
    let addr = ptr.wrapping_add(u64::from(cfg(off)));
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// A register from a plain `struct pt_regs *` (a raw tracepoint argument, which the
/// verifier only knows as a number): one `bpf_probe_read_kernel`.
#[inline(always)]
pub(crate) fn probe(regs: u64, off: &u32) -> Option<u64> {
    let addr = regs.wrapping_add(u64::from(cfg(off)));
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}
