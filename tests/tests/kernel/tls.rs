//! The Go `crypto/tls` uprobes on a Go 1.19 HTTPS server built here, and on a process
//! that is no Go binary; the helpers the Traefik tests ([`crate::traefik_tls`]) share.

use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context, Result};
use routeskew::{
    event::{ConnId, Direction, EventKind, Origin},
    sensor::{
        gobin::GoBinError,
        gotls::{RunStats, TlsError},
        Sensor,
    },
};

use crate::events::show;
use crate::harness::{Bench, Placement};
use crate::SERIAL;

/// Events of `pid`, split into TLS plaintext ones (by `*tls.Conn`) and anything reported
/// for its fds.
pub(crate) fn split_tls(
    got: &[(Origin, EventKind)],
    pid: u32,
) -> (Vec<(ConnId, EventKind)>, Vec<EventKind>) {
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
pub(crate) fn check_tls_exchanges(
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
pub(crate) fn report_uprobe_cost(sensor: &mut Sensor, what: &str) {
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

/// Prints the cost per hit of each TLS uprobe over what ran since `before`, and per
/// request over `requests` requests.
pub(crate) fn report_uprobe_cost_since(
    sensor: &mut Sensor,
    before: &[RunStats],
    what: &str,
    requests: u64,
) {
    for s in sensor.tls_run_stats() {
        let Some(b) = before.iter().find(|b| b.program == s.program) else {
            continue;
        };
        let runs = s.runs - b.runs;
        let ns = (s.run_time - b.run_time).as_nanos();
        eprintln!(
            "uprobe cost ({what}): {}: {runs} runs, {} ns per hit, {} ns per request",
            s.program,
            ns.checked_div(u128::from(runs))
                .map_or("-".into(), |n| n.to_string()),
            ns / u128::from(requests.max(1))
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
    let status = bench.set_tls_processes(&[pid])?;
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
    let status = bench.set_tls_processes(&[sleeper.pid()])?;
    ensure!(status.len() == 1, "{status:#?}");
    let error = status[0]
        .outcome
        .clone()
        .err()
        .context("uprobes on sleep(1)?")?;
    ensure!(
        matches!(
            *error,
            TlsError::Resolve {
                source: GoBinError::NoPclntab
            }
        ),
        "{error}"
    );
    // Asked again, the failure is remembered, not retried.
    ensure!(bench.set_tls_processes(&[sleeper.pid()])? == status);
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
