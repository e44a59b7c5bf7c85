//! The three data paths a sensor can run on, and the hooks each one must attach.

use anyhow::{ensure, Context, Result};
use routeskew::sensor::{DataHooks, DataPath, HookError, PathFailure, RegsUnavailable, Sensor};

/// Which data hooks a test runs on. This kernel (6.18, BTF) supports all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Capture {
    /// The socket tracepoints (the default).
    Sock,
    /// `raw_tracepoint/sys_exit` + `syscalls/sys_enter_close` (kernels before 6.3).
    Raw,
    /// The classic `syscalls/*` fallback without any BTF use.
    Classic,
    /// No data hooks: the semantic sensor's uprobes count responses.
    Off,
}

impl Capture {
    pub(crate) fn hooks(self) -> DataHooks {
        match self {
            Capture::Sock => DataHooks::Auto,
            Capture::Raw => DataHooks::RawSysExit,
            Capture::Classic => DataHooks::Classic,
            Capture::Off => DataHooks::Off,
        }
    }

    /// The path a sensor configured with `hooks` must run on this kernel.
    pub(crate) fn requested(hooks: DataHooks) -> Capture {
        match hooks {
            DataHooks::Auto => Capture::Sock,
            DataHooks::RawSysExit => Capture::Raw,
            DataHooks::Classic => Capture::Classic,
            DataHooks::Off => Capture::Off,
        }
    }

    fn path(self) -> DataPath {
        match self {
            Capture::Sock => DataPath::SockTracepoints,
            Capture::Raw => DataPath::RawSysExit,
            Capture::Classic => DataPath::Classic,
            Capture::Off => DataPath::Off,
        }
    }

    /// Data hooks of better paths, listed as not attached with the reason.
    fn skipped(self) -> &'static [&'static str] {
        match self {
            Capture::Sock | Capture::Off => &[],
            Capture::Raw => &[SOCK_HOOKS[0], SOCK_HOOKS[1]],
            Capture::Classic => &[SOCK_HOOKS[0], SOCK_HOOKS[1], RAW_HOOK],
        }
    }
}

/// The sensor runs the path `requested` implies and every hook of that path is
/// attached; better paths' hooks are listed as not attached, with the reason.
pub(crate) fn check_hooks(sensor: &Sensor, requested: Capture) -> Result<()> {
    let hooks = sensor.hooks();
    ensure!(
        sensor.data_path() == requested.path(),
        "{requested:?} requested, {:?} in use: {hooks:#?}",
        sensor.data_path()
    );
    for name in requested.skipped() {
        let h = hooks
            .iter()
            .find(|h| h.name == *name)
            .with_context(|| format!("{name} is not listed: {hooks:#?}"))?;
        ensure!(
            !h.attached
                && matches!(
                    &h.error,
                    Some(HookError::FellBack { reason }) if configured(reason)
                ),
            "{h:#?}"
        );
    }
    let classic_data = hooks
        .iter()
        .any(|h| h.name.starts_with("syscalls/sys_exit_"));
    ensure!(
        classic_data == (requested == Capture::Classic),
        "classic data tracepoints on the {requested:?} path: {hooks:#?}"
    );
    let enter_close = hooks.iter().any(|h| h.name == "syscalls/sys_enter_close");
    ensure!(
        enter_close == matches!(requested, Capture::Raw | Capture::Classic),
        "sys_enter_close on the {requested:?} path: {hooks:#?}"
    );
    let failed: Vec<_> = hooks
        .iter()
        .filter(|h| !h.attached && !requested.skipped().contains(&h.name.as_str()))
        .collect();
    ensure!(
        failed.is_empty(),
        "hooks not attached on this kernel: {failed:#?}"
    );
    Ok(())
}

/// A path given up by configuration: the socket path skipped on request, or (classic) the
/// registers deliberately not used.
fn configured(reason: &PathFailure) -> bool {
    match reason {
        PathFailure::Configured => true,
        PathFailure::Regs { source } => matches!(**source, RegsUnavailable::Configured),
        _ => false,
    }
}

/// Hook names in `Sensor::hooks()`.
const RAW_HOOK: &str = "raw_tracepoint/sys_exit";
const SOCK_HOOKS: [&str; 2] = [
    "raw_tracepoint/sock_send_length",
    "raw_tracepoint/sock_recv_length",
];
