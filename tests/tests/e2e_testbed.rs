//! The test bed itself, without the agent: real Traefik replicas in their own cgroups
//! answer every case of the scenario with the exact bytes the agent's classifier is
//! built on, their access logs agree with what the client saw, and nothing outlives the
//! test bed. Run as root: `cargo test -p routeskew-testbed --test e2e_testbed`.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use routeskew_testbed::expect::{self, TRAEFIK_404_HEAD};
use routeskew_testbed::http::Response;
use routeskew_testbed::path;
use routeskew_testbed::{cgroup, process, traffic, ws, ConnMode, Testbed, TestbedConfig};

/// (replica, host, path, status) → count, as the client saw it.
type Tally = BTreeMap<(String, String, String, u16), usize>;

fn record(tally: &mut Tally, replica: &str, host: &str, path: &str, status: u16, n: usize) {
    *tally
        .entry((replica.into(), host.into(), path.into(), status))
        .or_default() += n;
}

/// Traefik's exact head (but its Date, and Connection: close when it closed) and body.
fn assert_page(resp: &Response, head: &str, body: &[u8], what: &str) {
    assert_eq!(
        resp.head_without_date(),
        expect::head_for(head, resp.request_closed),
        "{what}: head"
    );
    assert_eq!(resp.body, body, "{what}: body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_answers_every_case_with_exact_bytes() {
    let mut bed = Testbed::start(TestbedConfig::default())
        .await
        .expect("starting the test bed");
    let sc = bed.scenario().clone();
    assert_eq!(bed.replicas().len(), 3);
    let broken = bed.broken().expect("a broken replica").name.clone();
    assert_eq!(
        broken, "traefik-2",
        "the default broken replica is the second"
    );

    let mut sent = Tally::new();
    for r in bed.replicas().to_vec() {
        let addr = r.web_addr;
        let ctx = |what: &str| format!("{what} via {} ({})", r.name, addr);

        // Routed everywhere: the backend's own 200, on fresh and kept-alive connections.
        for mode in [ConnMode::NewConnection, ConnMode::KeepAlive] {
            let rs = traffic::send_http(addr, &sc.app_host, path::ROOT, 3, mode)
                .await
                .unwrap();
            for resp in &rs {
                assert_eq!(resp.status, 200, "{}", ctx("app"));
                assert_eq!(
                    resp.body,
                    expect::backend_root_body(&sc.app_host),
                    "{}",
                    ctx("app body")
                );
            }
            record(&mut sent, &r.name, &sc.app_host, path::ROOT, 200, rs.len());
        }

        // The host the broken replica lacks: Traefik's own 404 there, 200 elsewhere.
        let rs = traffic::send_http(addr, &sc.missing_host, path::ROOT, 2, ConnMode::KeepAlive)
            .await
            .unwrap();
        for resp in &rs {
            if r.broken {
                assert_page(
                    resp,
                    TRAEFIK_404_HEAD,
                    expect::NOTFOUND_BODY,
                    &ctx("router miss"),
                );
                assert!(expect::is_traefik_router_miss(resp));
            } else {
                assert_eq!(
                    resp.status,
                    200,
                    "{}",
                    ctx("missing host on a healthy replica")
                );
                assert!(!expect::is_traefik_router_miss(resp));
            }
        }
        let status = if r.broken { 404 } else { 200 };
        record(
            &mut sent,
            &r.name,
            &sc.missing_host,
            path::ROOT,
            status,
            rs.len(),
        );

        // A backend http.NotFound relayed by Traefik: same status and body as the router
        // miss, but sorted headers, on every replica.
        let rs = traffic::send_http(
            addr,
            &sc.notfound_host,
            path::NOTFOUND,
            2,
            ConnMode::NewConnection,
        )
        .await
        .unwrap();
        for resp in &rs {
            assert_page(
                resp,
                expect::RELAYED_NOTFOUND_HEAD,
                expect::NOTFOUND_BODY,
                &ctx("relayed 404"),
            );
            assert!(
                !expect::is_traefik_router_miss(resp),
                "{}",
                ctx("relayed 404 mistaken for a miss")
            );
        }
        record(
            &mut sent,
            &r.name,
            &sc.notfound_host,
            path::NOTFOUND,
            404,
            rs.len(),
        );
        let rs = traffic::send_http(
            addr,
            &sc.notfound_host,
            path::MISSING,
            1,
            ConnMode::NewConnection,
        )
        .await
        .unwrap();
        assert_eq!(rs[0].status, 404, "{}", ctx("custom 404"));
        assert_eq!(rs[0].body, br#"{"error":"no such item"}"#);
        assert_eq!(rs[0].header("Content-Type"), Some("application/json"));
        record(&mut sent, &r.name, &sc.notfound_host, path::MISSING, 404, 1);

        // Chunked body through Traefik.
        let rs = traffic::send_http(addr, &sc.app_host, path::CHUNKED, 1, ConnMode::KeepAlive)
            .await
            .unwrap();
        assert_eq!(rs[0].status, 200);
        assert_eq!(
            rs[0].header("Transfer-Encoding"),
            Some("chunked"),
            "{}",
            ctx("chunked")
        );
        assert_eq!(rs[0].body_text(), "chunk 0\nchunk 1\nchunk 2\n");
        record(&mut sent, &r.name, &sc.app_host, path::CHUNKED, 200, 1);

        // Upstream refuses: 502.
        let rs = traffic::send_http(
            addr,
            &sc.refused_host,
            path::ROOT,
            2,
            ConnMode::NewConnection,
        )
        .await
        .unwrap();
        for resp in &rs {
            assert_page(
                resp,
                expect::BAD_GATEWAY_HEAD,
                expect::BAD_GATEWAY_BODY,
                &ctx("502"),
            );
        }
        record(
            &mut sent,
            &r.name,
            &sc.refused_host,
            path::ROOT,
            502,
            rs.len(),
        );

        // No server: 503.
        let rs = traffic::send_http(
            addr,
            &sc.unavailable_host,
            path::ROOT,
            1,
            ConnMode::NewConnection,
        )
        .await
        .unwrap();
        assert_page(
            &rs[0],
            expect::NO_SERVER_HEAD,
            expect::NO_SERVER_BODY,
            &ctx("503"),
        );
        record(&mut sent, &r.name, &sc.unavailable_host, path::ROOT, 503, 1);

        // Upstream too slow: 504 after the configured timeout, not the backend's 3 s.
        let t0 = Instant::now();
        let rs = traffic::send_http(addr, &sc.slow_host, path::SLOW, 1, ConnMode::NewConnection)
            .await
            .unwrap();
        let took = t0.elapsed();
        assert_page(
            &rs[0],
            expect::GATEWAY_TIMEOUT_HEAD,
            expect::GATEWAY_TIMEOUT_BODY,
            &ctx("504"),
        );
        assert!(
            took >= sc.slow_timeout && took < sc.slow_timeout + Duration::from_millis(1500),
            "504 after {took:?}, timeout is {:?}",
            sc.slow_timeout
        );
        record(&mut sent, &r.name, &sc.slow_host, path::SLOW, 504, 1);

        // WebSocket: the always-routed host upgrades and echoes everywhere; the missing
        // host fails the upgrade with Traefik's 404 on the broken replica only.
        for o in traffic::send_ws(addr, &sc.ws_host, path::WS, 2)
            .await
            .unwrap()
        {
            assert_eq!(o.status, 101, "{}", ctx("ws upgrade"));
            assert!(o.echoed, "{}", ctx("ws echo"));
        }
        record(&mut sent, &r.name, &sc.ws_host, path::WS, 101, 2);
        for o in traffic::send_ws(addr, &sc.missing_host, path::WS, 2)
            .await
            .unwrap()
        {
            if r.broken {
                assert_eq!(o.status, 404, "{}", ctx("ws to the missing host"));
                assert_eq!(o.body, expect::NOTFOUND_BODY);
            } else {
                assert_eq!(o.status, 101, "{}", ctx("ws to the missing host"));
                assert!(o.echoed);
            }
        }
        let status = if r.broken { 404 } else { 101 };
        record(&mut sent, &r.name, &sc.missing_host, path::WS, status, 2);

        // A host nobody routes: Traefik's 404 on every replica (what "legitimate" router
        // misses look like: they hit all replicas alike).
        let rs = traffic::send_http(addr, "nobody.test", path::ROOT, 1, ConnMode::NewConnection)
            .await
            .unwrap();
        assert!(
            expect::is_traefik_router_miss(&rs[0]),
            "{}",
            ctx("unrouted host")
        );
        record(&mut sent, &r.name, "nobody.test", path::ROOT, 404, 1);
    }

    // The replicas' own access logs tell the same story, entry for entry, and name no
    // router exactly for the router misses.
    let deadline = Instant::now() + Duration::from_secs(5);
    let logged = loop {
        let mut logged = Tally::new();
        let mut misses: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in bed.replicas() {
            for e in r.access_log_entries().unwrap() {
                record(&mut logged, &r.name, &e.host, &e.path, e.client_status(), 1);
                if e.router_miss() {
                    misses
                        .entry(r.name.clone())
                        .or_default()
                        .push(format!("{}{}", e.host, e.path));
                }
            }
        }
        if logged == sent || Instant::now() > deadline {
            break (logged, misses);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        logged.0, sent,
        "access logs disagree with what the client saw"
    );
    for r in bed.replicas() {
        let mut want = vec!["nobody.test/".to_string()];
        if r.broken {
            want.extend(vec![format!("{}/", sc.missing_host); 2]);
            want.extend(vec![format!("{}/ws", sc.missing_host); 2]);
        }
        want.sort();
        let mut got = logged.1.get(&r.name).cloned().unwrap_or_default();
        got.sort();
        assert_eq!(got, want, "router misses in {}'s access log", r.name);
    }

    let had = resources(&bed);
    bed.stop().unwrap();
    assert_gone(had, "stop()");
}

#[tokio::test]
async fn replicas_live_in_their_own_cgroups_with_their_names() {
    let bed = Testbed::start(TestbedConfig {
        replicas: 2,
        broken_replica: None,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    assert!(bed.broken().is_none());
    let root = bed.cgroup_root().unwrap().to_path_buf();
    let mut ids = Vec::new();
    for r in bed.replicas() {
        assert_eq!(r.cgroup_path.parent(), Some(root.as_path()));
        assert_eq!(
            r.cgroup_path.file_name().unwrap().to_str(),
            Some(r.name.as_str())
        );
        // The process (and nothing else) is in its cgroup, and the id is the inode.
        assert_eq!(cgroup::of_pid(r.pid).unwrap(), r.cgroup_path);
        assert_eq!(cgroup::procs(&r.cgroup_path).unwrap(), vec![r.pid]);
        assert_eq!(cgroup::cgroup_id(&r.cgroup_path).unwrap(), r.cgroup_id);
        ids.push(r.cgroup_id);
        let environ = std::fs::read(format!("/proc/{}/environ", r.pid)).unwrap();
        let want = format!("ROUTESKEW_REPLICA={}", r.name);
        assert!(
            environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes()),
            "{} lacks {want} in its environment",
            r.name
        );
        // Every router of the scenario is there on a healthy replica.
        let mut want_routers: Vec<String> = bed
            .scenario()
            .routes()
            .iter()
            .map(|r| format!("{}@file", r.name))
            .collect();
        want_routers.sort();
        assert_eq!(bed.routers_of(r).await.unwrap(), want_routers);
        // The backend is not in a replica's cgroup.
        assert_ne!(cgroup::of_pid(bed.pids()[0]).unwrap(), r.cgroup_path);
    }
    ids.dedup();
    assert_eq!(ids.len(), 2, "distinct cgroup ids");

    // A probe through the round-robin hits each replica in turn.
    let mut rr = bed.round_robin();
    let mut hits = [0usize; 2];
    for _ in 0..4 {
        let (i, resp) = rr.get(&bed.scenario().app_host, path::ROOT).await.unwrap();
        assert_eq!(resp.status, 200);
        hits[i] += 1;
    }
    assert_eq!(hits, [2, 2]);
    let (_, o) = rr
        .upgrade(&bed.scenario().missing_host, path::WS)
        .await
        .unwrap();
    assert!(o.upgraded(), "no replica is broken here");
    drop(bed);
}

/// Pids and cgroup directories a test bed had.
type Resources = (Vec<u32>, Vec<std::path::PathBuf>);

/// Every process and cgroup directory of `bed`.
fn resources(bed: &Testbed) -> Resources {
    let mut cgroups: Vec<_> = bed
        .replicas()
        .iter()
        .map(|r| r.cgroup_path.clone())
        .collect();
    cgroups.push(
        bed.cgroup_root()
            .expect("the test bed's cgroup root")
            .to_path_buf(),
    );
    (bed.pids(), cgroups)
}

/// None of them outlived `what`.
fn assert_gone((pids, cgroups): Resources, what: &str) {
    for pid in pids {
        assert!(!process::pid_alive(pid), "process {pid} survived {what}");
    }
    for cg in cgroups {
        assert!(!cg.exists(), "cgroup {} survived {what}", cg.display());
    }
}

/// Dropping the test bed, also while unwinding from a panic, leaves no process and no
/// cgroup behind.
#[test]
fn nothing_survives_a_panicking_test() {
    let seen: Arc<Mutex<Option<Resources>>> = Arc::default();
    let seen2 = seen.clone();
    let result = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let bed = Testbed::start(TestbedConfig::default())
                .await
                .expect("start");
            let had = resources(&bed);
            // An upgraded WebSocket in flight at the moment of the panic.
            let r = &bed.replicas()[0];
            let o = ws::upgrade(r.web_addr, &bed.scenario().ws_host, path::WS)
                .await
                .unwrap();
            assert!(o.upgraded());
            *seen2.lock().unwrap() = Some(had);
            panic!("deliberate panic with a running test bed");
        })
    })
    .join();
    assert!(result.is_err(), "the inner test was meant to panic");
    let had = seen.lock().unwrap().take().expect("the test bed started");
    assert_eq!(had.0.len(), 4, "backend + 3 replicas");
    assert_gone(had, "the panic");
}

