//! The harness every kernel test runs on: a temporary cgroup v2 directory, the sensor
//! watching it ([`Bench`]), and this test binary re-executed inside it as the helper
//! process that makes the traffic.

use std::{
    collections::HashMap,
    ffi::CString,
    io::Read,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use routeskew::{
    event::{Event, EventKind, Origin},
    sensor::{Sensor, SensorConfig},
};
use tokio::sync::mpsc;

use crate::data_paths::{check_hooks, Capture};
use crate::events::Ids;
use crate::helper::{HELPER_ENV, HELPER_TEST};

pub(crate) fn object_path() -> PathBuf {
    match std::env::var_os("ROUTESKEW_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target/ebpf/routeskew-probes.o"),
    }
}

/// `RUST_LOG=routeskew=info` shows the sensor's log (hooks, verified instruction counts).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub(crate) fn preflight() -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("kernel tests need root (they load eBPF programs and create cgroups); run them with sudo");
    }
    let object = object_path();
    ensure!(
        object.is_file(),
        "eBPF object {} not found: run `cargo xtask build-ebpf` or set ROUTESKEW_EBPF_OBJECT",
        object.display()
    );
    Ok(object)
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (`/sys/fs/cgroup` on pure v2
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones).
fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(mount_point) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mount_point));
            }
        }
    }
    bail!("no cgroup2 mount in /proc/self/mountinfo")
}

/// A temporary cgroup v2 directory, removed (after killing anything left in it) on drop.
pub(crate) struct TestCgroup {
    pub(crate) path: PathBuf,
    pub(crate) id: u64,
}

impl TestCgroup {
    fn new(tag: &str) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "routeskew-kt-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = cgroup2_root()?.join(name);
        std::fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        // The cgroup id bpf_get_current_cgroup_id() returns is the directory's inode.
        let id = std::fs::metadata(&path)?.ino();
        Ok(TestCgroup { path, id })
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove test cgroup {}", self.path.display());
    }
}

/// Kills and reaps a child however the test ends.
pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    InCgroup,
    Outside,
}

/// What a helper run reported.
pub(crate) struct HelperRun {
    pub(crate) pid: u32,
    results: HashMap<String, String>,
}

impl HelperRun {
    pub(crate) fn get<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        self.results
            .get(key)
            .ok_or_else(|| anyhow!("helper did not report {key}: {:?}", self.results))?
            .parse()
            .map_err(|_| anyhow!("helper reported an unparsable {key}"))
    }
}

/// The sensor watching one fresh cgroup. Field order is drop order: the sensor (and its
/// hooks) go first, the cgroup last.
pub(crate) struct Bench {
    pub(crate) sensor: Sensor,
    pub(crate) rx: mpsc::Receiver<Vec<Event>>,
    pub(crate) cgroup: TestCgroup,
}

/// What [`Bench::exchange`] saw: the helper's origin, its client and server fds, and the
/// events reported.
pub(crate) struct Exchange {
    pub(crate) o: Origin,
    pub(crate) c: u32,
    pub(crate) s: u32,
    pub(crate) got: Vec<(Origin, EventKind)>,
}

impl Exchange {
    pub(crate) fn ids(&self) -> Ids {
        Ids {
            origin: self.o,
            client: self.c,
            server: self.s,
        }
    }
}

