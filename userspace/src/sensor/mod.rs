//! The kernel sensor: loads the routeskew eBPF object, attaches its tracepoints, keeps the
//! watched-cgroup filter in sync and turns ring-buffer records into [`Event`]s.
//!
//! Data is captured by the cheapest hooks the kernel offers ([`DataPath`]): the socket
//! tracepoints (6.3+, only socket I/O runs a program), else one raw `sys_exit` tracepoint,
//! else the classic `syscalls/*` tracepoints. The first two read the saved user registers
//! at offsets from the kernel's BTF ([`abi`], [`btf`]). Records are submitted without
//! waking the reader until a backlog builds up; the reader drains on a short timer.
//!
//! This is the only module that imports aya. Its parts, in the order [`Sensor::start`]
//! walks them: `load` (privileges, the object, the kernel `Config` from [`tracefs`] and
//! `vmlinux`'s BTF), `hooks` (the hook table, the data-path choice, attaching),
//! `watched` (the cgroup filter maps), `reader` (the ring-buffer task feeding the
//! pipeline, with [`decode`]); then `counters` (what the kernel counts per program,
//! published into [`metrics`]) and [`gotls`] (the Go TLS uprobes on watched binaries).

pub mod abi;
pub mod btf;
mod counters;
pub mod decode;
#[cfg(test)]
mod fuzz_tests;
pub mod gobin;
pub mod gotls;
mod hooks;
mod load;
pub mod metrics;
pub mod names;
pub mod prog_info;
mod reader;
pub mod resolve;
pub mod semantic;
pub mod tracefs;
pub mod uprobes;
mod vmlinux;
mod watched;

use std::{collections::BTreeSet, io, path::PathBuf, time::Duration};

use aya::{maps::MapError, Ebpf};
use routeskew_common::DEFAULT_CAPTURE_LEN;
use tokio::sync::mpsc::Sender;

pub use counters::{enable_run_stats, ProgramTotals};
pub use hooks::{HookError, HookStatus, PathFailure};
pub use reader::BATCH;
pub use vmlinux::RegsUnavailable;

use crate::event::Event;

/// Default ring buffer size: about 7,500 full data records of headroom for bursts.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 8 << 20;

/// Default [`SensorConfig::poll_interval`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Env var and flag users are pointed at when no object is available.
const OBJECT_HINT: &str = "run `cargo xtask build-ebpf` or pass --ebpf-object";

/// Which hooks the sensor should capture data with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DataHooks {
    /// The best the kernel allows: socket tracepoints, else the raw `sys_exit`
    /// tracepoint, else the classic `syscalls/*` tracepoints.
    #[default]
    Auto,
    /// Skip the socket tracepoints (for tests; kernels before 6.3 lack them anyway).
    RawSysExit,
    /// Only the classic `syscalls/*` tracepoints, and no BTF use at all: the last-resort
    /// path, as on a kernel without BTF (for tests, and for kernels where the other paths
    /// misbehave).
    Classic,
    /// No data hooks at all, only the TCP hooks: the semantic sensor counts responses
    /// with uprobes on the replicas' own binaries, and nothing runs per syscall.
    Off,
}

/// The hooks a running sensor captures data with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// Raw tracepoints `sock_send_length` and `sock_recv_length` (kernel >= 6.3): only
    /// socket I/O runs a program, and no syscall tracepoint is enabled.
    SockTracepoints,
    /// One raw tracepoint on `sys_exit`, plus `syscalls/sys_enter_close`.
    RawSysExit,
    /// Classic `syscalls/sys_{enter,exit}_*` tracepoints.
    Classic,
    /// No data hooks ([`DataHooks::Off`]).
    Off,
}

