//! The kernel sensor: loads the routeskew eBPF object, attaches its tracepoints, keeps the
//! watched-cgroup filter in sync and turns ring-buffer records into [`Event`]s.
//!
//! Data is captured by the cheapest hooks the kernel offers ([`DataPath`]): the socket
//! tracepoints (6.3+, only socket I/O runs a program), else one raw `sys_exit` tracepoint,
//! else the classic `syscalls/*` tracepoints. The first two read the saved user registers
//! at offsets from the kernel's BTF ([`abi`], [`btf`]). Records are submitted without
//! waking the reader until a backlog builds up; the reader drains on a short timer.
//!
//! This is the only module that imports aya.

pub mod abi;
pub mod btf;
pub mod decode;
pub mod gobin;
pub mod gotls;
pub mod metrics;
pub mod names;
pub mod prog_info;
pub mod tracefs;

use std::{
    borrow::Cow,
    collections::BTreeSet,
    fmt::Write as _,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use names::{GLOBAL_CONFIG, MAP_COUNTERS, MAP_EVENTS, MAP_WATCHED, MAP_WATCHED_SET};
use routeskew_common::{
    config_flags, Program, ProgramCounters, WatchedSet, DEFAULT_CAPTURE_LEN, WATCHED_FAST,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::mpsc::Sender,
    task::JoinHandle,
};

use crate::event::Event;

/// Default ring buffer size: about 7,500 full data records of headroom for bursts.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 8 << 20;

/// Env var and flag users are pointed at when no object is available.
const OBJECT_HINT: &str = "run `cargo xtask build-ebpf` or pass --ebpf-object";

// The object `cargo xtask build-ebpf` had produced when this crate was built, if any.
#[cfg(routeskew_embedded_ebpf)]
static EMBEDDED_OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/routeskew-probes.o"
)));
#[cfg(not(routeskew_embedded_ebpf))]
static EMBEDDED_OBJECT: Option<&[u8]> = None;

/// How a program attaches.
#[derive(Clone, Copy)]
enum Attach {
    /// A classic tracepoint `category/event`.
    Tracepoint {
        category: &'static str,
        event: &'static str,
    },
    /// A raw tracepoint.
    Raw { tracepoint: &'static str },
}

/// Which data path a hook belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needed {
    /// On every path.
    Always,
    /// The socket tracepoints.
    Sock,
    /// The raw `sys_exit` program.
    Raw,
    /// The classic syscall tracepoints.
    Classic,
    /// Both syscall paths (raw and classic): `sys_enter_close`.
    Syscalls,
}

/// A kernel program and the hook it attaches to.
struct Hook {
    /// Function name in the object.
    program: &'static str,
    index: Program,
    attach: Attach,
    needed: Needed,
}

impl Hook {
    fn name(&self) -> String {
        match self.attach {
            Attach::Tracepoint { category, event } => format!("{category}/{event}"),
            Attach::Raw { tracepoint } => format!("raw_tracepoint/{tracepoint}"),
        }
    }

    fn wanted_on(&self, path: DataPath) -> bool {
        match self.needed {
            Needed::Always => true,
            Needed::Sock => path == DataPath::SockTracepoints,
            Needed::Raw => path == DataPath::RawSysExit,
            Needed::Classic => path == DataPath::Classic,
            Needed::Syscalls => path != DataPath::SockTracepoints,
        }
    }
}

const fn tp(index: Program, category: &'static str, event: &'static str, needed: Needed) -> Hook {
    Hook {
        program: names::program(index),
        index,
        attach: Attach::Tracepoint { category, event },
        needed,
    }
}

const fn raw(index: Program, tracepoint: &'static str, needed: Needed) -> Hook {
    Hook {
        program: names::program(index),
        index,
        attach: Attach::Raw { tracepoint },
        needed,
    }
}

