//! The kernel sensor: loads the routeskew eBPF object, attaches its tracepoints, keeps the
//! watched-cgroup filter in sync and turns ring-buffer records into [`Event`]s.
//!
//! This is the only module that imports aya.

pub mod decode;
pub mod tracefs;

use std::{
    borrow::Cow,
    collections::BTreeSet,
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, TracePoint},
    Ebpf, EbpfLoader,
};
use routeskew_common::{program, ProgramCounters, DEFAULT_CAPTURE_LEN};
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

const MAP_EVENTS: &str = "EVENTS";
const MAP_WATCHED: &str = "WATCHED_CGROUPS";
const MAP_COUNTERS: &str = "COUNTERS";
const GLOBAL_CONFIG: &str = "CONFIG";

// The object `cargo xtask build-ebpf` had produced when this crate was built, if any.
#[cfg(routeskew_embedded_ebpf)]
static EMBEDDED_OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/routeskew-probes.o"
)));
#[cfg(not(routeskew_embedded_ebpf))]
static EMBEDDED_OBJECT: Option<&[u8]> = None;

/// A kernel program and the tracepoint it attaches to.
struct Hook {
    /// Function name in the object.
    program: &'static str,
    /// Slot in `routeskew_common::program`.
    index: u32,
    category: &'static str,
    event: &'static str,
}

const fn hook(
    program: &'static str,
    index: u32,
    category: &'static str,
    event: &'static str,
) -> Hook {
    Hook {
        program,
        index,
        category,
        event,
    }
}

/// Attach order: each exit before its enter, so an enter never fills the pending map
/// without the exit that drains it.
const HOOKS: [Hook; program::COUNT as usize] = [
    hook(
        "rs_exit_read",
        program::SYS_EXIT_READ,
        "syscalls",
        "sys_exit_read",
    ),
    hook(
        "rs_enter_read",
        program::SYS_ENTER_READ,
        "syscalls",
        "sys_enter_read",
    ),
    hook(
        "rs_exit_write",
        program::SYS_EXIT_WRITE,
        "syscalls",
        "sys_exit_write",
    ),
    hook(
        "rs_enter_write",
        program::SYS_ENTER_WRITE,
        "syscalls",
        "sys_enter_write",
    ),
    hook(
        "rs_exit_recvfrom",
        program::SYS_EXIT_RECVFROM,
        "syscalls",
        "sys_exit_recvfrom",
    ),
    hook(
        "rs_enter_recvfrom",
        program::SYS_ENTER_RECVFROM,
        "syscalls",
        "sys_enter_recvfrom",
    ),
    hook(
        "rs_exit_sendto",
        program::SYS_EXIT_SENDTO,
        "syscalls",
        "sys_exit_sendto",
    ),
    hook(
        "rs_enter_sendto",
        program::SYS_ENTER_SENDTO,
        "syscalls",
        "sys_enter_sendto",
    ),
    hook(
        "rs_enter_close",
        program::SYS_ENTER_CLOSE,
        "syscalls",
        "sys_enter_close",
    ),
    hook(
        "rs_inet_sock_set_state",
        program::INET_SOCK_SET_STATE,
        "sock",
        "inet_sock_set_state",
    ),
    hook(
        "rs_tcp_receive_reset",
        program::TCP_RECEIVE_RESET,
        "tcp",
        "tcp_receive_reset",
    ),
    hook(
        "rs_inet_sk_error_report",
        program::INET_SK_ERROR_REPORT,
        "sock",
        "inet_sk_error_report",
    ),
];

/// (enter, exit) programs that only capture together.
const DATA_PAIRS: [(u32, u32); 4] = [
    (program::SYS_ENTER_READ, program::SYS_EXIT_READ),
    (program::SYS_ENTER_WRITE, program::SYS_EXIT_WRITE),
    (program::SYS_ENTER_RECVFROM, program::SYS_EXIT_RECVFROM),
    (program::SYS_ENTER_SENDTO, program::SYS_EXIT_SENDTO),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorConfig {
    /// eBPF object to load; `None` uses the one embedded at build time.
    pub object: Option<PathBuf>,
    /// Leading bytes copied per read/write (clamped to 1..=DATA_CAP).
    pub capture_len: u32,
    /// Ring buffer size in bytes (rounded up to a power of two of at least a page).
    pub ring_buffer_bytes: u32,
}

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            object: None,
            capture_len: DEFAULT_CAPTURE_LEN,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
        }
    }
}

/// Whether one kernel hook is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookStatus {
    /// `category/event` of the tracepoint.
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

/// A loaded and attached sensor. Dropping it stops the reader and detaches every hook.
pub struct Sensor {
    ebpf: Ebpf,
    hooks: Vec<HookStatus>,
    watched: BTreeSet<u64>,
    watched_capacity: u32,
    reader: JoinHandle<()>,
    decode_errors: Arc<AtomicU64>,
}

