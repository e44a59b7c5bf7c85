//! Attaching the hooks: the best data path the kernel and the configuration allow (each
//! better path attaches all its data hooks or none), then the hooks every path shares.
//! A hook that fails is logged and reported; only a sensor that can capture nothing is
//! an error.

use std::sync::Arc;

use aya::{
    programs::{RawTracePoint, TracePoint},
    Ebpf,
};
use routeskew_common::Program;

use super::{Attach, Hook, HookError, HookStatus, Needed, PathFailure, DATA_PAIRS, HOOKS};
use crate::sensor::{tracefs, vmlinux::RegsUnavailable, DataHooks, DataPath, SensorError};

fn attach_one(ebpf: &mut Ebpf, hook: &Hook) -> Result<Option<u32>, HookError> {
    let program = hook.program;
    let wrong_kind = |kind| {
        move |source| HookError::WrongKind {
            program,
            kind,
            source,
        }
    };
    let ebpf_program = ebpf
        .program_mut(program)
        .ok_or(HookError::NotInObject { program })?;
    let load = |source| HookError::Load { source };
    let attach = |source| HookError::Attach { source };
    match hook.attach {
        Attach::Tracepoint { category, event } => {
            let tp: &mut TracePoint = ebpf_program.try_into().map_err(wrong_kind("tracepoint"))?;
            tp.load().map_err(load)?;
            let insns = tp.info().ok().and_then(|i| i.verified_instruction_count());
            tp.attach(category, event).map_err(attach)?;
            Ok(insns)
        }
        Attach::Raw { tracepoint } => {
            let tp: &mut RawTracePoint = ebpf_program
                .try_into()
                .map_err(wrong_kind("raw tracepoint"))?;
            tp.load().map_err(load)?;
            let insns = tp.info().ok().and_then(|i| i.verified_instruction_count());
            tp.attach(tracepoint).map_err(attach)?;
            Ok(insns)
        }
    }
}

/// A hook's outcome, with the program slot it belongs to.
pub(in crate::sensor) struct Attached {
    index: Program,
    status: HookStatus,
}

/// Unloads a program (detaching its links) after its path was abandoned.
fn unload(ebpf: &mut Ebpf, hook: &Hook) {
    let Some(program) = ebpf.program_mut(hook.program) else {
        return;
    };
    let result = match hook.attach {
        Attach::Raw { .. } => <&mut RawTracePoint>::try_from(program).map(|p| p.unload()),
        Attach::Tracepoint { .. } => <&mut TracePoint>::try_from(program).map(|p| p.unload()),
    };
    if let Ok(Err(error)) | Err(error) = result {
        tracing::debug!(program = hook.program, %error, "unloading an abandoned program failed");
    }
}

fn record(out: &mut Vec<Attached>, hook: &Hook, result: Result<Option<u32>, HookError>) {
    let name = hook.name();
    let status = match result {
        Ok(insns) => {
            tracing::info!(hook = %name, verified_insns = insns, "hook attached");
            HookStatus {
                name,
                attached: true,
                error: None,
            }
        }
        Err(error) => {
            tracing::warn!(hook = %name, %error, "hook not attached");
            HookStatus {
                name,
                attached: false,
                error: Some(error),
            }
        }
    };
    out.push(Attached {
        index: hook.index,
        status,
    });
}

/// Attaches the data hooks of one better path (`needed`), all or none; returns why the
/// path was given up. `failed` is a reason known before trying any.
fn attach_path(
    ebpf: &mut Ebpf,
    out: &mut Vec<Attached>,
    needed: Needed,
    mut failed: Option<Arc<PathFailure>>,
) -> Option<Arc<PathFailure>> {
    // Per hook: its verified instruction count once attached, None if not attached.
    let mut results = Vec::new();
    for hook in HOOKS.iter().filter(|h| h.needed == needed) {
        let attached = match &failed {
            Some(_) => None,
            None => match attach_one(ebpf, hook) {
                Ok(insns) => Some(insns),
                Err(source) => {
                    failed = Some(Arc::new(PathFailure::Hook { source }));
                    None
                }
            },
        };
        results.push((hook, attached));
    }
    let Some(reason) = failed else {
        // Nothing failed: every hook is attached.
        for (hook, attached) in results {
            record(out, hook, Ok(attached.flatten()));
        }
        return None;
    };
    for (hook, attached) in results {
        let reason = Arc::clone(&reason);
        let error = if attached.is_some() {
            unload(ebpf, hook);
            HookError::Detached { reason }
        } else {
            HookError::FellBack { reason }
        };
        record(out, hook, Err(error));
    }
    Some(reason)
}

