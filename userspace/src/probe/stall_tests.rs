//! A replica that stops answering holds up only its own probes: the healthy replica
//! beside it keeps its pace.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::test_support::{cfg, read_request_head};
use super::Prober;
use crate::discovery::{Attribution, Endpoint, Replica, Target, TargetSet};
use crate::event::{EventKind, Origin};

/// Answers its first `answered` requests with a 200, then accepts and stays silent.
async fn server(answered: usize) -> SocketAddr {
    server_with(answered, "ok").await
}

/// [`server`] answering `body`.
async fn server_with(answered: usize, body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut served = 0;
        let mut silent = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            if served >= answered {
                silent.push(s);
                continue;
            }
            served += 1;
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

fn target(name: &str, cgroup_id: u64, addr: SocketAddr) -> Target {
    Target {
        replica: Replica {
            name: name.into(),
            namespace: "ns".into(),
        },
        cgroup_id,
        pids: vec![cgroup_id as u32],
        attribution: Attribution::Pids,
        group: "traefik".into(),
        ready_since: None,
        endpoints: vec![Endpoint {
            addr,
            port_name: None,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_does_not_stall_its_siblings() {
    let healthy = server(usize::MAX).await;
    // Answers the endpoint check (plaintext, then nothing more), then hangs.
    let hanging = server(1).await;
    let mut c = cfg(1000);
    let timeout = Duration::from_secs(3);
    c.timeout = timeout;
    c.hosts = (0..200).map(|i| format!("h{i}.test")).collect();
    c.ws_paths = Vec::new();
    let (tx, mut rx) = mpsc::channel(4096);
    let (_wtx, wrx) = watch::channel(TargetSet::new(vec![
        target("healthy", 1, healthy),
        target("hanging", 2, hanging),
    ]));
    let prober = Prober::new(c, tx, wrx);
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(prober.run());
    let mut rounds = 0;
    let mut first_silent: Option<(Duration, bool)> = None;
    let deadline = started + Duration::from_secs(10);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if let EventKind::ProbeVerdict(v) = &ev.kind {
            match ev.origin {
                Origin { cgroup_id: 1, .. } if v.host == "h0.test" => rounds += 1,
                Origin { cgroup_id: 2, .. } if first_silent.is_none() => {
                    first_silent = Some((started.elapsed(), v.success));
                }
                _ => {}
            }
        }
    }
    task.abort();
    // The hanging replica's 200 checks take 50 timeouts at 4 at once: before replicas
    // ran apart every round waited for them, and its verdicts came at its round's end.
    assert!(rounds >= 3, "healthy replica judged {rounds} times in 10 s");
    let (at, success) = first_silent.expect("a verdict on the hanging replica");
    assert!(!success, "the hanging replica judged healthy");
    // One interval (with its jitter) and one timeout, plus the endpoint check.
    assert!(
        at <= Duration::from_millis(1100) + timeout + Duration::from_secs(1),
        "{at:?}"
    );
}

/// Router inventories are fetched side by side: APIs that stop answering after their
/// endpoint check cost one budget together, not one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_apis_are_waited_for_together() {
    const APIS: u64 = 4;
    let mut targets = Vec::new();
    for i in 0..APIS {
        // An empty router list: the endpoint check takes it for Traefik's API.
        targets.push(target(&format!("r{i}"), 10 + i, server_with(1, "[]").await));
    }
    let mut c = cfg(1000);
    let timeout = Duration::from_millis(500);
    c.timeout = timeout;
    let (tx, _rx) = mpsc::channel(4096);
    let (_wtx, wrx) = watch::channel(TargetSet::default());
    let mut prober = Prober::new(c, tx, wrx);
    let targets = TargetSet::new(targets);
    let started = std::time::Instant::now();
    prober.prepare(&targets).await;
    let took = started.elapsed();
    // One after another they would take APIS timeouts (2 s).
    assert!(
        took < timeout * 3,
        "{APIS} silent APIs took {took:?} with a {timeout:?} timeout"
    );
    assert!(
        took >= timeout,
        "the fetches cannot have ended before their timeout"
    );
}
