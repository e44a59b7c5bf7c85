//! Fixtures the prober's tests share: a configuration, targets, a prober.
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{ProbeConfig, Prober};
use crate::discovery::{Endpoint, Replica, Target, TargetSet};

pub(super) fn cfg(interval_ms: u64) -> ProbeConfig {
    ProbeConfig {
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_secs(1),
        concurrency: 4,
        hosts_per_round: 100,
        hosts: vec![
            "A.test".into(),
            "a.test:80".into(),
            "b.test".into(),
            "".into(),
        ],
        http_path: "/".into(),
        ws_paths: vec!["/ws".parse().unwrap(), "b.test/chat".parse().unwrap()],
        ws_accept: vec![],
        ports: vec![],
        api_port: None,
        series_grace: Duration::from_secs(60),
        version: "0.0.0".into(),
    }
}

pub(super) fn target(name: &str, endpoints: &[(&str, Option<&str>)]) -> Target {
    Target {
        replica: Replica {
            name: name.into(),
            namespace: "ns".into(),
        },
        cgroup_id: 5,
        pids: vec![50],
        attribution: crate::discovery::Attribution::Pids,
        group: "ns".into(),
        ready_since: None,
        endpoints: endpoints
            .iter()
            .map(|(a, n)| Endpoint {
                addr: a.parse().unwrap(),
                port_name: n.map(String::from),
            })
            .collect(),
    }
}

pub(super) fn prober(c: ProbeConfig) -> Prober {
    let (tx, _rx) = mpsc::channel(1);
    let (_wtx, wrx) = watch::channel(TargetSet::default());
    Prober::new(c, tx, wrx)
}

/// Reads from `s` until the end of a request head; false when the peer went away first.
pub(super) async fn read_request_head(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}