/// Attaches the best data path `pref` and `regs` allow (socket tracepoints, raw
/// `sys_exit`, classic syscall tracepoints, each tried in turn), then the TCP hooks.
pub(in crate::sensor) fn attach_all(
    ebpf: &mut Ebpf,
    layout: &tracefs::Layout,
    pref: DataHooks,
    regs: Result<(), Arc<RegsUnavailable>>,
) -> (Vec<Attached>, DataPath) {
    let (mut out, path) = attach_data(ebpf, layout, pref, regs);
    attach_rest(ebpf, layout, path, &mut out, |n| n == Needed::Always);
    tracing::info!(data_path = ?path, "data capture path");
    (out, path)
}

/// The hooks' statuses.
pub(in crate::sensor) fn statuses(hooks: Vec<Attached>) -> Vec<HookStatus> {
    hooks.into_iter().map(|h| h.status).collect()
}

/// Attaches the data hooks only: the best data path `pref` and `regs` allow and the
/// syscall hooks that path needs (nothing for [`DataHooks::Off`]).
pub(in crate::sensor) fn attach_data(
    ebpf: &mut Ebpf,
    layout: &tracefs::Layout,
    pref: DataHooks,
    regs: Result<(), Arc<RegsUnavailable>>,
) -> (Vec<Attached>, DataPath) {
    let mut out: Vec<Attached> = Vec::new();
    let regs_failure = || {
        regs.as_ref().err().map(|source| {
            Arc::new(PathFailure::Regs {
                source: Arc::clone(source),
            })
        })
    };

    // Each better path either attaches all its data hooks or none of them. Both need
    // the registers; only the socket tracepoints can be skipped on request, and they
    // report closes through inet_sock_set_state.
    let sock_failure = regs_failure()
        .or_else(|| (pref == DataHooks::RawSysExit).then(|| Arc::new(PathFailure::Configured)))
        .or_else(|| {
            layout.unusable(Program::InetSockSetState).map(|why| {
                Arc::new(PathFailure::CloseHook {
                    source: why.clone(),
                })
            })
        });
    let raw_failure = regs_failure();
    let mut path = DataPath::Classic;
    let mut fallback_reason = None;
    let candidates = if pref == DataHooks::Off {
        path = DataPath::Off;
        Vec::new()
    } else {
        vec![
            (Needed::Sock, DataPath::SockTracepoints, sock_failure),
            (Needed::Raw, DataPath::RawSysExit, raw_failure),
        ]
    };
    for (needed, candidate, known) in candidates {
        match attach_path(ebpf, &mut out, needed, known) {
            None => {
                path = candidate;
                break;
            }
            Some(reason) => fallback_reason = Some(reason),
        }
    }
    if matches!(path, DataPath::RawSysExit | DataPath::Classic) {
        tracing::warn!(
            data_path = ?path,
            reason = fallback_reason.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string),
            "socket tracepoints unavailable: capturing with syscall tracepoints, which cost every syscall on the machine more"
        );
    }

    attach_rest(ebpf, layout, path, &mut out, |n| {
        matches!(n, Needed::Classic | Needed::Syscalls)
    });
    (out, path)
}

/// Attaches the hooks of `path` beyond the better paths' data hooks that `which` picks.
fn attach_rest(
    ebpf: &mut Ebpf,
    layout: &tracefs::Layout,
    path: DataPath,
    out: &mut Vec<Attached>,
    which: impl Fn(Needed) -> bool,
) {
    for hook in HOOKS
        .iter()
        .filter(|h| which(h.needed) && h.wanted_on(path))
    {
        let partner_failed = DATA_PAIRS
            .iter()
            .find(|&&(enter, _)| enter == hook.index)
            .filter(|&&(_, exit)| {
                path == DataPath::Classic
                    && !out.iter().any(|a| a.index == exit && a.status.attached)
            })
            .map(|&(_, exit)| HookError::PartnerNotAttached { partner: exit });
        let result = match (layout.unusable(hook.index), partner_failed) {
            (Some(why), _) => Err(HookError::Layout {
                source: why.clone(),
            }),
            (None, Some(error)) => Err(error),
            (None, None) => attach_one(ebpf, hook),
        };
        record(out, hook, result);
    }
}

/// The hooks' statuses, or an error when neither data nor TCP events can be captured.
pub(in crate::sensor) fn require_capture(
    hooks: Vec<Attached>,
    path: DataPath,
) -> Result<Vec<HookStatus>, SensorError> {
    let attached = |i: Program| hooks.iter().any(|h| h.index == i && h.status.attached);
    let capturing = match path {
        // With no data hooks, the semantic sensor's uprobes capture.
        DataPath::SockTracepoints | DataPath::RawSysExit | DataPath::Off => true,
        DataPath::Classic => DATA_PAIRS[..4]
            .iter()
            .any(|&(e, x)| attached(e) && attached(x)),
    };
    let tcp = attached(Program::InetSockSetState);
    let hooks: Vec<HookStatus> = hooks.into_iter().map(|h| h.status).collect();
    if !capturing && !tcp {
        return Err(SensorError::NothingAttached { hooks });
    }
    Ok(hooks)
}
