//! What the running kernel's BTF (`/sys/kernel/btf/vmlinux`) gives the programs: the
//! saved user registers' offsets for the data paths that read them, the pointer chain to
//! the current cgroup id, and where a socket keeps its error. Without it the sensor falls
//! back to the classic syscall tracepoints, the cgroup helper call, and connect failures
//! matched to their error reports.

use std::io;

use aya::{
    programs::{ProgramError, ProgramType},
    sys::BpfHelper,
};

use super::{abi, btf, DataHooks};

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the hooks that read the saved user registers (socket tracepoints, raw `sys_exit`)
/// cannot be used: the classic syscall tracepoints are used instead.
#[derive(Debug, thiserror::Error)]
pub enum RegsUnavailable {
    #[error("classic syscall tracepoints requested by configuration")]
    Configured,
    #[error(
        "no syscall numbers for this architecture ({})",
        std::env::consts::ARCH
    )]
    Architecture,
    #[error("cannot read {VMLINUX_BTF}: {source}")]
    BtfRead {
        #[source]
        source: io::Error,
    },
    #[error("{VMLINUX_BTF}: {source}")]
    Offsets {
        #[from]
        source: abi::AbiError,
    },
    #[error("the kernel does not offer {helper:?} to {program:?} programs")]
    HelperMissing {
        helper: BpfHelper,
        program: ProgramType,
    },
    #[error("probing {helper:?} for {program:?} programs failed: {source}")]
    HelperProbe {
        helper: BpfHelper,
        program: ProgramType,
        #[source]
        source: ProgramError,
    },
}

/// The helpers behind BTF pointers to the current task and its registers arrived in 5.11
/// (`bpf_get_current_task_btf`) and 5.15 (`bpf_task_pt_regs`); a kernel with BTF but
/// without them must not get an object whose every program calls them.
fn btf_helpers_supported() -> Result<(), RegsUnavailable> {
    use aya::sys::is_helper_supported;
    for program in [ProgramType::TracePoint, ProgramType::RawTracePoint] {
        for helper in [
            BpfHelper::BPF_FUNC_get_current_task_btf,
            BpfHelper::BPF_FUNC_task_pt_regs,
        ] {
            match is_helper_supported(program, helper) {
                Ok(true) => {}
                Ok(false) => return Err(RegsUnavailable::HelperMissing { helper, program }),
                Err(source) => {
                    return Err(RegsUnavailable::HelperProbe {
                        helper,
                        program,
                        source,
                    })
                }
            }
        }
    }
    Ok(())
}

/// What this machine's BTF gives the programs.
pub(super) struct BtfConfig {
    /// Syscall numbers and `pt_regs` offsets, for the hooks that read registers.
    pub(super) regs: Result<(&'static abi::SyscallAbi, abi::RegOffsets), RegsUnavailable>,
    /// For reading the current cgroup id without a helper call.
    pub(super) cgroup: Option<abi::CgroupChain>,
    /// For classifying a failed connect from its socket alone.
    pub(super) sock_err: Option<u32>,
}

pub(super) fn btf_config(hooks: DataHooks) -> BtfConfig {
    let unavailable = |e| BtfConfig {
        regs: Err(e),
        cgroup: None,
        sock_err: None,
    };
    if hooks == DataHooks::Classic {
        return unavailable(RegsUnavailable::Configured);
    }
    let blob = match std::fs::read(VMLINUX_BTF) {
        Ok(blob) => blob,
        Err(source) => return unavailable(RegsUnavailable::BtfRead { source }),
    };
    let btf = match btf::Btf::parse(&blob) {
        Ok(btf) => btf,
        Err(e) => return unavailable(abi::AbiError::from(e).into()),
    };
    if let Err(e) = btf_helpers_supported() {
        return unavailable(e);
    }
    let sock_err = match abi::sock_err_offset(&btf) {
        Ok(offset) => Some(offset),
        Err(error) => {
            tracing::info!(%error, "connect failures classified by pairing error reports");
            None
        }
    };
    let cgroup = match abi::cgroup_chain(&btf) {
        Ok(chain) => Some(chain),
        Err(error) => {
            tracing::info!(%error, "cgroup id read with the helper call");
            None
        }
    };
    let regs = match abi::native() {
        None => Err(RegsUnavailable::Architecture),
        Some(abi) => abi::reg_offsets(&btf, abi)
            .map(|r| (abi, r))
            .map_err(RegsUnavailable::from),
    };
    BtfConfig {
        regs,
        cgroup,
        sock_err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_path_can_be_forced() {
        let c = btf_config(DataHooks::Classic);
        assert!(matches!(c.regs, Err(RegsUnavailable::Configured)));
        assert!(c.cgroup.is_none());
        assert!(c.sock_err.is_none());
    }
}