impl DataPath {
    /// The `path` label of `routeskew_sensor_data_path`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SockTracepoints => "sock_tracepoints",
            Self::RawSysExit => "raw_sys_exit",
            Self::Classic => "classic",
            Self::Off => "off",
        }
    }

    /// Every value, for the series created at zero.
    pub const ALL: [DataPath; 4] = [
        Self::SockTracepoints,
        Self::RawSysExit,
        Self::Classic,
        Self::Off,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorConfig {
    /// eBPF object to load; `None` uses the one embedded at build time.
    pub object: Option<PathBuf>,
    /// Leading bytes copied per read/write (clamped to 1..=DATA_CAP).
    pub capture_len: u32,
    /// Ring buffer size in bytes (rounded up to a power of two of at least a page).
    pub ring_buffer_bytes: u32,
    /// How often the reader drains the ring buffer. The kernel only wakes the reader
    /// once an eighth of the buffer is waiting (each wakeup costs an interrupt and a
    /// context switch), so this bounds the delivery delay of a quiet stream.
    /// `Duration::ZERO` restores a wakeup per record.
    pub poll_interval: Duration,
    /// Also report HTTP responses that watched processes read from their upstreams
    /// (off: the classifier does not need them, and they are a third of all records).
    pub upstream_responses: bool,
    /// Which hooks capture data (the best available by default).
    pub data_hooks: DataHooks,
    /// Testing only: one semantic offset table entry replaced before verification.
    pub semantic_offset: Option<semantic::OffsetOverride>,
    /// Testing only: one entry of what the kernel gets replaced after verification.
    pub semantic_kernel_offset: Option<semantic::OffsetOverride>,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            object: None,
            capture_len: DEFAULT_CAPTURE_LEN,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            poll_interval: DEFAULT_POLL_INTERVAL,
            upstream_responses: false,
            data_hooks: DataHooks::Auto,
            semantic_offset: None,
            semantic_kernel_offset: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("no eBPF object: {} does not exist; {OBJECT_HINT}", path.display())]
    ObjectMissing { path: PathBuf },
    #[error("no eBPF object: none was embedded at build time (target/ebpf/routeskew-probes.o did not exist) and no path was given; {OBJECT_HINT}")]
    NoObject,
    #[error("cannot read eBPF object {path}: {source}; {OBJECT_HINT}")]
    ObjectRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "loading eBPF programs needs root or CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); effective capabilities here: {capeff}"
    )]
    NotPrivileged { capeff: String },
    #[error("tracefs is not mounted and could not be mounted: {source}")]
    TracefsUnavailable {
        #[source]
        source: tracefs::MountAttempts,
    },
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("no kernel hook could be attached:\n{}", hooks::summary(.hooks))]
    NothingAttached { hooks: Vec<HookStatus> },
    #[error("eBPF map {name} is missing from the object")]
    MapMissing { name: &'static str },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("watching {requested} cgroups exceeds the kernel filter's capacity of {capacity}")]
    TooManyCgroups { requested: usize, capacity: u32 },
    #[error("ring buffer reader: {0}")]
    Reader(#[source] io::Error),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> SensorError {
    move |source| SensorError::Map {
        name,
        source: Box::new(source),
    }
}

/// A loaded and attached sensor. Dropping it stops the reader and detaches every hook.
pub struct Sensor {
    ebpf: Ebpf,
    hooks: Vec<HookStatus>,
    path: DataPath,
    watched: watched::Watched,
    reader: reader::Reader,
    /// Kept for attaching the data hooks later ([`Sensor::ensure_byte_capture`]).
    layout: tracefs::Layout,
    regs: Result<(), std::sync::Arc<RegsUnavailable>>,
    tls: gotls::TlsProbes,
    semantic: semantic::attach::SemanticProbes,
    counts: semantic::counts::SemanticCounts,
    /// Woken when a binary resolution running off the run loop has its answer.
    resolved: std::sync::Arc<tokio::sync::Notify>,
}

impl Sensor {
    /// Loads, attaches every hook it can (a hook that fails is logged with tracing and
    /// reported in hooks(), others continue; Err only if nothing useful can run), and
    /// starts the thread that reads the ring buffer, decodes records and sends them on
    /// `events` in batches of at most [`BATCH`] (awaiting send: back-pressure ends up as
    /// counted kernel `lost` events).
    pub fn start(cfg: &SensorConfig, events: Sender<Vec<Event>>) -> Result<Sensor, SensorError> {
        let load::Loaded {
            mut ebpf,
            layout,
            regs,
            config,
            ring_bytes,
        } = load::load(cfg)?;
        let regs = regs.map_err(std::sync::Arc::new);
        let (hooks, path) = hooks::attach_all(&mut ebpf, &layout, cfg.data_hooks, regs.clone());
        let hooks = hooks::require_capture(hooks, path)?;
        let watched = watched::Watched::new(&ebpf)?;
        let reader = reader::Reader::spawn(&mut ebpf, events, cfg.poll_interval)?;
        let resolved = std::sync::Arc::new(tokio::sync::Notify::new());
        tracing::info!(
            data_path = ?path,
            attached = hooks.iter().filter(|h| h.attached).count(),
            failed = hooks.iter().filter(|h| !h.attached).count(),
            ring_buffer_bytes = ring_bytes,
            wakeup_bytes = config.wakeup_bytes,
            poll_interval = ?cfg.poll_interval,
            capture_len = config.capture_len,
            upstream_responses = cfg.upstream_responses,
            "sensor started"
        );
        Ok(Sensor {
            ebpf,
            hooks,
            path,
            watched,
            reader,
            layout,
            regs,
            tls: gotls::TlsProbes::new(std::sync::Arc::clone(&resolved)),
            semantic: semantic::attach::SemanticProbes::new(
                cfg.semantic_offset,
                cfg.semantic_kernel_offset,
                std::sync::Arc::clone(&resolved),
            ),
            resolved,
            counts: semantic::counts::SemanticCounts::default(),
        })
    }

    /// Puts the Go `crypto/tls` uprobes on the executables of these processes (one
    /// resolution and attachment per distinct binary) and takes them off binaries none of
    /// them runs any more. Failures are reported per binary, never fatal: the socket
    /// hooks keep capturing plaintext.
    pub fn set_tls_processes(&mut self, pids: &[u32]) -> Vec<gotls::TlsBinaryStatus> {
        self.tls.sync(&mut self.ebpf, pids)
    }

    /// Attaches the data hooks (the best path the kernel allows) when the sensor started
    /// without them: a replica the semantic sensor cannot count falls back to byte
    /// capture. Returns the statuses of the hooks attached now (none when they already
    /// were).
    pub fn ensure_byte_capture(&mut self) -> &[HookStatus] {
        if self.path != DataPath::Off {
            return &[];
        }
        let (new, path) = hooks::attach_data(
            &mut self.ebpf,
            &self.layout,
            DataHooks::Auto,
            self.regs.clone(),
        );
        let new = hooks::statuses(new);
        tracing::info!(data_path = ?path, attached = new.iter().filter(|h| h.attached).count(), "byte capture attached for replicas the semantic sensor cannot count");
        self.path = path;
        let start = self.hooks.len();
        self.hooks.extend(new);
        &self.hooks[start..]
    }

    /// Puts the semantic sensor's uprobes on the executables of these processes (one
    /// plan and attachment per distinct binary) and takes them off binaries none of them
    /// runs any more. Failures are reported per binary, never fatal.
    pub fn set_semantic_processes(
        &mut self,
        pids: &[u32],
    ) -> Vec<semantic::attach::SemanticBinaryStatus> {
        self.semantic.sync(&mut self.ebpf, pids)
    }

    /// Processes whose binary is being resolved (TLS or semantic) as of the last
    /// [`Self::set_tls_processes`] and [`Self::set_semantic_processes`]: their probes are
    /// not on yet. Ask again (call those again) once [`Self::resolved`] wakes.
    pub fn pending_pids(&self) -> BTreeSet<u32> {
        self.tls
            .pending_pids()
            .iter()
            .chain(self.semantic.pending_pids())
            .copied()
            .collect()
    }

    /// The semantic half of [`Self::pending_pids`].
    pub fn semantic_pending_pids(&self) -> &[u32] {
        self.semantic.pending_pids()
    }

    /// Woken (a stored permit) each time a binary resolution has its answer.
    pub fn resolved(&self) -> std::sync::Arc<tokio::sync::Notify> {
        std::sync::Arc::clone(&self.resolved)
    }

    /// The semantic sensor's registry of the agent's own connections (turns the kernel's
    /// `RemoteAddr` lookup on; call once, when the prober starts).
    pub fn peer_tags(&mut self) -> Result<semantic::peers::KernelPeers, SensorError> {
        semantic::peers::KernelPeers::take(&mut self.ebpf)
    }

    /// Publishes the hosts the semantic sensor counts by name (others count as `other`).
    pub fn set_known_hosts(&mut self, hosts: &crate::hosts::KnownHosts) -> Result<(), SensorError> {
        self.counts.set_known_hosts(&mut self.ebpf, hosts)
    }

    /// Appends the semantic sensor's responses counted since the previous call, one
    /// [`crate::event::EventKind::Responses`] event per (replica, host, status, kind).
    pub fn fold_responses(
        &mut self,
        now_ns: u64,
        out: &mut Vec<Event>,
    ) -> Result<semantic::counts::FoldStats, SensorError> {
        self.counts
            .fold(&mut self.ebpf, self.watched.ids(), now_ns, out)
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        // The reader owns the ring buffer; the programs and their links go with `ebpf`.
        self.reader.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_can_move_between_tasks() {
        fn assert_send<T: Send>() {}
        assert_send::<Sensor>();
    }
}
