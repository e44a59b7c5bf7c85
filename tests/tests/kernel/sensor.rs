//! The sensor's own behaviour, beyond the rows of [`crate::cases`]: ciphertext sockets,
//! the capture length, reader wakeups, the cgroup filter, connect failures, the
//! embedded object, and the kernel objects it holds.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use routeskew::{
    event::{ConnId, Direction, EventKind, UpstreamFailureReason},
    sensor::{Sensor, SensorConfig},
};
use tokio::sync::mpsc;

use crate::data_paths::Capture;
use crate::events::{assert_events, closed, data, show, REQUEST};
use crate::harness::{preflight, Bench, Exchange, Placement};
use crate::SERIAL;

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
    // The record that takes the backlog past 8 KiB (a data record of the second exchange)
    // wakes the reader, which takes everything committed so far: the whole first exchange
    // and the second one up to that record. The second exchange's records committed after
    // the reader emptied the ring (its closes, when the reader is quick) are below the
    // threshold again and wait for the next wakeup or timer tick, by design: so 7 to 12.
    let first_exchange = got
        .iter()
        .take(6)
        .filter(|(_, k)| matches!(k, EventKind::Data { .. }))
        .count();
    ensure!(
        (7..=12).contains(&got.len()) && first_exchange == 4,
        "{}",
        show(&got)
    );
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

/// Runs the helper `name` (one failing connect to 127.0.0.1 from the test cgroup) and
/// expects exactly that failure, reported for the connecting process.
async fn one_upstream_failure(name: &str, reason: UpstreamFailureReason, errno: i32) -> Result<()> {
    let _serial = SERIAL.lock().await;
    let mut bench = Bench::new(name).await?;
    let run = bench.run_helper(name, Placement::InCgroup, false)?;
    let port: u16 = run.get("port")?;
    let got = bench.drain().await;
    assert_events(
        &got,
        &[(
            bench.origin(run.pid),
            EventKind::UpstreamFailure {
                reason,
                errno,
                peer: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            },
        )],
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connect_is_reported_for_the_connecting_process() -> Result<()> {
    one_upstream_failure(
        "refused",
        UpstreamFailureReason::Refused,
        libc::ECONNREFUSED,
    )
    .await
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
async fn reset_of_an_established_connection_is_reported() -> Result<()> {
    // Only the connecting side is tracked: the accepted socket that sent the RST is not.
    one_upstream_failure("reset", UpstreamFailureReason::Reset, libc::ECONNRESET).await
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