/// In order of preference for the data hooks, then attach order within a path: each
/// exit before its enter, so an enter never fills a per-thread map (pending I/O, the
/// close mark) without the exit that drains it.
const HOOKS: [Hook; Program::TRACEPOINTS as usize] = [
    raw(Program::SockSend, "sock_send_length", Needed::Sock),
    raw(Program::SockRecv, "sock_recv_length", Needed::Sock),
    raw(Program::RawSysExit, "sys_exit", Needed::Raw),
    tp(
        Program::SysExitRead,
        "syscalls",
        "sys_exit_read",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterRead,
        "syscalls",
        "sys_enter_read",
        Needed::Classic,
    ),
    tp(
        Program::SysExitWrite,
        "syscalls",
        "sys_exit_write",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterWrite,
        "syscalls",
        "sys_enter_write",
        Needed::Classic,
    ),
    tp(
        Program::SysExitRecvfrom,
        "syscalls",
        "sys_exit_recvfrom",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterRecvfrom,
        "syscalls",
        "sys_enter_recvfrom",
        Needed::Classic,
    ),
    tp(
        Program::SysExitSendto,
        "syscalls",
        "sys_exit_sendto",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterSendto,
        "syscalls",
        "sys_enter_sendto",
        Needed::Classic,
    ),
    tp(
        Program::SysExitClose,
        "syscalls",
        "sys_exit_close",
        Needed::Classic,
    ),
    tp(
        Program::SysEnterClose,
        "syscalls",
        "sys_enter_close",
        Needed::Syscalls,
    ),
    tp(
        Program::InetSockSetState,
        "sock",
        "inet_sock_set_state",
        Needed::Always,
    ),
    tp(
        Program::TcpReceiveReset,
        "tcp",
        "tcp_receive_reset",
        Needed::Always,
    ),
    tp(
        Program::InetSkErrorReport,
        "sock",
        "inet_sk_error_report",
        Needed::Always,
    ),
];

/// (enter, exit) programs that only work together (classic path).
const DATA_PAIRS: [(Program, Program); 5] = [
    (Program::SysEnterRead, Program::SysExitRead),
    (Program::SysEnterWrite, Program::SysExitWrite),
    (Program::SysEnterRecvfrom, Program::SysExitRecvfrom),
    (Program::SysEnterSendto, Program::SysExitSendto),
    (Program::SysEnterClose, Program::SysExitClose),
];

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
}

/// Default [`SensorConfig::poll_interval`].
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(20);

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            object: None,
            capture_len: DEFAULT_CAPTURE_LEN,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            poll_interval: DEFAULT_POLL_INTERVAL,
            upstream_responses: false,
            data_hooks: DataHooks::Auto,
        }
    }
}

/// Whether one kernel hook is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookStatus {
    /// `category/event` of the tracepoint, or `raw_tracepoint/<name>`.
    pub name: String,
    pub attached: bool,
    pub error: Option<String>,
}

/// Counters of one kernel program, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramTotals {
    pub program: &'static str,
    pub emitted: u64,
    pub lost: u64,
    pub read_failures: u64,
    pub map_full: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("no eBPF object: {0}; {OBJECT_HINT}")]
    ObjectMissing(String),
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
    #[error("tracefs is not mounted and could not be mounted: {0}")]
    TracefsUnavailable(String),
    #[error("the sensor must be started from inside a tokio runtime")]
    NoRuntime,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("no kernel hook could be attached:\n{0}")]
    NothingAttached(String),
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

/// Why the hooks that read the saved user registers (socket tracepoints, raw `sys_exit`)
/// cannot be used: the classic syscall tracepoints are used instead.
#[derive(Debug, thiserror::Error)]
enum RegsUnavailable {
    #[error("classic syscall tracepoints requested by configuration")]
    Configured,
    #[error(
        "no syscall numbers for this architecture ({})",
        std::env::consts::ARCH
    )]
    Architecture,
    #[error("cannot read {VMLINUX_BTF}: {0}")]
    BtfRead(io::Error),
    #[error("{VMLINUX_BTF}: {0}")]
    Offsets(#[from] abi::AbiError),
    #[error("{0}")]
    Helpers(String),
}

