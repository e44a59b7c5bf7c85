//! What the traffic tasks and the soak's control loop share: the gate that pauses
//! traffic for quiescent comparisons and restarts, which replicas are up, and the ground
//! truth.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use routeskew_testbed::{Replica, Scenario};
use tokio::sync::RwLock;

use crate::truth::Truth;

/// A replica as the clients address it (its addresses survive restarts).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) web: SocketAddr,
    pub(crate) websecure: SocketAddr,
    routed: Vec<String>,
}

impl Target {
    pub(crate) fn from_replica(r: &Replica) -> Option<Target> {
        Some(Target {
            name: r.name.clone(),
            web: r.web_addr,
            websecure: r.websecure_addr?,
            routed: r.routed_hosts.clone(),
        })
    }

    pub(crate) fn routes(&self, host: &str) -> bool {
        self.routed.iter().any(|h| h == host)
    }
}

pub(crate) struct Shared {
    /// Every visit holds it for reading; the control loop takes it for writing to stop
    /// traffic (it waits for the visits in flight, and none start meanwhile).
    pub(crate) gate: RwLock<()>,
    up: Vec<AtomicBool>,
    truth: Mutex<Truth>,
    stop: AtomicBool,
    pub(crate) targets: Vec<Target>,
    pub(crate) scenario: Scenario,
    /// Host labels the agent was given (anything else is `other`).
    pub(crate) hosts: Vec<String>,
}

impl Shared {
    pub(crate) fn new(targets: Vec<Target>, scenario: Scenario) -> Shared {
        Shared {
            gate: RwLock::new(()),
            up: targets.iter().map(|_| AtomicBool::new(true)).collect(),
            truth: Mutex::new(Truth::default()),
            stop: AtomicBool::new(false),
            hosts: scenario.hosts(),
            targets,
            scenario,
        }
    }

    pub(crate) fn truth(&self) -> MutexGuard<'_, Truth> {
        self.truth.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_up(&self, index: usize, up: bool) {
        if let Some(u) = self.up.get(index) {
            u.store(up, Ordering::SeqCst);
        }
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The next replica that is up after `cursor` (round robin, the way a Service
    /// spreads connections over ready endpoints).
    pub(crate) fn pick(&self, cursor: &mut usize) -> Option<&Target> {
        let n = self.targets.len();
        for _ in 0..n {
            let i = *cursor % n;
            *cursor = cursor.wrapping_add(1);
            if self.up[i].load(Ordering::SeqCst) {
                return Some(&self.targets[i]);
            }
        }
        None
    }

    /// The `host` label the agent gives a Host header value: known hosts (compared as the
    /// agent normalises: case, a port, a trailing dot) keep their name, the rest is `other`.
    pub(crate) fn label(&self, host: &str) -> String {
        label_of(&self.hosts, host)
    }
}

pub(crate) fn label_of(known: &[String], host: &str) -> String {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    routeskew_testbed::tally::host_label(known, &name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_as_the_agent_normalises() {
        let known = vec!["app.test".to_string()];
        assert_eq!(label_of(&known, "app.test"), "app.test");
        assert_eq!(label_of(&known, "APP.Test:80"), "app.test");
        assert_eq!(label_of(&known, "app.test."), "app.test");
        assert_eq!(label_of(&known, "x1.hostile.invalid"), "other");
        assert_eq!(label_of(&known, "app.test:http"), "other");
    }

    #[test]
    fn pick_skips_replicas_that_are_down() {
        let t = |name: &str, port: u16| Target {
            name: name.into(),
            web: SocketAddr::from(([127, 0, 0, 1], port)),
            websecure: SocketAddr::from(([127, 0, 0, 1], port + 1)),
            routed: vec![],
        };
        let s = Shared::new(
            vec![t("a", 1000), t("b", 2000), t("c", 3000)],
            Scenario::default(),
        );
        let mut cur = 0;
        let names = |s: &Shared, cur: &mut usize, n: usize| -> Vec<String> {
            (0..n)
                .map(|_| s.pick(cur).map(|t| t.name.clone()).unwrap_or_default())
                .collect()
        };
        assert_eq!(names(&s, &mut cur, 4), ["a", "b", "c", "a"]);
        s.set_up(1, false);
        assert_eq!(names(&s, &mut cur, 3), ["c", "a", "c"]);
        for i in 0..3 {
            s.set_up(i, false);
        }
        assert!(s.pick(&mut cur).is_none());
    }
}
