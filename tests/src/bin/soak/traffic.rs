//! The mixed traffic and its ground truth: plaintext HTTP/1.1 (keep-alive and close),
//! WebSocket upgrades, router misses (the broken replica's missing host and a host no
//! replica routes), a backend 404, upstream failures (502 refused, 503 no server, 504
//! timeout) on the `web` entrypoints; HTTP/1.1, HTTP/2 and `wss` over TLS on the
//! `websecure` ones. Every answer is recorded as seen; one that differs from what the
//! test bed's configuration says is also counted as unexpected.

use std::sync::Arc;
use std::time::Duration;

use routeskew_testbed::http::{self, HttpConn, Response};
use routeskew_testbed::plans::UNROUTED_HOST;
use routeskew_testbed::scenario::path;
use routeskew_testbed::tally::class_of_status;
use routeskew_testbed::{expect, tls, ws};

use crate::shared::{Shared, Target};

/// How long curl holds an upgraded `wss` connection (it speaks no WebSocket).
const WSS_HOLD: Duration = Duration::from_millis(300);

/// How a visit reaches its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `n` GETs on one plaintext keep-alive connection (the last one closes it).
    KeepAlive(usize),
    /// One GET on its own plaintext connection, `Connection: close`.
    Close,
    /// One WebSocket upgrade on its own plaintext connection.
    Ws,
    /// `n` GETs over TLS on one HTTP/1.1 keep-alive connection (curl).
    TlsH1(usize),
    /// `n` GETs as streams of one HTTP/2 connection over TLS (curl).
    TlsH2(usize),
    /// One upgrade over TLS (curl), held briefly.
    Wss,
}

#[derive(Debug, Clone)]
struct Visit {
    host: String,
    path: &'static str,
    kind: Kind,
}

fn v(host: &str, path: &'static str, kind: Kind) -> Visit {
    Visit {
        host: host.to_string(),
        path,
        kind,
    }
}

/// Plaintext round `round`: page loads, the broken replica's missing host (HTTP and
/// WebSocket), a WebSocket every replica routes, backend 404s, an unrouted host, and
/// now and then each upstream failure.
fn plain_round(s: &Shared, round: u64) -> Vec<Visit> {
    let sc = &s.scenario;
    let mut out = vec![
        v(&sc.app_host, path::ROOT, Kind::KeepAlive(8)),
        v(&sc.app_host, path::ROOT, Kind::Close),
        v(&sc.missing_host, path::ROOT, Kind::KeepAlive(3)),
        v(&sc.ws_host, path::WS, Kind::Ws),
        v(&sc.missing_host, path::WS, Kind::Ws),
        v(&sc.notfound_host, path::NOTFOUND, Kind::Close),
        v(&sc.notfound_host, path::MISSING, Kind::KeepAlive(2)),
        v(UNROUTED_HOST, path::ROOT, Kind::Close),
        v(&sc.app_host, path::CHUNKED, Kind::KeepAlive(1)),
    ];
    if round.is_multiple_of(2) {
        out.push(v(&sc.refused_host, path::ROOT, Kind::Close));
        out.push(v(&sc.unavailable_host, path::ROOT, Kind::KeepAlive(2)));
    }
    if round.is_multiple_of(25) {
        // Holds the visit for the 1 s response-header timeout.
        out.push(v(&sc.slow_host, path::SLOW, Kind::Close));
    }
    out
}

/// TLS round: HTTP/1.1 and HTTP/2 page loads, router misses over both, a backend 404,
/// and `wss` upgrades.
fn tls_round(s: &Shared, round: u64) -> Vec<Visit> {
    let sc = &s.scenario;
    let mut out = vec![
        v(&sc.app_host, path::ROOT, Kind::TlsH1(5)),
        v(&sc.app_host, path::ROOT, Kind::TlsH2(4)),
        v(&sc.missing_host, path::ROOT, Kind::TlsH2(2)),
        v(&sc.missing_host, path::ROOT, Kind::TlsH1(1)),
        v(&sc.ws_host, path::WS, Kind::Wss),
        v(&sc.missing_host, path::WS, Kind::Wss),
    ];
    if round.is_multiple_of(2) {
        out.push(v(UNROUTED_HOST, path::ROOT, Kind::TlsH2(1)));
        out.push(v(&sc.notfound_host, path::NOTFOUND, Kind::TlsH1(2)));
        out.push(v(&sc.unavailable_host, path::ROOT, Kind::TlsH2(1)));
    }
    out
}

/// The status and class a replica must answer a visit with.
fn expected(s: &Shared, t: &Target, visit: &Visit) -> (u16, &'static str) {
    let sc = &s.scenario;
    let upgrade = matches!(visit.kind, Kind::Ws | Kind::Wss);
    if !t.routes(&visit.host) {
        return (404, "router_miss");
    }
    let status = match visit.host.as_str() {
        h if h == sc.refused_host => 502,
        h if h == sc.unavailable_host => 503,
        h if h == sc.slow_host => 504,
        h if h == sc.notfound_host => 404,
        _ if upgrade => 101,
        _ => 200,
    };
    (status, class_of_status(status, false))
}

