//! The real Traefik release binary (stripped, Go 1.26) with a `websecure` entrypoint, its
//! TLS uprobes attached: HTTP/1.1 and HTTP/2 read from inside TLS, and what each costs.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use routeskew::event::{ConnId, EventKind};

use crate::events::show;
use crate::harness::Bench;
use crate::tls::{check_tls_exchanges, report_uprobe_cost, report_uprobe_cost_since, split_tls};
use crate::SERIAL;

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
    let status = bench.set_tls_processes(&[pid])?;
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
    report_uprobe_cost_since(
        &mut bench.sensor,
        &before,
        "Traefik 3.7.15, 300 keep-alive requests",
        300,
    );
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
    report_uprobe_cost_since(
        &mut bench.sensor,
        &before,
        &format!("Traefik 3.7.15, HTTP/2, {n} streams"),
        n as u64,
    );
    child.stop(Duration::from_secs(5));
    drop(server);
    Ok(())
}