/// The helpers behind BTF pointers to the current task and its registers arrived in 5.11
/// (`bpf_get_current_task_btf`) and 5.15 (`bpf_task_pt_regs`); a kernel with BTF but
/// without them must not get an object whose every program calls them.
fn btf_helpers_supported() -> Result<(), RegsUnavailable> {
    use aya::{
        programs::ProgramType,
        sys::{is_helper_supported, BpfHelper},
    };
    for program in [ProgramType::TracePoint, ProgramType::RawTracePoint] {
        for helper in [
            BpfHelper::BPF_FUNC_get_current_task_btf,
            BpfHelper::BPF_FUNC_task_pt_regs,
        ] {
            match is_helper_supported(program, helper) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(RegsUnavailable::Helpers(format!(
                        "the kernel does not offer {helper:?} to {program:?} programs"
                    )))
                }
                Err(e) => {
                    return Err(RegsUnavailable::Helpers(format!(
                        "probing {helper:?} for {program:?} programs failed: {e}"
                    )))
                }
            }
        }
    }
    Ok(())
}

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What this machine's BTF gives the programs.
struct BtfConfig {
    /// Syscall numbers and `pt_regs` offsets, for the hooks that read registers.
    regs: Result<(&'static abi::SyscallAbi, abi::RegOffsets), RegsUnavailable>,
    /// For reading the current cgroup id without a helper call.
    cgroup: Option<abi::CgroupChain>,
}

fn btf_config(hooks: DataHooks) -> BtfConfig {
    let unavailable = |e| BtfConfig {
        regs: Err(e),
        cgroup: None,
    };
    if hooks == DataHooks::Classic {
        return unavailable(RegsUnavailable::Configured);
    }
    let blob = match std::fs::read(VMLINUX_BTF) {
        Ok(blob) => blob,
        Err(e) => return unavailable(RegsUnavailable::BtfRead(e)),
    };
    let btf = match btf::Btf::parse(&blob) {
        Ok(btf) => btf,
        Err(e) => return unavailable(abi::AbiError::from(e).into()),
    };
    if let Err(e) = btf_helpers_supported() {
        return unavailable(e);
    }
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
    BtfConfig { regs, cgroup }
}

/// A loaded and attached sensor. Dropping it stops the reader and detaches every hook.
pub struct Sensor {
    ebpf: Ebpf,
    hooks: Vec<HookStatus>,
    path: DataPath,
    watched: BTreeSet<u64>,
    watched_capacity: u32,
    reader: JoinHandle<()>,
    decode_errors: Arc<AtomicU64>,
    tls: gotls::TlsProbes,
}

impl Sensor {
    /// Loads, attaches every hook it can (a hook that fails is logged with tracing and
    /// reported in hooks(), others continue; Err only if nothing useful can run), and
    /// spawns a tokio task that reads the ring buffer, decodes records and sends them on
    /// `events` in batches of at most [`BATCH`] (awaiting send: back-pressure ends up as
    /// counted kernel `lost` events). Must be called inside a tokio runtime.
    pub fn start(cfg: &SensorConfig, events: Sender<Vec<Event>>) -> Result<Sensor, SensorError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| SensorError::NoRuntime)?;
        check_privileges()?;
        raise_memlock_limit();
        let object = object_bytes(cfg.object.as_deref())?;
        let tracefs = tracefs::ensure_tracefs()
            .map_err(|e| SensorError::TracefsUnavailable(e.to_string()))?;
        let layout = tracefs::layout(
            |category, event| {
                std::fs::read_to_string(
                    tracefs
                        .join("events")
                        .join(category)
                        .join(event)
                        .join("format"),
                )
            },
            cfg.capture_len,
        );
        let ring_bytes = ring_buffer_size(cfg.ring_buffer_bytes);
        let mut config = layout.config;
        let BtfConfig { regs, cgroup } = btf_config(cfg.data_hooks);
        if let Some(chain) = cgroup {
            config.cgroup = chain;
            config.flags |= config_flags::CGROUP_BTF;
        }
        if let Ok((abi, regs)) = &regs {
            config.regs = *regs;
            config.numbers = abi.numbers;
            config.flags |= config_flags::REGS;
        }
        if cfg.upstream_responses {
            config.flags |= config_flags::UPSTREAM_RESPONSES;
        }
        // The reader drains on its timer; the kernel only wakes it for a backlog.
        if !cfg.poll_interval.is_zero() {
            config.wakeup_bytes = ring_bytes / 8;
        }
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_CONFIG, &config, true)
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .load(&object)
            .map_err(|e| SensorError::Load(Box::new(e)))?;
        drop(object);

        let (hooks, path) = attach_all(&mut ebpf, &layout, cfg.data_hooks, regs.map(|_| ()));
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

        let watched_capacity = match ebpf.map(MAP_WATCHED) {
            Some(aya::maps::Map::HashMap(data)) => {
                data.info().map_err(map_err(MAP_WATCHED))?.max_entries()
            }
            _ => return Err(SensorError::MapMissing { name: MAP_WATCHED }),
        };

        let ring = ebpf
            .take_map(MAP_EVENTS)
            .ok_or(SensorError::MapMissing { name: MAP_EVENTS })?;
        let ring = RingBuf::try_from(ring).map_err(map_err(MAP_EVENTS))?;
        let ring = {
            let _enter = runtime.enter();
            // SAFETY: the RingBuf owns its map fd and always reports that same fd; it is
            // only closed when the AsyncFd (which owns the RingBuf) is dropped.
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| SensorError::Reader(io::Error::from(e)))?
        };
        let decode_errors = Arc::new(AtomicU64::new(0));
        let reader = runtime.spawn(read_ring(
            ring,
            events,
            Arc::clone(&decode_errors),
            cfg.poll_interval,
        ));
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
            watched: BTreeSet::new(),
            watched_capacity,
            reader,
            decode_errors,
            tls: gotls::TlsProbes::default(),
        })
    }

    /// Every hook of the data path in use and the TCP hooks, attached or not, plus the
    /// data hooks of better paths that were tried and not attached (with the reason the
    /// sensor fell back).
    pub fn hooks(&self) -> &[HookStatus] {
        &self.hooks
    }

    /// Which hooks capture data.
    pub fn data_path(&self) -> DataPath {
        self.path
    }

    /// Makes the kernel watch exactly these cgroup ids (applies the diff to
    /// WATCHED_CGROUPS).
    pub fn set_watched_cgroups(&mut self, ids: &[u64]) -> Result<(), SensorError> {
        let wanted: BTreeSet<u64> = ids.iter().copied().collect();
        if wanted.len() > self.watched_capacity as usize {
            return Err(SensorError::TooManyCgroups {
                requested: wanted.len(),
                capacity: self.watched_capacity,
            });
        }
        let map = self
            .ebpf
            .map_mut(MAP_WATCHED)
            .ok_or(SensorError::MapMissing { name: MAP_WATCHED })?;
        let mut map = HashMap::<_, u64, u32>::try_from(map).map_err(map_err(MAP_WATCHED))?;
        let stale: Vec<u64> = self.watched.difference(&wanted).copied().collect();
        for id in stale {
            match map.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(MAP_WATCHED)(e)),
            }
            self.watched.remove(&id);
        }
        let new: Vec<u64> = wanted.difference(&self.watched).copied().collect();
        for id in new {
            map.insert(id, 1, 0).map_err(map_err(MAP_WATCHED))?;
            self.watched.insert(id);
        }
        // The kernel scans this first; written after the hash so that it never points
        // the kernel at a hash missing an id.
        let mut set = WatchedSet {
            ids: [0; WATCHED_FAST],
            count: u32::MAX,
            _pad: 0,
        };
        if self.watched.len() <= WATCHED_FAST {
            for (slot, id) in set.ids.iter_mut().zip(&self.watched) {
                *slot = *id;
            }
            set.count = self.watched.len() as u32;
        }
        let array = self
            .ebpf
            .map_mut(MAP_WATCHED_SET)
            .ok_or(SensorError::MapMissing {
                name: MAP_WATCHED_SET,
            })?;
        let mut array =
            aya::maps::Array::<_, WatchedSet>::try_from(array).map_err(map_err(MAP_WATCHED_SET))?;
        array.set(0, set, 0).map_err(map_err(MAP_WATCHED_SET))?;
        tracing::debug!(cgroups = self.watched.len(), "watched cgroups updated");
        Ok(())
    }

    /// Puts the Go `crypto/tls` uprobes on the executables of these processes (one
    /// resolution and attachment per distinct binary) and takes them off binaries none of
    /// them runs any more. Failures are reported per binary, never fatal: the socket
    /// hooks keep capturing plaintext.
    pub fn set_tls_processes(&mut self, pids: &[u32]) -> Vec<gotls::TlsBinaryStatus> {
        self.tls.sync(&mut self.ebpf, pids)
    }

    /// Run counts and run times of the TLS uprobes (for measuring their cost).
    pub fn tls_run_stats(&mut self) -> Vec<gotls::RunStats> {
        gotls::run_stats(&mut self.ebpf)
    }

    /// Per-program counters summed over CPUs.
    pub fn totals(&self) -> Result<Vec<ProgramTotals>, SensorError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(SensorError::MapMissing { name: MAP_COUNTERS })?;
        let counters =
            PerCpuArray::<_, ProgramCounters>::try_from(map).map_err(map_err(MAP_COUNTERS))?;
        let mut out = Vec::with_capacity(Program::COUNT as usize);
        for p in Program::ALL {
            let per_cpu = counters
                .get(&(p as u32), 0)
                .map_err(map_err(MAP_COUNTERS))?;
            let mut t = ProgramTotals {
                program: p.name(),
                emitted: 0,
                lost: 0,
                read_failures: 0,
                map_full: 0,
            };
            for c in per_cpu.iter() {
                t.emitted += c.emitted;
                t.lost += c.lost;
                t.read_failures += c.read_failures;
                t.map_full += c.map_full;
            }
            out.push(t);
        }
        Ok(out)
    }

    /// Per loaded program (named without the object's `rs_` prefix), the runs the kernel
    /// skipped because another BPF program was running on the CPU (their events are
    /// lost). Programs whose counters cannot be read are left out.
    pub fn program_misses(&self) -> Vec<(String, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let fd = p.fd().ok()?;
                let misses = prog_info::recursion_misses(fd.as_fd()).ok()?;
                Some((name.strip_prefix("rs_").unwrap_or(name).to_string(), misses))
            })
            .collect()
    }

    /// Records the reader could not decode (counted, never fatal).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        // The reader owns the ring buffer; the programs and their links go with `ebpf`.
        self.reader.abort();
    }
}

