//! Kernel tests: the real eBPF object loaded into the running kernel, real syscalls from a
//! process in a temporary cgroup v2 directory, and the exact events the sensor reports.
//!
//! Needs root and the object built by `cargo xtask build-ebpf` (or `ROUTESKEW_EBPF_OBJECT`).
//! Run with `cargo test -p routeskew-testbed --test kernel`.
//!
//! The traffic comes from this same test binary re-executed in a helper mode (see
//! [`helper_process`]): the child moves itself into the cgroup before exec, so every
//! syscall of the helper is inside it and the test knows its pid and fds.

use std::{
    collections::HashMap,
    ffi::CString,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::AsRawFd,
        unix::{fs::MetadataExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use routeskew::{
    event::{ConnId, Direction, Event, EventKind, Origin, UpstreamFailureReason},
    sensor::{DataHooks, DataPath, Sensor, SensorConfig},
};
use tokio::sync::mpsc;

/// The sensor is global kernel state and the machine has two cores: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const HELPER_ENV: &str = "ROUTESKEW_KERNEL_HELPER";
const HELPER_TEST: &str = "helper_process";

const REQUEST: &[u8] = b"GET /kernel-test HTTP/1.1\r\nHost: kernel.test\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 19\r\n\r\n404 page not found\n";
/// The next request on a keep-alive connection.
const SECOND_REQUEST: &[u8] = b"GET /second HTTP/1.1\r\nHost: kernel.test\r\n\r\n";
const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: kernel.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const UPGRADE_RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
/// Sent after the 101: starts like HTTP, so only the in-kernel upgrade mark keeps it out.
const FRAME_LIKE_REQUEST: &[u8] = b"GET /after-upgrade HTTP/1.1\r\nHost: kernel.test\r\n\r\n";
const FRAME_LIKE_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
const NOT_HTTP: [&[u8]; 5] = [
    b"hello, this is not http at all\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls client hello",
    b"GETX / HTTP/1.1\r\nHost: kernel.test\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: kernel.test\r\n\r\n",
    b"HTTP/2.0 200 OK\r\n\r\n",
];

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

fn object_path() -> PathBuf {
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

fn preflight() -> Result<PathBuf> {
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
struct TestCgroup {
    path: PathBuf,
    id: u64,
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
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Which data hooks a test runs on. This kernel (6.18, BTF) supports all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    /// The socket tracepoints (the default).
    Sock,
    /// `raw_tracepoint/sys_exit` + `syscalls/sys_enter_close` (kernels before 6.3).
    Raw,
    /// The classic `syscalls/*` fallback without any BTF use.
    Classic,
}

impl Capture {
    fn hooks(self) -> DataHooks {
        match self {
            Capture::Sock => DataHooks::Auto,
            Capture::Raw => DataHooks::RawSysExit,
            Capture::Classic => DataHooks::Classic,
        }
    }

    fn path(self) -> DataPath {
        match self {
            Capture::Sock => DataPath::SockTracepoints,
            Capture::Raw => DataPath::RawSysExit,
            Capture::Classic => DataPath::Classic,
        }
    }

    /// Data hooks of better paths, listed as not attached with the reason.
    fn skipped(self) -> &'static [&'static str] {
        match self {
            Capture::Sock => &[],
            Capture::Raw => &[SOCK_HOOKS[0], SOCK_HOOKS[1]],
            Capture::Classic => &[SOCK_HOOKS[0], SOCK_HOOKS[1], RAW_HOOK],
        }
    }
}

/// The sensor runs the path `requested` implies and every hook of that path is
/// attached; better paths' hooks are listed as not attached, with the reason.
fn check_hooks(sensor: &Sensor, requested: Capture) -> Result<()> {
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
                && h.error
                    .as_deref()
                    .is_some_and(|e| e.contains("by configuration")),
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
        enter_close == (requested != Capture::Sock),
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    InCgroup,
    Outside,
}

/// What a helper run reported.
struct HelperRun {
    pid: u32,
    results: HashMap<String, String>,
}

impl HelperRun {
    fn get<T: std::str::FromStr>(&self, key: &str) -> Result<T> {
        self.results
            .get(key)
            .ok_or_else(|| anyhow!("helper did not report {key}: {:?}", self.results))?
            .parse()
            .map_err(|_| anyhow!("helper reported an unparsable {key}"))
    }
}

/// The sensor watching one fresh cgroup. Field order is drop order: the sensor (and its
/// hooks) go first, the cgroup last.
struct Bench {
    sensor: Sensor,
    rx: mpsc::Receiver<Vec<Event>>,
    cgroup: TestCgroup,
}

/// What [`Bench::exchange`] saw: the helper's origin, its client and server fds, and the
/// events reported.
struct Exchange {
    o: Origin,
    c: u32,
    s: u32,
    got: Vec<(Origin, EventKind)>,
}

/// Hook names in `Sensor::hooks()`.
const RAW_HOOK: &str = "raw_tracepoint/sys_exit";
const SOCK_HOOKS: [&str; 2] = [
    "raw_tracepoint/sock_send_length",
    "raw_tracepoint/sock_recv_length",
];

impl Bench {
    /// The default sensor: socket tracepoints, upstream responses not reported.
    async fn new(tag: &str) -> Result<Self> {
        Self::with(tag, Capture::Sock, false).await
    }

    /// Every message both ways, as the pipeline saw them before upstream responses were
    /// left out by default.
    async fn everything(tag: &str, path: Capture) -> Result<Self> {
        Self::with(tag, path, true).await
    }

    async fn with(tag: &str, path: Capture, upstream_responses: bool) -> Result<Self> {
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
    async fn start(tag: &str, cfg: SensorConfig) -> Result<Self> {
        init_tracing();
        let cgroup = TestCgroup::new(tag)?;
        let (tx, rx) = mpsc::channel(4096);
        let mut sensor = Sensor::start(&cfg, tx).context("starting the sensor")?;
        let requested = match cfg.data_hooks {
            DataHooks::Auto => Capture::Sock,
            DataHooks::RawSysExit => Capture::Raw,
            DataHooks::Classic => Capture::Classic,
        };
        check_hooks(&sensor, requested)?;
        sensor.set_watched_cgroups(&[cgroup.id])?;
        Ok(Bench { sensor, rx, cgroup })
    }

    /// Runs a helper scenario in the watched cgroup that reports the client and server
    /// fds of its connection, and drains what the sensor reported about it.
    async fn exchange(&mut self, scenario: &str, own_netns: bool) -> Result<Exchange> {
        let run = self.run_helper(scenario, Placement::InCgroup, own_netns)?;
        Ok(Exchange {
            o: self.origin(run.pid),
            c: run.get("client_fd")?,
            s: run.get("server_fd")?,
            got: self.drain().await,
        })
    }

    /// Runs of the loaded programs the kernel skipped so far, summed.
    fn misses(&self) -> u64 {
        self.sensor.program_misses().iter().map(|(_, m)| m).sum()
    }

    fn origin(&self, pid: u32) -> Origin {
        Origin {
            tgid: pid,
            cgroup_id: self.cgroup.id,
        }
    }

    /// Runs this test binary in helper mode for `scenario` and waits for it.
    fn run_helper(
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
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0" moves the writing process itself.
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
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
    async fn drain(&mut self) -> Vec<(Origin, EventKind)> {
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

/// One test per data path (socket tracepoints, raw `sys_exit`, classic syscall
/// tracepoints), each running `scenario` on its own path.
macro_rules! on_every_data_path {
    ($scenario:ident: $sock:ident, $raw:ident, $classic:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sock() -> Result<()> {
            let _serial = SERIAL.lock().await;
            $scenario(Capture::Sock).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $raw() -> Result<()> {
            let _serial = SERIAL.lock().await;
            $scenario(Capture::Raw).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $classic() -> Result<()> {
            let _serial = SERIAL.lock().await;
            $scenario(Capture::Classic).await
        }
    };
}

fn data(fd: u32, direction: Direction, bytes: &[u8]) -> EventKind {
    EventKind::Data {
        conn: ConnId::Fd(fd),
        direction,
        total_len: bytes.len() as u64,
        bytes: bytes::Bytes::copy_from_slice(bytes),
    }
}

fn closed(fd: u32, upgraded: bool) -> EventKind {
    EventKind::Closed {
        conn: ConnId::Fd(fd),
        upgraded,
    }
}

fn show(events: &[(Origin, EventKind)]) -> String {
    events
        .iter()
        .map(|(o, k)| match k {
            EventKind::Data {
                conn,
                direction,
                total_len,
                bytes,
            } => format!(
                "  {o:?} Data {conn} {direction:?} total={total_len} {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
            ),
            other => format!("  {o:?} {other:?}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_events(got: &[(Origin, EventKind)], want: &[(Origin, EventKind)]) {
    assert!(
        got == want,
        "events differ\n got:\n{}\nwant:\n{}",
        show(got),
        show(want)
    );
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// One exchange with every message reported: client side read(2)/write(2), server side
/// std's recvfrom/sendto, then both closes.
async fn request_response_and_close(path: Capture) -> Result<()> {
    let mut bench = Bench::everything("http", path).await?;
    let Exchange { o, c, s, got } = bench.exchange("http", false).await?;
    assert_events(
        &got,
        &[
            (o, data(c, Direction::Write, REQUEST)),
            (o, data(s, Direction::Read, REQUEST)),
            (o, data(s, Direction::Write, RESPONSE)),
            (o, data(c, Direction::Read, RESPONSE)),
            (o, closed(c, false)),
            (o, closed(s, false)),
        ],
    );

    // Counters keep one slot per syscall on both paths.
    let totals = bench.sensor.totals()?;
    let emitted = |name: &str| {
        totals
            .iter()
            .find(|t| t.program == name)
            .map_or(0, |t| t.emitted)
    };
    assert_eq!(emitted("sys_exit_write"), 1);
    assert_eq!(emitted("sys_exit_read"), 1);
    assert_eq!(emitted("sys_exit_recvfrom"), 1);
    assert_eq!(emitted("sys_exit_sendto"), 1);
    // The socket path reports the end of a captured socket from inet_sock_set_state.
    let closes = match path {
        Capture::Sock => "inet_sock_set_state",
        Capture::Raw | Capture::Classic => "sys_enter_close",
    };
    assert_eq!(emitted(closes), 2);
    assert!(
        totals
            .iter()
            .all(|t| t.lost == 0 && t.map_full == 0 && t.read_failures == 0),
        "{totals:?}"
    );
    assert_eq!(bench.sensor.decode_errors(), 0);
    Ok(())
}

on_every_data_path!(
    request_response_and_close:
    captures_request_response_and_close,
    raw_sys_exit_captures_request_response_and_close,
    classic_fallback_captures_request_response_and_close
);

/// By default a response a watched process *reads* (an upstream's answer) is not
/// reported; requests both ways and responses it writes are.
async fn upstream_responses_left_out(path: Capture) -> Result<()> {
    let mut bench = Bench::with("noupresp", path, false).await?;
    let Exchange { o, c, s, got } = bench.exchange("http", false).await?;
    assert_events(
        &got,
        &[
            (o, data(c, Direction::Write, REQUEST)),
            (o, data(s, Direction::Read, REQUEST)),
            (o, data(s, Direction::Write, RESPONSE)),
            (o, closed(c, false)),
            (o, closed(s, false)),
        ],
    );
    Ok(())
}

on_every_data_path!(
    upstream_responses_left_out:
    upstream_responses_are_not_reported_by_default,
    raw_sys_exit_leaves_out_upstream_responses,
    classic_fallback_leaves_out_upstream_responses
);

/// A request read on a connection the kernel took for an upstream one (it wrote a request
/// first) is still reported, on every data path.
async fn request_read_on_upstream_connection(path: Capture) -> Result<()> {
    let mut bench = Bench::with("reqback", path, false).await?;
    let Exchange { o, c, s, got } = bench.exchange("request_back", false).await?;
    assert_events(
        &got,
        &[
            (o, data(c, Direction::Write, REQUEST)),
            (o, data(s, Direction::Read, REQUEST)),
            (o, data(s, Direction::Write, RESPONSE)),
            (o, data(s, Direction::Write, REQUEST)),
            (o, data(c, Direction::Read, REQUEST)),
            (o, closed(c, false)),
            (o, closed(s, false)),
        ],
    );
    Ok(())
}

on_every_data_path!(
    request_read_on_upstream_connection:
    request_read_on_an_upstream_connection_is_reported,
    raw_sys_exit_reports_a_request_read_on_an_upstream_connection,
    classic_fallback_reports_a_request_read_on_an_upstream_connection
);

/// Go's background read on a keep-alive connection: while a handler runs, the server
/// reads one byte; when the client's next request arrives in that window, that byte is
/// its first and the next read returns the rest (`ET /second ...`). The request is still
/// reported whole, on every data path.
async fn read_ahead_restores_the_request(path: Capture) -> Result<()> {
    let mut bench = Bench::with("readahead", path, false).await?;
    let Exchange { o, c, s, got } = bench.exchange("read_ahead", false).await?;
    assert_events(
        &got,
        &[
            (o, data(c, Direction::Write, REQUEST)),
            (o, data(s, Direction::Read, REQUEST)),
            (o, data(s, Direction::Write, RESPONSE)),
            (o, data(c, Direction::Write, SECOND_REQUEST)),
            (o, data(s, Direction::Read, SECOND_REQUEST)),
            (o, data(s, Direction::Write, RESPONSE)),
            (o, closed(c, false)),
            (o, closed(s, false)),
        ],
    );
    let totals = bench.sensor.totals()?;
    assert!(
        totals
            .iter()
            .all(|t| t.lost == 0 && t.map_full == 0 && t.read_failures == 0),
        "{totals:?}"
    );
    assert_eq!(bench.sensor.decode_errors(), 0);
    Ok(())
}

on_every_data_path!(
    read_ahead_restores_the_request:
    a_request_split_by_a_one_byte_read_is_reported_whole,
    raw_sys_exit_reports_a_request_split_by_a_one_byte_read_whole,
    classic_fallback_reports_a_request_split_by_a_one_byte_read_whole
);

/// A 1-byte read on a connection that never carried HTTP keeps nothing: the read after
/// it (`ET /kernel-test ...`) is not taken for a request. Only the control exchange on a
/// second connection is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_byte_read_on_a_fresh_connection_reports_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::everything("onebyte", Capture::Sock).await?;
    let Exchange { o, c, s, got } = bench.exchange("one_byte_fresh", false).await?;
    assert_events(
        &got,
        &[
            (o, data(c, Direction::Write, REQUEST)),
            (o, data(s, Direction::Read, REQUEST)),
            (o, data(s, Direction::Write, RESPONSE)),
            (o, data(c, Direction::Read, RESPONSE)),
            (o, closed(c, false)),
            (o, closed(s, false)),
        ],
    );
    Ok(())
}

/// A socket whose first bytes were a TLS record is not looked at again (socket path):
/// nothing at all is reported for it, not even its close. The fd-keyed paths do not
/// mark (an fd number outlives its connection when closed without close(2)) and still
/// judge every buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertext_sockets_are_left_alone() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::with("cipher", Capture::Sock, false).await?;
    let run = bench.run_helper("cipher", Placement::InCgroup, false)?;
    let got = bench.drain().await;
    assert_events(&got, &[]);
    drop(run);

    let mut bench = Bench::with("cipherfd", Capture::Raw, false).await?;
    let Exchange { o, c, s, got } = bench.exchange("cipher", false).await?;
    assert_events(
        &got,
        &[
            (o, data(c, Direction::Write, REQUEST)),
            (o, data(s, Direction::Read, REQUEST)),
            (o, closed(c, false)),
            (o, closed(s, false)),
        ],
    );
    Ok(())
}

/// The copied prefix is `capture_len` bytes. From 16 bytes up the kernel copies first and
/// judges the copy; below that it reads the head on its own first: both ways give the
/// same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_len_limits_the_copied_prefix() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let object = preflight()?;
    for capture_len in [16u32, 8] {
        let cfg = SensorConfig {
            object: Some(object.clone()),
            capture_len,
            ring_buffer_bytes: 1 << 16,
            upstream_responses: true,
            ..SensorConfig::default()
        };
        let mut bench = Bench::start("caplen", cfg).await?;
        let run = bench.run_helper("http", Placement::InCgroup, false)?;
        let c: u32 = run.get("client_fd")?;
        let got = bench.drain().await;
        let first = got.first().map(|(_, k)| k.clone());
        assert_eq!(
            first,
            Some(EventKind::Data {
                conn: ConnId::Fd(c),
                direction: Direction::Write,
                total_len: REQUEST.len() as u64,
                bytes: bytes::Bytes::copy_from_slice(&REQUEST[..capture_len as usize]),
            }),
            "capture_len {capture_len}: {}",
            show(&got)
        );
        assert_eq!(got.len(), 6, "capture_len {capture_len}: {}", show(&got));
    }
    Ok(())
}

/// With a prefix too short to hold a status code, a 101 is still recognised (from a
/// separate read of the head) and the connection's frames are not copied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_capture_still_sees_upgrades() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let object = preflight()?;
    let cfg = SensorConfig {
        object: Some(object),
        capture_len: 8,
        ..SensorConfig::default()
    };
    let mut bench = Bench::start("shortcap", cfg).await?;
    let Exchange { o, c, s, got } = bench.exchange("upgrade", false).await?;
    let head = |fd, direction, msg: &[u8]| EventKind::Data {
        conn: ConnId::Fd(fd),
        direction,
        total_len: msg.len() as u64,
        bytes: bytes::Bytes::copy_from_slice(&msg[..8]),
    };
    assert_events(
        &got,
        &[
            (o, head(c, Direction::Write, UPGRADE_REQUEST)),
            (o, head(s, Direction::Read, UPGRADE_REQUEST)),
            (o, head(s, Direction::Write, UPGRADE_RESPONSE)),
            (o, closed(c, true)),
            (o, closed(s, true)),
        ],
    );
    Ok(())
}

/// After a 101 the frame-like request and response are absent: the side that wrote the
/// 101 and the side that read it are both marked upgraded in the kernel, also when the
/// 101 it read was not reported (`upstream_responses` off).
async fn upgrade_stops_copying(path: Capture, upstream_responses: bool) -> Result<()> {
    let mut bench = Bench::with("upgrade", path, upstream_responses).await?;
    let Exchange { o, c, s, got } = bench.exchange("upgrade", false).await?;
    let mut want = vec![
        (o, data(c, Direction::Write, UPGRADE_REQUEST)),
        (o, data(s, Direction::Read, UPGRADE_REQUEST)),
        (o, data(s, Direction::Write, UPGRADE_RESPONSE)),
    ];
    if upstream_responses {
        want.push((o, data(c, Direction::Read, UPGRADE_RESPONSE)));
    }
    want.extend([(o, closed(c, true)), (o, closed(s, true))]);
    assert_events(&got, &want);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connection_frames_are_not_copied() -> Result<()> {
    let _serial = SERIAL.lock().await;
    upgrade_stops_copying(Capture::Sock, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreported_upstream_101_still_stops_copying() -> Result<()> {
    let _serial = SERIAL.lock().await;
    upgrade_stops_copying(Capture::Sock, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sys_exit_stops_copying_after_an_upgrade() -> Result<()> {
    let _serial = SERIAL.lock().await;
    upgrade_stops_copying(Capture::Raw, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_fallback_stops_copying_after_an_upgrade() -> Result<()> {
    let _serial = SERIAL.lock().await;
    upgrade_stops_copying(Capture::Classic, false).await
}

/// The kernel wakes the reader only for a backlog of an eighth of the ring; below that,
/// records wait for the reader's timer. With the timer disabled in practice (one tick at
/// start, then an hour), a single exchange stays in the ring and a second one, which
/// crosses the threshold, brings both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakeups_are_batched_until_a_backlog() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let object = preflight()?;
    // 64 KiB ring: wakeup at 8 KiB. One exchange is four data records of about 1.1 KiB
    // and two close records.
    let cfg = SensorConfig {
        object: Some(object),
        ring_buffer_bytes: 1 << 16,
        poll_interval: Duration::from_secs(3600),
        upstream_responses: true,
        ..SensorConfig::default()
    };
    let mut bench = Bench::start("wakeup", cfg).await?;
    // Let the timer's immediate first tick pass.
    tokio::time::sleep(Duration::from_millis(100)).await;
    bench.run_helper("http", Placement::InCgroup, false)?;
    let early = bench.drain().await;
    ensure!(
        early.is_empty(),
        "records below the wakeup threshold were delivered without a timer tick:\n{}",
        show(&early)
    );
    bench.run_helper("http", Placement::InCgroup, false)?;
    let got = bench.drain().await;
    ensure!(got.len() == 12, "{}", show(&got));
    Ok(())
}

/// With the default timer, a lone record arrives within a few timer periods although
/// the kernel never wakes the reader for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_timer_delivers_a_quiet_stream() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new("timer").await?;
    let run = bench.run_helper("refused", Placement::InCgroup, false)?;
    let port: u16 = run.get("port")?;
    let started = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(2), bench.rx.recv())
        .await
        .context("no event within 2 s")?
        .context("sensor stopped")?
        .into_iter()
        .next()
        .context("an empty batch")?;
    let waited = started.elapsed();
    ensure!(
        matches!(first.kind, EventKind::UpstreamFailure { peer: Some(p), .. } if p.port() == port),
        "{:?}",
        first.kind
    );
    ensure!(
        waited < Duration::from_millis(500),
        "the record took {waited:?} to arrive"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connect_is_reported_for_the_connecting_process() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new("refused").await?;
    let run = bench.run_helper("refused", Placement::InCgroup, false)?;
    let port: u16 = run.get("port")?;
    let got = bench.drain().await;
    assert_events(
        &got,
        &[(
            bench.origin(run.pid),
            EventKind::UpstreamFailure {
                reason: UpstreamFailureReason::Refused,
                errno: libc::ECONNREFUSED,
                peer: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            },
        )],
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_outside_the_cgroup_produces_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new("outside").await?;
    bench.run_helper("http", Placement::Outside, false)?;
    bench.run_helper("refused", Placement::Outside, false)?;
    let got = bench.drain().await;
    assert_events(&got, &[]);
    // Control: the same traffic from inside the cgroup is seen, so the silence above is
    // the filter's doing.
    bench.run_helper("http", Placement::InCgroup, false)?;
    let got = bench.drain().await;
    // Five: the response the client reads is an upstream response to the kernel.
    assert_eq!(got.len(), 5, "{}", show(&got));
    // Unwatching stops it again.
    bench.sensor.set_watched_cgroups(&[])?;
    bench.run_helper("http", Placement::InCgroup, false)?;
    let got = bench.drain().await;
    assert_events(&got, &[]);
    Ok(())
}

/// Up to 16 watched cgroups the kernel scans an array; more go through its hash map.
/// Both must find the test cgroup, and both must forget it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watched_cgroups_use_the_hash_map() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new("many").await?;
    let id = bench.cgroup.id;
    // Ids no cgroup has. Small ids are real (1 is the root cgroup, where other processes'
    // traffic would leak in); cgroup ids are inode numbers, far below these.
    for n in [15u64, 16, 40] {
        let mut ids: Vec<u64> = (0..n).map(|i| u64::MAX - i).collect();
        ids.push(id);
        bench.sensor.set_watched_cgroups(&ids)?;
        bench.run_helper("http", Placement::InCgroup, false)?;
        let got = bench.drain().await;
        ensure!(got.len() == 5, "{} other ids: {}", n, show(&got));
        ids.pop();
        bench.sensor.set_watched_cgroups(&ids)?;
        bench.run_helper("http", Placement::InCgroup, false)?;
        let got = bench.drain().await;
        ensure!(
            got.is_empty(),
            "{} other ids, test cgroup unwatched: {}",
            n,
            show(&got)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_bytes_produce_nothing() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::everything("nonhttp", Capture::Sock).await?;
    let Exchange { o, c, s, got } = bench.exchange("non_http", false).await?;
    // Only the HTTP exchange on the second connection (the control) is reported.
    assert_events(
        &got,
        &[
            (o, data(c, Direction::Write, REQUEST)),
            (o, data(s, Direction::Read, REQUEST)),
            (o, data(s, Direction::Write, RESPONSE)),
            (o, data(c, Direction::Read, RESPONSE)),
            (o, closed(c, false)),
            (o, closed(s, false)),
        ],
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_of_an_established_connection_is_reported() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new("reset").await?;
    let run = bench.run_helper("reset", Placement::InCgroup, false)?;
    let port: u16 = run.get("port")?;
    let got = bench.drain().await;
    // Only the connecting side is tracked: the accepted socket that sent the RST is not.
    assert_events(
        &got,
        &[(
            bench.origin(run.pid),
            EventKind::UpstreamFailure {
                reason: UpstreamFailureReason::Reset,
                errno: libc::ECONNRESET,
                peer: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            },
        )],
    );
    Ok(())
}

/// `cargo xtask build-ebpf` ran before this crate was built, so build.rs embedded the
/// object and the sensor needs no path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_the_embedded_object() -> Result<()> {
    let _serial = SERIAL.lock().await;
    preflight()?;
    let (tx, _rx) = mpsc::channel(16);
    let sensor = Sensor::start(&SensorConfig::default(), tx).context(
        "no embedded object: rebuild after `cargo xtask build-ebpf` (userspace/build.rs embeds target/ebpf/routeskew-probes.o)",
    )?;
    assert!(
        sensor.hooks().iter().all(|h| h.attached),
        "{:#?}",
        sensor.hooks()
    );
    Ok(())
}

/// Connects that never get an answer, inside the helper's own network namespace: a veth
/// whose far end answers nothing swallows the SYNs, and a missing neighbour makes the
/// kernel send itself ICMP host unreachable.
///
/// The application giving up is told from the kernel giving up by whether the socket's
/// owner is inside close(2): read from its saved registers where the kernel has BTF,
/// from a mark set at `sys_enter_close` and cleared at `sys_exit_close` on the classic
/// path.
async fn connect_failures(path: Capture) -> Result<()> {
    let mut bench = Bench::with("noanswer", path, false).await?;
    // The TCP tracepoints fire in softirqs; on the classic path one that interrupts our
    // syscall tracepoint program of another process is skipped by the kernel, which
    // counts it. Such a run proves nothing either way and is repeated; an event missing
    // without a counted skip fails at once.
    for attempt in 1..=3 {
        let misses = bench.misses();
        let (got, want) = connect_failures_once(&mut bench).await?;
        let skipped = bench.misses() - misses;
        if got == want || skipped == 0 || attempt == 3 {
            assert_events(&got, &want);
            return Ok(());
        }
        eprintln!(
            "attempt {attempt}: the kernel skipped {skipped} program runs (counted in \
             routeskew_sensor_program_misses_total), events differ; running again"
        );
    }
    unreachable!("the last attempt returns")
}

type Events = Vec<(Origin, EventKind)>;

async fn connect_failures_once(bench: &mut Bench) -> Result<(Events, Events)> {
    let Exchange { o, c, s, got } = bench.exchange("no_answer", true).await?;
    let upstream = |reason, errno, ip: [u8; 4]| {
        (
            o,
            EventKind::UpstreamFailure {
                reason,
                errno,
                peer: Some(SocketAddr::from((ip, 80))),
            },
        )
    };
    let want = vec![
        // The application gave up (closed the connecting socket).
        upstream(UpstreamFailureReason::Timeout, 0, [203, 0, 113, 3]),
        // Written right after giving up, with no TCP state change in between: the
        // give-up is reported ahead of it only when the close(2) mark worked.
        // Without it the close would wait in the per-CPU slot for the next
        // state change (the next connect) and come after this.
        (o, data(c, Direction::Write, REQUEST)),
        (o, data(s, Direction::Read, REQUEST)),
        // The kernel gave up after its SYN retries.
        upstream(
            UpstreamFailureReason::Timeout,
            libc::ETIMEDOUT,
            [203, 0, 113, 4],
        ),
        // Neighbour resolution failed: ICMP host unreachable.
        upstream(
            UpstreamFailureReason::Unreachable,
            libc::EHOSTUNREACH,
            [203, 0, 113, 2],
        ),
        (o, closed(c, false)),
        (o, closed(s, false)),
    ];
    Ok((got, want))
}

on_every_data_path!(
    connect_failures:
    connect_timeouts_and_unreachable_are_classified,
    raw_sys_exit_classifies_connect_failures,
    classic_fallback_classifies_connect_failures
);

/// The kernel's count of skipped runs is readable for every loaded program (it is what
/// `routeskew_sensor_program_misses_total` exports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_runs_are_readable_for_every_program() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let bench = Bench::new("misses").await?;
    let misses = bench.sensor.program_misses();
    let names: std::collections::BTreeSet<&str> = misses.iter().map(|(n, _)| n.as_str()).collect();
    for program in [
        "sock_send",
        "sock_recv",
        "inet_sock_set_state",
        "tcp_receive_reset",
        "inet_sk_error_report",
    ] {
        ensure!(names.contains(program), "{program} missing from {misses:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_sensor_releases_every_kernel_object() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let before = kernel_fds()?;
    let bench = Bench::new("drop").await?;
    let during = kernel_fds()?;
    let hooks = bench.sensor.hooks().iter().filter(|h| h.attached).count();
    // The two socket tracepoints and the three TCP tracepoints.
    assert_eq!(hooks, 5, "{:#?}", bench.sensor.hooks());
    assert!(
        during.progs >= before.progs + hooks,
        "{before:?} -> {during:?}"
    );
    assert!(
        during.links >= before.links + hooks,
        "{before:?} -> {during:?}"
    );
    assert!(during.maps > before.maps, "{before:?} -> {during:?}");
    drop(bench);
    // The ring buffer goes with the reader task, which the runtime drops after abort.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = kernel_fds()?;
        if now == before {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "kernel objects still held after drop: {before:?} -> {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// BPF programs, maps and perf-event links (tracepoint attachments) this process holds.
#[derive(Debug, PartialEq, Eq)]
struct KernelFds {
    progs: usize,
    maps: usize,
    links: usize,
}

fn kernel_fds() -> Result<KernelFds> {
    let mut fds = KernelFds {
        progs: 0,
        maps: 0,
        links: 0,
    };
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        match target.to_string_lossy().as_ref() {
            "anon_inode:bpf-prog" => fds.progs += 1,
            "anon_inode:bpf-map" => fds.maps += 1,
            "anon_inode:bpf_link" | "anon_inode:[perf_event]" => fds.links += 1,
            _ => {}
        }
    }
    Ok(fds)
}

// ---------------------------------------------------------------------------------------
// Go crypto/tls uprobes
// ---------------------------------------------------------------------------------------

/// Events of `pid`, split into TLS plaintext ones (by `*tls.Conn`) and anything reported
/// for its fds.
fn split_tls(got: &[(Origin, EventKind)], pid: u32) -> (Vec<(ConnId, EventKind)>, Vec<EventKind>) {
    let mut tls = Vec::new();
    let mut fds = Vec::new();
    for (_, k) in got.iter().filter(|(o, _)| o.tgid == pid) {
        match k {
            EventKind::Data { conn, .. } | EventKind::Closed { conn, .. } => match conn {
                ConnId::GoTls(_) => tls.push((*conn, k.clone())),
                ConnId::Fd(_) => fds.push(k.clone()),
            },
            other => fds.push(other.clone()),
        }
    }
    (tls, fds)
}

/// The plaintext events of one TLS connection must be: for each expected exchange, the
/// request read (starting with `req`) and the response written (starting with `resp`),
/// then its close.
fn check_tls_exchanges(
    tls: &[(ConnId, EventKind)],
    exchanges: &[(&str, &str)],
    show_all: &str,
) -> Result<()> {
    let conns: std::collections::BTreeSet<String> =
        tls.iter().map(|(c, _)| c.to_string()).collect();
    ensure!(
        conns.len() == 1,
        "expected one TLS connection, got {conns:?}:\n{show_all}"
    );
    ensure!(
        tls.len() == 2 * exchanges.len() + 1,
        "expected {} TLS events:\n{show_all}",
        2 * exchanges.len() + 1
    );
    for (i, (req, resp)) in exchanges.iter().enumerate() {
        for (k, (dir, want)) in [(Direction::Read, req), (Direction::Write, resp)]
            .into_iter()
            .enumerate()
        {
            match &tls[2 * i + k].1 {
                EventKind::Data {
                    direction, bytes, ..
                } if *direction == dir && bytes.starts_with(want.as_bytes()) => {}
                other => bail!(
                    "exchange {i}: expected {dir:?} starting {want:?}, got {other:?}\n{show_all}"
                ),
            }
        }
    }
    ensure!(
        matches!(
            tls.last(),
            Some((
                _,
                EventKind::Closed {
                    upgraded: false,
                    ..
                }
            ))
        ),
        "the connection's close is missing:\n{show_all}"
    );
    Ok(())
}

/// Prints the measured cost per hit of each TLS uprobe (run-time statistics on).
fn report_uprobe_cost(sensor: &mut Sensor, what: &str) {
    for s in sensor.tls_run_stats() {
        let per_hit = s.run_time.as_nanos().checked_div(u128::from(s.runs));
        eprintln!(
            "uprobe cost ({what}): {}: {} runs, {} ns total, {} ns per hit",
            s.program,
            s.runs,
            s.run_time.as_nanos(),
            per_hit.map_or("-".into(), |n| n.to_string())
        );
    }
}

/// A Go 1.19 HTTPS server built here (the test bed's backend with `-tls-cert`): the
/// requests it reads and the responses it writes inside TLS, one keep-alive connection
/// of two exchanges, and its close; nothing of the ciphertext on its socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tls_server_plaintext_is_captured() -> Result<()> {
    use routeskew_testbed::{backend, tls};
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new("gotls").await?;
    let _stats = routeskew::sensor::enable_run_stats()?;
    let dir = tempfile::tempdir()?;
    let cert = tls::Certificate::self_signed(dir.path())?;
    let bin = backend::build()?;
    let server = backend::Backend::start_tls(
        &bin,
        &dir.path().join("backend.log"),
        &cert,
        Some(&bench.cgroup.path),
    )?;
    let pid = server.child.pid();
    let status = bench.sensor.set_tls_processes(&[pid]);
    ensure!(status.len() == 1, "{status:#?}");
    let version = status[0]
        .outcome
        .clone()
        .map_err(|e| anyhow!("uprobes not attached: {e}"))?;
    ensure!(version.starts_with("go1.19"), "{version}");

    let addr = server.addr;
    let codes =
        tokio::task::spawn_blocking(move || tls::curl_https(addr, "tls.test", &["/notfound", "/"]))
            .await??;
    ensure!(codes == [404, 200], "curl got {codes:?}");
    let got = bench.drain().await;
    report_uprobe_cost(&mut bench.sensor, "Go 1.19 server");
    let all = show(&got);
    let (tls_events, fd_events) = split_tls(&got, pid);
    ensure!(
        fd_events.is_empty(),
        "the socket hooks reported something of a TLS-only server:\n{all}"
    );
    check_tls_exchanges(
        &tls_events,
        &[
            (
                "GET /notfound HTTP/1.1\r\nHost: tls.test:",
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n",
            ),
            ("GET / HTTP/1.1\r\nHost: tls.test:", "HTTP/1.1 200 OK\r\n"),
        ],
        &all,
    )?;
    let totals = bench.sensor.totals()?;
    for t in totals.iter().filter(|t| t.program.starts_with("go_tls")) {
        ensure!(
            t.lost == 0 && t.read_failures == 0 && t.map_full == 0,
            "{t:?}"
        );
    }
    drop(server);
    Ok(())
}

/// The real Traefik release binary in the bench's cgroup with a `websecure` entrypoint
/// (`cert`) routing `routes` (`backend` is where `Upstream::Backend` routes go), its TLS
/// uprobes attached. Returns it, its pid and the `websecure` address.
fn start_traefik_websecure(
    bench: &mut Bench,
    dir: &Path,
    cert: &routeskew_testbed::tls::Certificate,
    routes: &[routeskew_testbed::scenario::Route],
    backend: SocketAddr,
) -> Result<(routeskew_testbed::process::ManagedChild, u32, SocketAddr)> {
    use routeskew_testbed::{net, paths, process::ManagedChild, traefik};
    let traefik_bin = paths::traefik_binary()?;
    let (web, websecure, api) = (
        net::loopback(net::free_port()?),
        net::loopback(net::free_port()?),
        net::loopback(net::free_port()?),
    );
    let dynamic_file = dir.join("dynamic.yml");
    std::fs::write(
        &dynamic_file,
        traefik::dynamic_yaml(&traefik::DynamicConfig {
            routes,
            backend,
            refused: web,
            slow_timeout: Duration::from_secs(1),
            tls: Some(cert),
        }),
    )?;
    let static_file = dir.join("traefik.yml");
    let log_file = dir.join("traefik.log");
    std::fs::write(
        &static_file,
        traefik::static_yaml(&traefik::StaticConfig {
            web,
            websecure: Some(websecure),
            api,
            dynamic_file: &dynamic_file,
            log_file: &log_file,
            access_log: None,
            log_level: "INFO",
        }),
    )?;
    let mut cmd = Command::new(&traefik_bin);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .arg(format!("--configFile={}", static_file.display()));
    let mut child = ManagedChild::spawn(
        "traefik",
        cmd,
        &dir.join("traefik.out"),
        Some(&bench.cgroup.path),
    )?;
    let pid = child.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(websecure).is_err() {
        if let Some(status) = child.try_exited() {
            bail!("traefik exited ({status}):\n{}", child.log_tail(4096));
        }
        ensure!(
            Instant::now() < deadline,
            "traefik did not listen on {websecure}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = bench.sensor.set_tls_processes(&[pid]);
    ensure!(status.len() == 1, "{status:#?}");
    let version = status[0]
        .outcome
        .clone()
        .map_err(|e| anyhow!("uprobes not attached: {e}"))?;
    ensure!(version == "go1.26.9", "{version}");
    Ok((child, pid, websecure))
}

/// The real Traefik release binary (stripped, Go 1.26) with a `websecure` entrypoint:
/// its own router-miss 404 and a routed request's 503, read from inside TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_websecure_plaintext_is_captured() -> Result<()> {
    use routeskew_testbed::{net, scenario, tls};
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new("traefiktls").await?;
    let _stats = routeskew::sensor::enable_run_stats()?;
    let dir = tempfile::tempdir()?;
    let cert = tls::Certificate::self_signed(dir.path())?;
    let routes = [scenario::Route {
        name: "routed".into(),
        host: "routed.test".into(),
        upstream: scenario::Upstream::NoServer,
    }];
    let web = net::loopback(net::free_port()?);
    let (mut child, pid, websecure) =
        start_traefik_websecure(&mut bench, dir.path(), &cert, &routes, web)?;
    // Whatever Traefik did while starting is not part of the test.
    let _ = bench.drain().await;

    let codes = tokio::task::spawn_blocking(move || {
        let miss = tls::curl_https(websecure, "missing.test", &["/nothing-here"])?;
        let routed = tls::curl_https(websecure, "routed.test", &["/a", "/b"])?;
        anyhow::Ok((miss, routed))
    })
    .await??;
    ensure!(codes == (vec![404], vec![503, 503]), "curl got {codes:?}");
    let got = bench.drain().await;
    report_uprobe_cost(&mut bench.sensor, "Traefik 3.7.15");
    let all = show(&got);
    let (tls_events, fd_events) = split_tls(&got, pid);
    ensure!(
        fd_events.is_empty(),
        "the socket hooks reported something (nothing was plaintext):\n{all}"
    );
    // Two connections, one after the other: split at the first close.
    let first_close = tls_events
        .iter()
        .position(|(_, k)| matches!(k, EventKind::Closed { .. }))
        .with_context(|| format!("no TLS close:\n{all}"))?;
    let (miss, routed) = tls_events.split_at(first_close + 1);
    check_tls_exchanges(
        miss,
        &[(
            "GET /nothing-here HTTP/1.1\r\nHost: missing.test:",
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nDate: ",
        )],
        &all,
    )?;
    check_tls_exchanges(
        routed,
        &[
            (
                "GET /a HTTP/1.1\r\nHost: routed.test:",
                "HTTP/1.1 503 Service Unavailable\r\n",
            ),
            (
                "GET /b HTTP/1.1\r\nHost: routed.test:",
                "HTTP/1.1 503 Service Unavailable\r\n",
            ),
        ],
        &all,
    )?;

    // Cost per hit, measured over a few hundred requests on one connection.
    let before = bench.sensor.tls_run_stats();
    let codes = tokio::task::spawn_blocking(move || {
        tls::curl_https(websecure, "routed.test", &["/measure"; 300])
    })
    .await??;
    ensure!(codes.len() == 300, "curl got {} answers", codes.len());
    let _ = bench.drain().await;
    for s in bench.sensor.tls_run_stats() {
        let Some(b) = before.iter().find(|b| b.program == s.program) else {
            continue;
        };
        let runs = s.runs - b.runs;
        let ns = (s.run_time - b.run_time).as_nanos();
        eprintln!(
            "uprobe cost (Traefik 3.7.15, 300 keep-alive requests): {}: {runs} runs, {} ns per hit",
            s.program,
            ns.checked_div(u128::from(runs))
                .map_or("-".into(), |n| n.to_string())
        );
    }
    child.stop(Duration::from_secs(5));
    Ok(())
}

/// The records of one TLS connection in the fixture format of `routeskew::pipeline::flows::h2::capture`.
fn tls_records(
    tls: &[(ConnId, EventKind)],
    conn: ConnId,
) -> Vec<routeskew::pipeline::flows::h2::capture::Record> {
    use routeskew::pipeline::flows::h2::capture::Record;
    tls.iter()
        .filter(|(c, _)| *c == conn)
        .filter_map(|(_, k)| match k {
            EventKind::Data {
                direction,
                total_len,
                bytes,
                ..
            } => Some(Record::Data {
                direction: *direction,
                total_len: *total_len,
                bytes: bytes.to_vec(),
            }),
            EventKind::Closed { .. } => Some(Record::Closed),
            _ => None,
        })
        .collect()
}

/// HTTP/2 through the real Traefik's `websecure` entrypoint (curl negotiates h2 with
/// ALPN): once the client preface is read, every Read and Write of the connection is
/// copied, so the frame streams of both directions decode completely: each request's
/// HEADERS with its `:authority`, each response's HEADERS with its `:status`, and the
/// router-miss body. With `ROUTESKEW_H2_FIXTURES=<dir>` the records are also written
/// there (how `userspace/src/h2/fixtures` was made).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_websecure_h2_frames_are_captured() -> Result<()> {
    use routeskew::pipeline::flows::h2::capture;
    use routeskew_testbed::{backend, scenario, tls};
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new("traefikh2").await?;
    let _stats = routeskew::sensor::enable_run_stats()?;
    let dir = tempfile::tempdir()?;
    let cert = tls::Certificate::self_signed(dir.path())?;
    let bin = backend::build()?;
    let server = backend::Backend::start(&bin, &dir.path().join("backend.log"))?;
    let routes = [scenario::Route {
        name: "routed".into(),
        host: "routed.test".into(),
        upstream: scenario::Upstream::Backend,
    }];
    let (mut child, pid, websecure) =
        start_traefik_websecure(&mut bench, dir.path(), &cert, &routes, server.addr)?;
    let _ = bench.drain().await;

    let miss_paths = ["/nothing-here", "/still-nothing"];
    let routed_paths = [
        scenario::path::MISSING,
        scenario::path::NOTFOUND,
        scenario::path::ROOT,
    ];
    let codes = tokio::task::spawn_blocking(move || {
        let miss = tls::curl_https_h2(websecure, "missing.test", &miss_paths)?;
        let routed = tls::curl_https_h2(websecure, "routed.test", &routed_paths)?;
        anyhow::Ok((miss, routed))
    })
    .await??;
    ensure!(
        codes == (vec![404, 404], vec![404, 404, 200]),
        "curl got {codes:?}"
    );
    let got = bench.drain().await;
    report_uprobe_cost(&mut bench.sensor, "Traefik 3.7.15, HTTP/2");
    let all = show(&got);
    let (tls_events, _) = split_tls(&got, pid);
    let mut conns: Vec<ConnId> = Vec::new();
    for (c, _) in &tls_events {
        if !conns.contains(c) {
            conns.push(*c);
        }
    }
    ensure!(conns.len() == 2, "expected two TLS connections:\n{all}");
    let fixtures = std::env::var_os("ROUTESKEW_H2_FIXTURES").map(PathBuf::from);
    for (conn, (name, host, paths, statuses)) in conns.iter().zip([
        (
            "traefik_h2_router_miss",
            "missing.test",
            &miss_paths[..],
            &[404u16, 404][..],
        ),
        (
            "traefik_h2_routed",
            "routed.test",
            &routed_paths[..],
            &[404, 404, 200][..],
        ),
    ]) {
        let records = tls_records(&tls_events, *conn);
        if let Some(dir) = &fixtures {
            std::fs::write(dir.join(format!("{name}.bin")), capture::encode(&records))?;
        }
        let exchanges = capture::replay(&records);
        ensure!(
            exchanges.desync.is_none(),
            "{name}: decoder lost sync: {:?}\n{all}",
            exchanges.desync
        );
        ensure!(
            exchanges.pairs.len() == paths.len(),
            "{name}: {} exchanges decoded, {} sent: {:?}",
            exchanges.pairs.len(),
            paths.len(),
            exchanges.pairs
        );
        for (i, (got, (path, status))) in exchanges
            .pairs
            .iter()
            .zip(paths.iter().zip(statuses))
            .enumerate()
        {
            ensure!(
                got.is_get(host, path) && got.status() == Some(*status),
                "{name} stream {i}: {got:?}, sent {host}{path} → {status}"
            );
        }
        ensure!(
            records.last() == Some(&capture::Record::Closed),
            "{name}: no close"
        );
    }
    let totals = bench.sensor.totals()?;
    for t in totals.iter().filter(|t| t.program.starts_with("go_tls")) {
        ensure!(
            t.lost == 0 && t.read_failures == 0 && t.map_full == 0,
            "{t:?}"
        );
    }

    // Cost of copying every frame: uprobe hits, cost per hit and records per request,
    // over a few hundred streams of one connection (compare the HTTP/1.1 test's numbers).
    let before = bench.sensor.tls_run_stats();
    let n = 300;
    let codes = tokio::task::spawn_blocking(move || {
        tls::curl_https_h2(websecure, "routed.test", &[scenario::path::ROOT; 300])
    })
    .await??;
    ensure!(codes == vec![200; n], "curl got {codes:?}");
    let got = bench.drain().await;
    let records = got
        .iter()
        .filter(|(o, k)| o.tgid == pid && matches!(k, EventKind::Data { .. }))
        .count();
    eprintln!(
        "h2 capture (Traefik 3.7.15, {n} streams on one connection): {records} records, {:.1} per request",
        records as f64 / n as f64
    );
    for s in bench.sensor.tls_run_stats() {
        let Some(b) = before.iter().find(|b| b.program == s.program) else {
            continue;
        };
        let runs = s.runs - b.runs;
        let ns = (s.run_time - b.run_time).as_nanos();
        eprintln!(
            "uprobe cost (Traefik 3.7.15, HTTP/2, {n} streams): {}: {runs} runs, {} ns per hit, {} ns per request",
            s.program,
            ns.checked_div(u128::from(runs))
                .map_or("-".into(), |n| n.to_string()),
            ns / n as u128
        );
    }
    child.stop(Duration::from_secs(5));
    drop(server);
    Ok(())
}

/// A process that is no Go binary: the TLS uprobes report why they are not on it, and the
/// socket hooks keep capturing its plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_resolution_failure_keeps_plaintext_capture() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new("tlsfail").await?;
    let dir = tempfile::tempdir()?;
    let mut sleeper = Command::new("sleep");
    sleeper.arg("30");
    let sleeper = routeskew_testbed::process::ManagedChild::spawn(
        "sleep",
        sleeper,
        &dir.path().join("sleep.log"),
        Some(&bench.cgroup.path),
    )?;
    let status = bench.sensor.set_tls_processes(&[sleeper.pid()]);
    ensure!(status.len() == 1, "{status:#?}");
    let error = status[0]
        .outcome
        .clone()
        .err()
        .context("uprobes on sleep(1)?")?;
    ensure!(error.contains("no Go function table"), "{error}");
    // Asked again, the failure is remembered, not retried.
    ensure!(bench.sensor.set_tls_processes(&[sleeper.pid()]) == status);
    let run = bench.run_helper("http", Placement::InCgroup, false)?;
    let got = bench.drain().await;
    ensure!(
        got.iter().filter(|(o, _)| o.tgid == run.pid).count() == 5,
        "plaintext capture after a TLS failure:\n{}",
        show(&got)
    );
    drop(sleeper);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Helper process
// ---------------------------------------------------------------------------------------

/// Not a test: the entry point of the helper process the tests spawn (it does nothing
/// unless `ROUTESKEW_KERNEL_HELPER` is set).
#[test]
fn helper_process() {
    let Ok(scenario) = std::env::var(HELPER_ENV) else {
        return;
    };
    let outcome = match scenario.as_str() {
        "http" => scenario_http(false),
        "upgrade" => scenario_http(true),
        "request_back" => scenario_request_back(),
        "cipher" => scenario_cipher(),
        "refused" => scenario_refused(),
        "reset" => scenario_reset(),
        "non_http" => scenario_non_http(),
        "read_ahead" => scenario_read_ahead(),
        "one_byte_fresh" => scenario_one_byte_fresh(),
        "no_answer" => scenario_no_answer(),
        other => Err(anyhow!("unknown helper scenario {other}")),
    };
    match outcome {
        Ok(()) => {
            println!("RESULT ok=1");
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("helper {scenario}: {e:#}");
            std::process::exit(1);
        }
    }
}

fn raw_write(fd: i32, buf: &[u8]) -> Result<()> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    ensure!(
        n == buf.len() as isize,
        "write returned {n}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn raw_read_exact(fd: i32, want: &[u8]) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    ensure!(
        n == want.len() as isize && &buf[..want.len()] == want,
        "read returned {n} bytes, expected the {}-byte message in one read",
        want.len()
    );
    Ok(())
}

fn std_read_exact(stream: &mut TcpStream, want: &[u8]) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf)?;
    ensure!(
        n == want.len() && &buf[..n] == want,
        "recv returned {n} bytes, expected the {}-byte message in one read",
        want.len()
    );
    Ok(())
}

fn connected_pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    Ok((client, server))
}

/// One request/response: the client with read(2)/write(2), the server with std's
/// recv/send (recvfrom/sendto syscalls). With `upgrade`, a 101 handshake and then
/// HTTP-looking bytes both ways.
fn scenario_http(upgrade: bool) -> Result<()> {
    let (client, mut server) = connected_pair()?;
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    let (req, resp) = if upgrade {
        (UPGRADE_REQUEST, UPGRADE_RESPONSE)
    } else {
        (REQUEST, RESPONSE)
    };
    raw_write(cfd, req)?;
    std_read_exact(&mut server, req)?;
    server.write_all(resp)?;
    raw_read_exact(cfd, resp)?;
    if upgrade {
        raw_write(cfd, FRAME_LIKE_REQUEST)?;
        std_read_exact(&mut server, FRAME_LIKE_REQUEST)?;
        server.write_all(FRAME_LIKE_RESPONSE)?;
        raw_read_exact(cfd, FRAME_LIKE_RESPONSE)?;
    }
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}

/// The side that wrote a request (an upstream connection to the kernel) later reads a
/// request on it: the kernel only skims reads of upstream connections, but must still
/// report a request it finds there.
fn scenario_request_back() -> Result<()> {
    let (client, mut server) = connected_pair()?;
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    raw_write(cfd, REQUEST)?;
    std_read_exact(&mut server, REQUEST)?;
    server.write_all(RESPONSE)?;
    raw_read_exact(cfd, RESPONSE)?;
    server.write_all(REQUEST)?;
    raw_read_exact(cfd, REQUEST)?;
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}

/// One read(2) of a single byte, as Go's background read does it.
fn raw_read_one(fd: i32) -> Result<u8> {
    let mut byte = 0u8;
    // SAFETY: one byte of valid memory.
    let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
    ensure!(
        n == 1,
        "1-byte read returned {n}: {}",
        std::io::Error::last_os_error()
    );
    Ok(byte)
}

/// A keep-alive connection served the way Go's net/http does when the next request
/// arrives while a handler runs: the server reads the second request's first byte on its
/// own, then the rest with a normal read (both read(2)).
fn scenario_read_ahead() -> Result<()> {
    let (client, mut server) = connected_pair()?;
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    raw_write(cfd, REQUEST)?;
    raw_read_exact(sfd, REQUEST)?;
    server.write_all(RESPONSE)?;
    raw_read_exact(cfd, RESPONSE)?;
    raw_write(cfd, SECOND_REQUEST)?;
    ensure!(raw_read_one(sfd)? == SECOND_REQUEST[0], "wrong first byte");
    raw_read_exact(sfd, &SECOND_REQUEST[1..])?;
    server.write_all(RESPONSE)?;
    raw_read_exact(cfd, RESPONSE)?;
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}

/// The same split on a connection that carried nothing before: the client sends the
/// request's first byte and the rest in two writes (neither looks like HTTP to the
/// kernel), the server reads them in two reads. Then a real exchange on a second
/// connection.
fn scenario_one_byte_fresh() -> Result<()> {
    {
        let (client, server) = connected_pair()?;
        let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
        raw_write(cfd, &REQUEST[..1])?;
        raw_write(cfd, &REQUEST[1..])?;
        ensure!(raw_read_one(sfd)? == REQUEST[0], "wrong first byte");
        raw_read_exact(sfd, &REQUEST[1..])?;
    }
    scenario_http(false)
}

/// TLS records both ways (a handshake and application data, as on a TLS entrypoint's
/// socket), then bytes that look like a request on the same connection.
fn scenario_cipher() -> Result<()> {
    const HELLO: &[u8] = b"\x16\x03\x01\x00\x2a\x01\x00\x00\x26\x03\x03abcdefghijklmnop";
    const RECORD: &[u8] = b"\x17\x03\x03\x00\x20ciphertext-ciphertext-ciphertext";
    let (client, mut server) = connected_pair()?;
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    raw_write(cfd, HELLO)?;
    std_read_exact(&mut server, HELLO)?;
    server.write_all(RECORD)?;
    raw_read_exact(cfd, RECORD)?;
    raw_write(cfd, REQUEST)?;
    std_read_exact(&mut server, REQUEST)?;
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}

fn scenario_refused() -> Result<()> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    match TcpStream::connect(("127.0.0.1", port)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => bail!("connect to closed port {port}: expected refusal, got {other:?}"),
    }
    println!("RESULT port={port}");
    Ok(())
}

/// The server aborts an established connection (SO_LINGER 0 then close sends RST).
fn scenario_reset() -> Result<()> {
    let (mut client, server) = connected_pair()?;
    let port = server.local_addr()?.port();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid fd with a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            server.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(server);
    let mut buf = [0u8; 16];
    match client.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => bail!("read after the peer's abort: expected a reset, got {other:?}"),
    }
    println!("RESULT port={port}");
    Ok(())
}

/// Non-HTTP traffic both ways on one connection, then a real exchange on a second one.
fn scenario_non_http() -> Result<()> {
    {
        let (client, mut server) = connected_pair()?;
        for msg in NOT_HTTP {
            raw_write(client.as_raw_fd(), msg)?;
            std_read_exact(&mut server, msg)?;
            server.write_all(msg)?;
            raw_read_exact(client.as_raw_fd(), msg)?;
        }
    }
    scenario_http(false)
}

fn ip(args: &str) -> Result<()> {
    let status = Command::new("ip")
        .args(args.split_whitespace())
        .stdout(Stdio::null())
        .status()
        .context("running ip(8)")?;
    ensure!(status.success(), "ip {args}: {status}");
    Ok(())
}

fn scenario_no_answer() -> Result<()> {
    // Runs in a fresh network namespace (unshared before exec).
    // Nothing answers on the far side of the veth: .3 and .4 have (fake) neighbour
    // entries so their SYNs leave and are dropped, .2 has none so ARP fails.
    ip("link set lo up")?;
    ip("link add rsk-a type veth peer name rsk-b")?;
    ip("addr add 203.0.113.1/24 dev rsk-a")?;
    ip("link set rsk-a up")?;
    ip("link set rsk-b up")?;
    ip("neigh add 203.0.113.3 lladdr 02:00:00:00:00:03 dev rsk-a nud permanent")?;
    ip("neigh add 203.0.113.4 lladdr 02:00:00:00:00:04 dev rsk-a nud permanent")?;
    // Connected before step 1 so that writing on it afterwards changes no TCP state.
    let (client, mut server) = connected_pair()?;

    // 1. The application gives up: connect_timeout closes the socket while SYN_SENT.
    let addr = SocketAddr::from(([203, 0, 113, 3], 80));
    match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        other => bail!("connect to {addr}: expected our timeout, got {other:?}"),
    }
    raw_write(client.as_raw_fd(), REQUEST)?;
    // Read, so that closing the server side later sends a FIN, not a reset.
    std_read_exact(&mut server, REQUEST)?;

    // 2. The kernel gives up: one SYN retry, about 3 s.
    // SAFETY: plain socket syscalls on an fd this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let syncnt: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&syncnt as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 80u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([203, 0, 113, 4]),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        ensure!(
            rc != 0 && err.raw_os_error() == Some(libc::ETIMEDOUT),
            "connect with TCP_SYNCNT=1: expected ETIMEDOUT, got rc={rc} {err}"
        );
    }

    // 3. No neighbour answers ARP: the kernel reports host unreachable (about 3 s).
    let addr = SocketAddr::from(([203, 0, 113, 2], 80));
    match TcpStream::connect(addr) {
        Err(e) if e.raw_os_error() == Some(libc::EHOSTUNREACH) => {}
        other => bail!("connect to {addr}: expected EHOSTUNREACH, got {other:?}"),
    }
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    drop(client);
    drop(server);
    println!("RESULT client_fd={cfd} server_fd={sfd}");
    Ok(())
}
