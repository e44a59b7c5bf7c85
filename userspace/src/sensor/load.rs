//! Loading the kernel object: the privileges it needs, the object itself (embedded at
//! build time or read from a path), and the kernel [`Config`] filled in before load from
//! this kernel's tracepoint formats ([`tracefs`]) and BTF ([`vmlinux`]).

use std::{borrow::Cow, io, path::Path};

use aya::{Ebpf, EbpfLoader};
use routeskew_common::{config_flags, Config};

use super::{
    names::{GLOBAL_CONFIG, MAP_EVENTS},
    tracefs,
    vmlinux::{self, BtfConfig, RegsUnavailable},
    SensorConfig, SensorError, DEFAULT_RING_BUFFER_BYTES,
};

// The object `cargo xtask build-ebpf` had produced when this crate was built, if any.
#[cfg(routeskew_embedded_ebpf)]
pub(super) static EMBEDDED_OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/routeskew-probes.o"
)));
#[cfg(not(routeskew_embedded_ebpf))]
pub(super) static EMBEDDED_OBJECT: Option<&[u8]> = None;

/// A loaded object, its programs not attached yet, and what attaching them needs.
pub(super) struct Loaded {
    pub(super) ebpf: Ebpf,
    /// Which tracepoint programs this kernel's record layouts allow.
    pub(super) layout: tracefs::Layout,
    /// Whether the programs that read the saved user registers can run.
    pub(super) regs: Result<(), RegsUnavailable>,
    /// The configuration the programs were loaded with.
    pub(super) config: Config,
    /// The ring buffer's size as created.
    pub(super) ring_bytes: u32,
}

/// Checks privileges, reads the object and loads it with this kernel's configuration.
pub(super) fn load(cfg: &SensorConfig) -> Result<Loaded, SensorError> {
    check_privileges()?;
    raise_memlock_limit();
    let object = object_bytes(cfg.object.as_deref())?;
    let tracefs =
        tracefs::ensure_tracefs().map_err(|source| SensorError::TracefsUnavailable { source })?;
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
    let btf = vmlinux::btf_config(cfg.data_hooks);
    let config = kernel_config(layout.config, &btf, cfg, ring_bytes);
    let ebpf = EbpfLoader::new()
        .override_global(GLOBAL_CONFIG, &config, true)
        .map_max_entries(MAP_EVENTS, ring_bytes)
        .load(&object)
        .map_err(|e| SensorError::Load(Box::new(e)))?;
    drop(object);
    Ok(Loaded {
        ebpf,
        layout,
        regs: btf.regs.map(|_| ()),
        config,
        ring_bytes,
    })
}

/// The tracepoint offsets of `layout`, completed with what the BTF offers and the
/// sensor's settings.
fn kernel_config(layout: Config, btf: &BtfConfig, cfg: &SensorConfig, ring_bytes: u32) -> Config {
    let mut config = layout;
    if let Some(chain) = btf.cgroup {
        config.cgroup = chain;
        config.flags |= config_flags::CGROUP_BTF;
    }
    if let Some(offset) = btf.sock_err {
        config.sock_err = offset;
        config.flags |= config_flags::SK_ERR_BTF;
    }
    if let Ok((abi, regs)) = &btf.regs {
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
    config
}

fn object_bytes(path: Option<&Path>) -> Result<Cow<'static, [u8]>, SensorError> {
    match (path, EMBEDDED_OBJECT) {
        (Some(path), _) => match std::fs::read(path) {
            Ok(bytes) => Ok(Cow::Owned(bytes)),
            Err(source) if source.kind() == io::ErrorKind::NotFound => {
                Err(SensorError::ObjectMissing {
                    path: path.to_owned(),
                })
            }
            Err(source) => Err(SensorError::ObjectRead {
                path: path.to_owned(),
                source,
            }),
        },
        (None, Some(embedded)) => Ok(Cow::Borrowed(embedded)),
        (None, None) => Err(SensorError::NoObject),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
