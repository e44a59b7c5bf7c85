//! Attaching the hooks: the best data path the kernel and the configuration allow (each
//! better path attaches all its data hooks or none), then the hooks every path shares.
//! A hook that fails is logged and reported; only a sensor that can capture nothing is
//! an error.

use std::fmt::Write as _;

use aya::{
    programs::{ProgramError, RawTracePoint, TracePoint},
    Ebpf,
};
use routeskew_common::Program;

use super::{Attach, Hook, HookStatus, Needed, DATA_PAIRS, HOOKS};
use crate::sensor::{tracefs, vmlinux::RegsUnavailable, DataHooks, DataPath, SensorError};

/// Keeps the end of a verifier log: the reason for a rejection is in the last lines.
pub(in crate::sensor) fn describe_program_error(e: &ProgramError) -> String {
    const KEEP_LINES: usize = 30;
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(KEEP_LINES)..].join("\n");
            format!("load failed ({io_error}); verifier log (last lines):\n{tail}")
        }
        other => other.to_string(),
    }
}

fn attach_one(ebpf: &mut Ebpf, hook: &Hook) -> Result<Option<u32>, String> {
    let program = ebpf.program_mut(hook.program).ok_or_else(|| {
        format!(
            "program {} is not in the eBPF object (stale object?)",
            hook.program
        )
    })?;
    match hook.attach {
        Attach::Tracepoint { category, event } => {
            let tp: &mut TracePoint = program.try_into().map_err(|e: ProgramError| {
                format!("program {} is not a tracepoint: {e}", hook.program)
            })?;
            tp.load().map_err(|e| describe_program_error(&e))?;
            let insns = tp.info().ok().and_then(|i| i.verified_instruction_count());
            tp.attach(category, event)
                .map_err(|e| format!("attach failed: {e}"))?;
            Ok(insns)
        }
        Attach::Raw { tracepoint } => {
            let tp: &mut RawTracePoint = program.try_into().map_err(|e: ProgramError| {
                format!("program {} is not a raw tracepoint: {e}", hook.program)
            })?;
            tp.load().map_err(|e| describe_program_error(&e))?;
            let insns = tp.info().ok().and_then(|i| i.verified_instruction_count());
            tp.attach(tracepoint)
                .map_err(|e| format!("attach failed: {e}"))?;
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

/// Attaches the best data path `pref` and `regs` allow (socket tracepoints, raw
/// `sys_exit`, classic syscall tracepoints, each tried in turn), then the TCP hooks.
pub(in crate::sensor) fn attach_all(
    ebpf: &mut Ebpf,
    layout: &tracefs::Layout,
    pref: DataHooks,
    regs: Result<(), RegsUnavailable>,
) -> (Vec<Attached>, DataPath) {
    fn record(out: &mut Vec<Attached>, hook: &Hook, result: Result<Option<u32>, String>) {
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
    let mut out: Vec<Attached> = Vec::new();
    let hooks_of = |needed: Needed| HOOKS.iter().filter(move |h| h.needed == needed);

    // Each better path either attaches all its data hooks or none of them.
    let mut path = None;
    let why_not = match (&regs, pref) {
        (Err(e), _) => Some(e.to_string()),
        (Ok(()), DataHooks::RawSysExit) => Some("skipped by configuration".to_owned()),
        (Ok(()), _) => None,
    };
    let mut fallback_reason = why_not.clone();
    for (needed, candidate) in [
        (Needed::Sock, DataPath::SockTracepoints),
        (Needed::Raw, DataPath::RawSysExit),
    ] {
        if path.is_some() {
            break;
        }
        // Both need the registers; only the socket tracepoints can be skipped on request,
        // and they report closes through inet_sock_set_state.
        let mut failed = match candidate {
            DataPath::SockTracepoints => why_not.clone().or_else(|| {
                layout.unusable(Program::InetSockSetState).map(|why| {
                    format!("closes are reported by inet_sock_set_state, unusable: {why}")
                })
            }),
            _ => regs.as_ref().err().map(|e| e.to_string()),
        };
        let mut results = Vec::new();
        for hook in hooks_of(needed) {
            let result = match &failed {
                Some(why) => Err(why.clone()),
                None => attach_one(ebpf, hook),
            };
            if let Err(e) = &result {
                failed.get_or_insert_with(|| e.clone());
            }
            results.push((hook, result));
        }
        if failed.is_none() {
            path = Some(candidate);
        } else {
            fallback_reason = failed.clone();
            for (hook, result) in &mut results {
                if result.is_ok() {
                    unload(ebpf, hook);
                    *result = Err(format!(
                        "detached: another hook of this path failed ({})",
                        failed.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
        for (hook, result) in results {
            record(
                &mut out,
                hook,
                result.map_err(|e| format!("{e}; falling back")),
            );
        }
    }
    let path = path.unwrap_or(DataPath::Classic);
    if path != DataPath::SockTracepoints {
        tracing::warn!(
            data_path = ?path,
            reason = fallback_reason.as_deref().unwrap_or("-"),
            "socket tracepoints unavailable: capturing with syscall tracepoints, which cost every syscall on the machine more"
        );
    }

    for hook in HOOKS
        .iter()
        .filter(|h| !matches!(h.needed, Needed::Sock | Needed::Raw) && h.wanted_on(path))
    {
        let partner_failed = DATA_PAIRS
            .iter()
            .find(|&&(enter, _)| enter == hook.index)
            .filter(|&&(_, exit)| {
                path == DataPath::Classic
                    && !out.iter().any(|a| a.index == exit && a.status.attached)
            })
            .map(|&(_, exit)| format!("skipped: {} is not attached", exit.name()));
        let result = match (layout.unusable(hook.index), partner_failed) {
            (Some(why), _) => Err(format!("tracepoint layout unusable: {why}")),
            (None, Some(why)) => Err(why),
            (None, None) => attach_one(ebpf, hook),
        };
        record(&mut out, hook, result);
    }
    tracing::info!(data_path = ?path, "data capture path");
    (out, path)
}

/// The hooks' statuses, or an error when neither data nor TCP events can be captured.
pub(in crate::sensor) fn require_capture(
    hooks: Vec<Attached>,
    path: DataPath,
) -> Result<Vec<HookStatus>, SensorError> {
    let attached = |i: Program| hooks.iter().any(|h| h.index == i && h.status.attached);
    let capturing = match path {
        DataPath::SockTracepoints | DataPath::RawSysExit => true,
        DataPath::Classic => DATA_PAIRS[..4]
            .iter()
            .any(|&(e, x)| attached(e) && attached(x)),
    };
    let tcp = attached(Program::InetSockSetState);
    let hooks: Vec<HookStatus> = hooks.into_iter().map(|h| h.status).collect();
    if !capturing && !tcp {
        let mut summary = String::new();
        for h in &hooks {
            let _ = writeln!(
                summary,
                "  {}: {}",
                h.name,
                h.error.as_deref().unwrap_or("attached")
            );
        }
        return Err(SensorError::NothingAttached(summary));
    }
    Ok(hooks)
}
