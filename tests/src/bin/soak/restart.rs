//! Replica restarts: the replica leaves the rotation (after the visits in flight to it
//! end), its Traefik stops, connections to it are refused for the downtime (counted,
//! outside the ground truth), a new Traefik starts in the same cgroup on the same ports,
//! and once it serves its routers and the agent watches its new process (its log names
//! the new pid and `/readyz` is 200) the replica rejoins the rotation. With
//! `--rejoin-at-once` it rejoins as soon as Traefik serves, as behind a Service; the
//! agent's pick-up time is measured either way.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use routeskew_testbed::tally::class_of_status;
use routeskew_testbed::{http, Agent, Testbed};
use tokio::net::TcpStream;

use crate::shared::Shared;

/// How long Traefik gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Time between connection attempts to a replica that is down.
const DOWN_PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long the agent may take to watch a restarted replica's new process.
const PICK_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// What one restart did.
#[derive(Debug, Clone)]
pub(crate) struct Restarted {
    pub(crate) name: String,
    pub(crate) old_pid: u32,
    pub(crate) new_pid: u32,
    /// From leaving the rotation to rejoining it.
    pub(crate) out_of_rotation: Duration,
    /// From the new Traefik serving its routers to the agent watching its process.
    pub(crate) pick_up: Duration,
}

/// Puts replica `index` back into the rotation (between two visits).
async fn rejoin(s: &Shared, index: usize) {
    let _closed = s.gate.write().await;
    s.set_up(index, true);
}

/// Whether the agent's log says it watches `pid` (`pids=[…]` of a replica line).
fn log_names_pid(log: &str, pid: u32) -> bool {
    let (alone, first, last) = (format!("[{pid}]"), format!("[{pid},"), format!(" {pid}]"));
    log.lines().any(|l| {
        l.contains("replica") && (l.contains(&alone) || l.contains(&first) || l.contains(&last))
    })
}

/// Waits until the agent watches `pid`: its log names the pid, then `/readyz` is 200.
async fn agent_watches(agent: &Agent, pid: u32) -> Result<()> {
    let deadline = Instant::now() + PICK_UP_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(&agent.log_file).unwrap_or_default();
        if log_names_pid(&log, pid) {
            let ready = http::get_local(agent.addr, "/readyz").await?;
            if ready.status == 200 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the agent did not pick up pid {pid} within {PICK_UP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn restart(
    bed: &mut Testbed,
    agent: &Agent,
    s: &Shared,
    index: usize,
    downtime: Duration,
    at_once: bool,
) -> Result<Restarted> {
    let target = s.targets[index].clone();
    let old_pid = bed.replicas()[index].pid;
    {
        let _closed = s.gate.write().await;
        s.set_up(index, false);
    }
    let left = Instant::now();
    bed.stop_replica(index, STOP_GRACE)?;
    let until = Instant::now() + downtime;
    while Instant::now() < until {
        for addr in [target.web, target.websecure] {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    s.truth().counts.refused_down += 1;
                }
                Err(e) => eprintln!("soak: connecting to {} while down: {e}", target.name),
                Ok(stream) => {
                    // Nothing is sent on it: no answer can reach the agent's counters.
                    drop(stream);
                    s.truth().counts.accepted_down += 1;
                }
            }
        }
        tokio::time::sleep(DOWN_PROBE_EVERY).await;
    }
    let (new_pid, api_answers) = bed.start_replica(index).await?;
    {
        // The readiness checks asked the new process's API (Host `127.0.0.1:<port>`,
        // labelled `other`; a router miss while its API router is not up yet): the agent
        // counts those answers if it watched the process already, and not otherwise.
        let mut truth = s.truth();
        for (status, router_miss) in api_answers {
            truth.counts.api_answers += 1;
            truth.tolerate(&target.name, class_of_status(status, router_miss));
        }
    }
    let serving = Instant::now();
    if at_once {
        rejoin(s, index).await;
    }
    let out_of_rotation = left.elapsed();
    agent_watches(agent, new_pid).await?;
    let pick_up = serving.elapsed();
    if !at_once {
        rejoin(s, index).await;
    }
    Ok(Restarted {
        name: target.name,
        old_pid,
        new_pid,
        out_of_rotation: if at_once {
            out_of_rotation
        } else {
            left.elapsed()
        },
        pick_up,
    })
}

#[cfg(test)]
mod tests {
    use super::log_names_pid;

    #[test]
    fn finds_the_pid_in_replica_lines() {
        let log = "2026-12-05T10:00:00Z  INFO routeskew::agent::scan: replica's processes changed replica=traefik-1 namespace=local pids=[9528]\n\
                   INFO other: unrelated pids=[77]\n";
        assert!(log_names_pid(log, 9528));
        assert!(!log_names_pid(log, 952));
        assert!(!log_names_pid(log, 77));
        assert!(log_names_pid("watching replica pids=[1, 2]", 1));
        assert!(log_names_pid("watching replica pids=[1, 2]", 2));
        assert!(!log_names_pid("watching replica pids=[1, 2]", 12));
    }
}