/// Records one answer: as seen, and as unexpected when it is not what it must be.
fn record(s: &Shared, t: &Target, visit: &Visit, status: u16, class: &'static str) {
    let want = expected(s, t, visit);
    let label = s.label(&visit.host);
    let mut truth = s.truth();
    truth.counts.sent += 1;
    if (status, class) != want {
        truth.counts.unexpected += 1;
        eprintln!(
            "soak: unexpected answer from {} for Host {}: {status} {class}, want {} {}",
            t.name, visit.host, want.0, want.1
        );
    }
    if matches!(visit.kind, Kind::Ws | Kind::Wss) {
        truth.upgrade(&t.name, &label, status, class);
    } else {
        truth.http(&t.name, &label, class);
    }
    if visit.host == s.scenario.refused_host && status == 502 {
        truth.upstream_refused(&t.name);
    }
}

fn client_error(s: &Shared, t: &Target, visit: &Visit, e: &anyhow::Error) {
    s.truth().counts.client_errors += 1;
    // The error's own text may quote the request: only the host and the kind are shown.
    let _ = e;
    eprintln!(
        "soak: client error on {} for Host {} ({:?})",
        t.name, visit.host, visit.kind
    );
}

/// The class of a plaintext answer: the router-miss signature decides a 404.
fn class_of(r: &Response) -> &'static str {
    class_of_status(r.status, expect::is_traefik_router_miss(r))
}

async fn send(s: &Shared, t: &Target, visit: &Visit) {
    let (host, p) = (visit.host.clone(), visit.path);
    match visit.kind {
        Kind::KeepAlive(n) => {
            let mut conn = match HttpConn::connect(t.web).await {
                Ok(c) => c,
                Err(e) => return client_error(s, t, visit, &e),
            };
            for i in 0..n {
                match conn
                    .round_trip(&http::get_request(&host, p, i + 1 == n))
                    .await
                {
                    Ok(r) => record(s, t, visit, r.status, class_of(&r)),
                    Err(e) => return client_error(s, t, visit, &e),
                }
            }
        }
        Kind::Close => match http::get_once(t.web, &host, p).await {
            Ok(r) => record(s, t, visit, r.status, class_of(&r)),
            Err(e) => client_error(s, t, visit, &e),
        },
        Kind::Ws => match ws::upgrade(t.web, &host, p).await {
            Ok(o) => {
                let miss = o.status == 404 && o.body == expect::NOTFOUND_BODY;
                record(s, t, visit, o.status, class_of_status(o.status, miss));
            }
            Err(e) => client_error(s, t, visit, &e),
        },
        Kind::TlsH1(_) | Kind::TlsH2(_) | Kind::Wss => {
            let (addr, kind) = (t.websecure, visit.kind);
            let got = tokio::task::spawn_blocking(move || match kind {
                Kind::TlsH1(n) => tls::curl_https(addr, &host, &vec![p; n]),
                Kind::TlsH2(n) => tls::curl_https_h2(addr, &host, &vec![p; n]),
                _ => tls::curl_wss_upgrade(addr, &host, p, WSS_HOLD).map(|c| vec![c]),
            })
            .await;
            match got {
                Ok(Ok(codes)) => {
                    for code in codes {
                        // curl shows no body: a 404 is a router miss where the replica
                        // has no router for the host (the plaintext visits check the
                        // signature of the same answers).
                        let miss = code == 404 && !t.routes(&visit.host);
                        record(s, t, visit, code, class_of_status(code, miss));
                    }
                }
                Ok(Err(e)) => client_error(s, t, visit, &e),
                Err(e) => client_error(s, t, visit, &anyhow::Error::new(e)),
            }
        }
    }
}

/// Sends rounds of `round_of` until the soak stops, one visit at a time to the next
/// replica that is up, pausing `pace` between visits.
async fn run(s: Arc<Shared>, pace: Duration, round_of: fn(&Shared, u64) -> Vec<Visit>) {
    let mut cursor = 0usize;
    let mut round = 0u64;
    while !s.stopping() {
        for visit in round_of(&s, round) {
            if s.stopping() {
                return;
            }
            {
                let _open = s.gate.read().await;
                if s.stopping() {
                    return;
                }
                if let Some(t) = s.pick(&mut cursor) {
                    send(&s, t, &visit).await;
                }
            }
            tokio::time::sleep(pace).await;
        }
        round += 1;
    }
}

/// The plaintext traffic task.
pub(crate) async fn plain(s: Arc<Shared>, pace: Duration) {
    run(s, pace, plain_round).await;
}

/// The TLS traffic task (curl processes: paced more slowly).
pub(crate) async fn secure(s: Arc<Shared>, pace: Duration) {
    run(s, pace, tls_round).await;
}