/// Makes the kernel count every BPF program's runs and run time until the returned fd is
/// closed (`kernel.bpf_stats_enabled` for the caller's lifetime); for measurements.
pub fn enable_run_stats() -> Result<std::os::fd::OwnedFd, io::Error> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| io::Error::other(e.to_string()))
}

fn object_bytes(path: Option<&Path>) -> Result<Cow<'static, [u8]>, SensorError> {
    match (path, EMBEDDED_OBJECT) {
        (Some(path), _) => match std::fs::read(path) {
            Ok(bytes) => Ok(Cow::Owned(bytes)),
            Err(source) if source.kind() == io::ErrorKind::NotFound => Err(
                SensorError::ObjectMissing(format!("{} does not exist", path.display())),
            ),
            Err(source) => Err(SensorError::ObjectRead {
                path: path.to_owned(),
                source,
            }),
        },
        (None, Some(embedded)) => Ok(Cow::Borrowed(embedded)),
        (None, None) => Err(SensorError::ObjectMissing(
            "none was embedded at build time (target/ebpf/routeskew-probes.o did not exist) and no path was given".into(),
        )),
    }
}

/// Power of two, at least one page: what the kernel accepts for a ring buffer.
fn ring_buffer_size(requested: u32) -> u32 {
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let requested = if requested == 0 {
        DEFAULT_RING_BUFFER_BYTES
    } else {
        requested
    };
    requested
        .max(page)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn check_privileges() -> Result<(), SensorError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let capeff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("unknown")
        .to_owned();
    let Ok(caps) = u64::from_str_radix(&capeff, 16) else {
        // Cannot tell (no procfs?): let the kernel decide and report its error.
        return Ok(());
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(SensorError::NotPrivileged { capeff })
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

/// Keeps the end of a verifier log: the reason for a rejection is in the last lines.
fn describe_program_error(e: &ProgramError) -> String {
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
struct Attached {
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
fn attach_all(
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

async fn read_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    events: Sender<Vec<Event>>,
    decode_errors: Arc<AtomicU64>,
    poll_interval: Duration,
) {
    // The kernel submits records without waking the reader until a backlog builds up, so
    // a timer drains what arrived in between. Without a timer, readiness alone drives it
    // (the kernel then wakes the reader for every record).
    let mut timer = (!poll_interval.is_zero()).then(|| {
        let mut t = tokio::time::interval(poll_interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut decoder = decode::Decoder::default();
    loop {
        let woken = tokio::select! {
            guard = ring.readable_mut() => Some(guard),
            _ = async {
                match timer.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        match woken {
            Some(Ok(mut guard)) => {
                if !drain(guard.get_inner_mut(), &mut decoder, &events, &decode_errors).await {
                    return;
                }
                guard.clear_ready();
            }
            Some(Err(error)) => {
                tracing::error!(%error, "ring buffer poll failed; sensor reader stops");
                return;
            }
            None => {
                if !drain(ring.get_mut(), &mut decoder, &events, &decode_errors).await {
                    return;
                }
            }
        }
    }
}

/// Events the reader sends to the pipeline at once, at most.
pub const BATCH: usize = 1024;

/// Decodes and forwards every record waiting in the ring, in batches. False once the
/// receiver is gone.
async fn drain(
    ring: &mut RingBuf<MapData>,
    decoder: &mut decode::Decoder,
    events: &Sender<Vec<Event>>,
    decode_errors: &AtomicU64,
) -> bool {
    loop {
        // Allocates only once a record arrives. Records borrow the ring; a batch is
        // decoded (copied) before the send is awaited.
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let Some(record) = ring.next() else { break };
            match decoder.decode(&record) {
                Ok(event) => batch.push(event),
                Err(error) => {
                    decode_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "undecodable ring buffer record");
                }
            }
        }
        let more = batch.len() == BATCH;
        if !batch.is_empty() && events.send(batch).await.is_err() {
            tracing::debug!("event receiver dropped; sensor reader stops");
            return false;
        }
        if !more {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_cover_every_program_once() {
        let mut seen: Vec<u32> = HOOKS.iter().map(|h| h.index as u32).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..Program::TRACEPOINTS).collect::<Vec<_>>());
        for h in &HOOKS {
            let event = match h.attach {
                Attach::Tracepoint { event, .. } => event,
                Attach::Raw { tracepoint } => tracepoint,
            };
            assert_eq!(event, h.index.name());
        }
        // Each exit is attached before its enter.
        for (enter, exit) in DATA_PAIRS {
            let pos = |i| HOOKS.iter().position(|h| h.index == i);
            assert!(pos(exit) < pos(enter));
        }
        // The data paths come first, best first.
        let needed: Vec<Needed> = HOOKS.iter().map(|h| h.needed).take(3).collect();
        assert_eq!(needed, [Needed::Sock, Needed::Sock, Needed::Raw]);
        for path in [
            DataPath::SockTracepoints,
            DataPath::RawSysExit,
            DataPath::Classic,
        ] {
            // Every path attaches the TCP hooks and something that captures data.
            let on: Vec<&Hook> = HOOKS.iter().filter(|h| h.wanted_on(path)).collect();
            assert!(on.iter().any(|h| h.index == Program::InetSockSetState));
            assert!(on.iter().any(|h| h.needed != Needed::Always));
        }
    }

    #[test]
    fn classic_path_can_be_forced() {
        let c = btf_config(DataHooks::Classic);
        assert!(matches!(c.regs, Err(RegsUnavailable::Configured)));
        assert!(c.cgroup.is_none());
    }

    #[test]
    fn sensor_can_move_between_tasks() {
        fn assert_send<T: Send>() {}
        assert_send::<Sensor>();
    }

    #[test]
    fn ring_buffer_sizes() {
        assert_eq!(ring_buffer_size(0), DEFAULT_RING_BUFFER_BYTES);
        assert_eq!(ring_buffer_size(1), 4096);
        assert_eq!(ring_buffer_size(5 << 20), 8 << 20);
        assert_eq!(ring_buffer_size(1 << 20), 1 << 20);
    }

    #[test]
    fn missing_object_says_how_to_get_one() {
        let err = object_bytes(Some(Path::new("/nonexistent/routeskew-probes.o")))
            .expect_err("missing file");
        let msg = err.to_string();
        assert!(msg.contains("cargo xtask build-ebpf"), "{msg}");
        assert!(msg.contains("/nonexistent/routeskew-probes.o"), "{msg}");
    }

    #[test]
    fn start_outside_runtime_is_an_error() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        assert!(matches!(
            Sensor::start(&SensorConfig::default(), tx),
            Err(SensorError::NoRuntime)
        ));
    }
}
