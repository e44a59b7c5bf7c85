//! Kernel tests: the real eBPF object loaded into the running kernel, real syscalls from a
//! process in a temporary cgroup v2 directory, and the exact events the sensor reports.
//!
//! Needs root and the object built by `cargo xtask build-ebpf` (or `ROUTESKEW_EBPF_OBJECT`).
//! Run with `cargo test -p routeskew-testbed --test kernel`.
//!
//! The traffic comes from this same test binary re-executed in a helper mode (see
//! [`helper`]): the child moves itself into the cgroup before exec, so every syscall of the
//! helper is inside it and the test knows its pid and fds.
//!
//! - [`harness`]: the temporary cgroup, the sensor watching it ([`harness::Bench`]) and
//!   the helper runs;
//! - [`data_paths`]: the three data paths and the hooks each must attach;
//! - [`events`]: the messages the helpers exchange and the events expected of them;
//! - [`cases`]: the table of (data path × helper scenario × expected events) rows, one
//!   test each;
//! - [`sensor`]: tests of the sensor's own behaviour (filter, wakeups, capture length,
//!   failures, kernel objects);
//! - [`tls`], [`traefik_tls`]: the Go `crypto/tls` uprobes on a Go server and on the real
//!   Traefik release binary.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

mod cases;
mod data_paths;
mod events;
mod harness;
mod helper;
mod sensor;
mod tls;
mod traefik_tls;

/// The sensor is global kernel state and the machine has two cores: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