impl Sensor {
    /// Loads, attaches every hook it can (a hook that fails is logged with tracing and
    /// reported in hooks(), others continue; Err only if nothing useful can run), and
    /// spawns a tokio task that reads the ring buffer, decodes records and sends them on
    /// `events` (awaiting send: back-pressure ends up as counted kernel `lost` events).
    /// Must be called inside a tokio runtime.
    pub fn start(cfg: &SensorConfig, events: Sender<Event>) -> Result<Sensor, SensorError> {
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
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_CONFIG, &layout.config, true)
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .load(&object)
            .map_err(|e| SensorError::Load(Box::new(e)))?;
        drop(object);

        let hooks = attach_all(&mut ebpf, &layout);
        let attached = |i: u32| hooks[i as usize].attached;
        let capturing = DATA_PAIRS.iter().any(|&(e, x)| attached(e) && attached(x));
        if !capturing && !attached(program::INET_SOCK_SET_STATE) {
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
        let reader = runtime.spawn(read_ring(ring, events, Arc::clone(&decode_errors)));
        tracing::info!(
            attached = hooks.iter().filter(|h| h.attached).count(),
            failed = hooks.iter().filter(|h| !h.attached).count(),
            ring_buffer_bytes = ring_bytes,
            capture_len = layout.config.capture_len,
            "sensor started"
        );
        Ok(Sensor {
            ebpf,
            hooks,
            watched: BTreeSet::new(),
            watched_capacity,
            reader,
            decode_errors,
        })
    }

    /// Every hook in program order, attached or not.
    pub fn hooks(&self) -> &[HookStatus] {
        &self.hooks
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
        tracing::debug!(cgroups = self.watched.len(), "watched cgroups updated");
        Ok(())
    }

    /// Per-program counters summed over CPUs.
    pub fn totals(&self) -> Result<Vec<ProgramTotals>, SensorError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(SensorError::MapMissing { name: MAP_COUNTERS })?;
        let counters =
            PerCpuArray::<_, ProgramCounters>::try_from(map).map_err(map_err(MAP_COUNTERS))?;
        let mut out = Vec::with_capacity(program::COUNT as usize);
        for (index, name) in program::NAMES.iter().enumerate() {
            let per_cpu = counters
                .get(&(index as u32), 0)
                .map_err(map_err(MAP_COUNTERS))?;
            let mut t = ProgramTotals {
                program: name,
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
    let tp: &mut TracePoint = program
        .try_into()
        .map_err(|e: ProgramError| format!("program {} is not a tracepoint: {e}", hook.program))?;
    tp.load().map_err(|e| describe_program_error(&e))?;
    let insns = tp.info().ok().and_then(|i| i.verified_instruction_count());
    tp.attach(hook.category, hook.event)
        .map_err(|e| format!("attach failed: {e}"))?;
    Ok(insns)
}

fn attach_all(ebpf: &mut Ebpf, layout: &tracefs::Layout) -> Vec<HookStatus> {
    let mut status: Vec<HookStatus> = (0..program::COUNT as usize)
        .map(|i| HookStatus {
            name: String::new(),
            attached: false,
            error: Some(format!("{} not attempted", program::NAMES[i])),
        })
        .collect();
    for hook in &HOOKS {
        let name = format!("{}/{}", hook.category, hook.event);
        let partner_failed = DATA_PAIRS
            .iter()
            .find(|&&(enter, _)| enter == hook.index)
            .filter(|&&(_, exit)| !status[exit as usize].attached)
            .map(|&(_, exit)| {
                format!("skipped: {} is not attached", program::NAMES[exit as usize])
            });
        let result = match (layout.unusable(hook.index), partner_failed) {
            (Some(why), _) => Err(format!("tracepoint layout unusable: {why}")),
            (None, Some(why)) => Err(why),
            (None, None) => attach_one(ebpf, hook),
        };
        let entry = &mut status[hook.index as usize];
        entry.name = name;
        match result {
            Ok(insns) => {
                tracing::info!(hook = %entry.name, verified_insns = insns, "hook attached");
                entry.attached = true;
                entry.error = None;
            }
            Err(error) => {
                tracing::warn!(hook = %entry.name, %error, "hook not attached");
                entry.error = Some(error);
            }
        }
    }
    status
}

async fn read_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    events: Sender<Event>,
    decode_errors: Arc<AtomicU64>,
) {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!(%error, "ring buffer poll failed; sensor reader stops");
                return;
            }
        };
        loop {
            // The record borrows the ring; decode (which copies) before awaiting the send.
            let decoded = match guard.get_inner_mut().next() {
                Some(record) => decode::decode(&record),
                None => break,
            };
            match decoded {
                Ok(event) => {
                    if events.send(event).await.is_err() {
                        tracing::debug!("event receiver dropped; sensor reader stops");
                        return;
                    }
                }
                Err(error) => {
                    decode_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "undecodable ring buffer record");
                }
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_cover_every_program_once() {
        let mut seen: Vec<u32> = HOOKS.iter().map(|h| h.index).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..program::COUNT).collect::<Vec<_>>());
        for h in &HOOKS {
            assert_eq!(h.event, program::NAMES[h.index as usize]);
        }
        // Each exit is attached before its enter.
        for (enter, exit) in DATA_PAIRS {
            let pos = |i| HOOKS.iter().position(|h| h.index == i);
            assert!(pos(exit) < pos(enter));
        }
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