impl Bench {
    /// Puts the TLS uprobes on these processes' binaries and waits for their
    /// resolution, which runs off the caller's thread.
    pub(crate) fn set_tls_processes(
        &mut self,
        pids: &[u32],
    ) -> Result<Vec<routeskew::sensor::gotls::TlsBinaryStatus>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.sensor.set_tls_processes(pids);
            if self.sensor.pending_pids().is_empty() {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "resolution of {pids:?} never ended"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The default sensor: socket tracepoints, upstream responses not reported.
    pub(crate) async fn new(tag: &str) -> Result<Self> {
        Self::with(tag, Capture::Sock, false).await
    }

    /// The sensor on `path`, also reporting responses a watched process reads when
    /// `upstream_responses`.
    pub(crate) async fn with(tag: &str, path: Capture, upstream_responses: bool) -> Result<Self> {
        let object = preflight()?;
        Self::start(
            tag,
            SensorConfig {
                object: Some(object),
                upstream_responses,
                data_hooks: path.hooks(),
                ..SensorConfig::default()
            },
        )
        .await
    }

    /// Starts `cfg` (which must use the object under test) and checks that the requested
    /// path is the one running, with every hook of that path attached.
    pub(crate) async fn start(tag: &str, cfg: SensorConfig) -> Result<Self> {
        init_tracing();
        let cgroup = TestCgroup::new(tag)?;
        let (tx, rx) = mpsc::channel(4096);
        let mut sensor = Sensor::start(&cfg, tx).context("starting the sensor")?;
        check_hooks(&sensor, Capture::requested(cfg.data_hooks))?;
        sensor.set_watched_cgroups(&[cgroup.id])?;
        Ok(Bench { sensor, rx, cgroup })
    }

    /// Runs a helper scenario in the watched cgroup that reports the client and server
    /// fds of its connection, and drains what the sensor reported about it.
    pub(crate) async fn exchange(&mut self, scenario: &str, own_netns: bool) -> Result<Exchange> {
        let run = self.run_helper(scenario, Placement::InCgroup, own_netns)?;
        Ok(Exchange {
            o: self.origin(run.pid),
            c: run.get("client_fd")?,
            s: run.get("server_fd")?,
            got: self.drain().await,
        })
    }

    /// Runs of the loaded programs the kernel skipped so far, summed.
    pub(crate) fn misses(&self) -> u64 {
        self.sensor.program_misses().iter().map(|(_, m)| m).sum()
    }

    pub(crate) fn origin(&self, pid: u32) -> Origin {
        Origin {
            tgid: pid,
            cgroup_id: self.cgroup.id,
        }
    }

    /// Runs this test binary in helper mode for `scenario` and waits for it.
    pub(crate) fn run_helper(
        &self,
        scenario: &str,
        placement: Placement,
        own_netns: bool,
    ) -> Result<HelperRun> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            HELPER_TEST,
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(HELPER_ENV, scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let procs = CString::new(
            self.cgroup
                .path
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )?;
        let join_cgroup = placement == Placement::InCgroup;
        // SAFETY: the closure runs between fork and exec and only makes raw syscalls on
        // memory prepared before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || {
                if join_cgroup {
                    routeskew_testbed::process::join_cgroup(&procs)?;
                }
                if own_netns && libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = ChildGuard(cmd.spawn().context("spawning the helper")?);
        let pid = child.0.id();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.0.try_wait()?.is_none() {
            ensure!(
                Instant::now() < deadline,
                "helper {scenario} did not finish in 60 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut stdout = String::new();
        let mut stderr = String::new();
        if let Some(mut s) = child.0.stdout.take() {
            s.read_to_string(&mut stdout)?;
        }
        if let Some(mut s) = child.0.stderr.take() {
            s.read_to_string(&mut stderr)?;
        }
        let status = child.0.wait()?;
        ensure!(
            status.success() && stdout.contains("RESULT ok=1"),
            "helper {scenario} failed ({status}):\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        let mut results = HashMap::new();
        for line in stdout.lines().filter_map(|l| l.strip_prefix("RESULT ")) {
            for kv in line.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    results.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        Ok(HelperRun { pid, results })
    }

    /// Everything the sensor delivers until it has been quiet for a while.
    pub(crate) async fn drain(&mut self) -> Vec<(Origin, EventKind)> {
        let mut out = Vec::new();
        let hard_stop = Instant::now() + Duration::from_secs(10);
        while Instant::now() < hard_stop {
            match tokio::time::timeout(Duration::from_millis(500), self.rx.recv()).await {
                Ok(Some(batch)) => out.extend(batch.into_iter().map(|ev| (ev.origin, ev.kind))),
                Ok(None) | Err(_) => break,
            }
        }
        out
    }
}