/// Failing checks must fail: a replica that does route the host is not mistaken for the
/// broken one, and the router-miss signature rejects a relayed backend 404.
#[tokio::test]
async fn signature_checks_reject_lookalikes() {
    let bed = Testbed::start(TestbedConfig {
        replicas: 1,
        broken_replica: None,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let r = &bed.replicas()[0];
    let sc = bed.scenario();
    let relayed = traffic::send_http(
        r.web_addr,
        &sc.notfound_host,
        path::NOTFOUND,
        1,
        ConnMode::KeepAlive,
    )
    .await
    .unwrap();
    assert_eq!(relayed[0].status, 404);
    assert_eq!(relayed[0].body, expect::NOTFOUND_BODY);
    assert!(!expect::is_traefik_router_miss(&relayed[0]));
    let routed = traffic::send_http(
        r.web_addr,
        &sc.missing_host,
        path::ROOT,
        1,
        ConnMode::KeepAlive,
    )
    .await
    .unwrap();
    assert!(!expect::is_traefik_router_miss(&routed[0]));
    let miss = traffic::send_http(
        r.web_addr,
        "unknown.test",
        path::ROOT,
        1,
        ConnMode::KeepAlive,
    )
    .await
    .unwrap();
    assert!(expect::is_traefik_router_miss(&miss[0]));
}
