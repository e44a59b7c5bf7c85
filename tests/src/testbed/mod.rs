//! The test bed: real Traefik replicas, each in its own cgroup v2 directory, in front of
//! the Go backend; started by [`Testbed::start`] (see `launch`), torn down by
//! [`Testbed::stop`] or on drop.

mod config;
mod launch;
mod restart;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};

pub use config::{Replica, TestbedConfig};

use crate::process::{self, ManagedChild};
use crate::scenario::Scenario;
use crate::traffic::RoundRobin;
use crate::{cgroup, net, tls};

pub struct Testbed {
    config: TestbedConfig,
    replicas: Vec<Replica>,
    backend_addr: Option<SocketAddr>,
    /// Kept alive for the test bed's lifetime: it is what makes the refused port refuse.
    refused: Option<(socket2::Socket, SocketAddr)>,
    /// Stopped in reverse order: replicas first, the backend last.
    children: Vec<ManagedChild>,
    /// `<v2 mount>/routeskew-test-<pid>-<n>`; the replicas' cgroups are below it.
    cgroup_root: Option<PathBuf>,
    cgroups: Vec<PathBuf>,
    dir: Option<tempfile::TempDir>,
    /// The replicas' certificate, with [`TestbedConfig::tls`].
    certificate: Option<tls::Certificate>,
    stopped: bool,
    /// The Traefik binary every replica runs (a restarted replica runs it again).
    traefik_bin: PathBuf,
}

impl Testbed {
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    pub fn replica(&self, name: &str) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.name == name)
    }

    pub fn broken(&self) -> Option<&Replica> {
        self.replicas.iter().find(|r| r.broken)
    }

    pub fn web_addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.web_addr).collect()
    }

    pub fn round_robin(&self) -> RoundRobin {
        RoundRobin::new(self.web_addrs())
    }

    pub fn backend_addr(&self) -> SocketAddr {
        // Set before start() returns; a Testbed is never handed out without it.
        self.backend_addr.unwrap_or_else(|| net::loopback(0))
    }

    /// The loopback address whose connections are refused (upstream of `refused_host`).
    pub fn refused_addr(&self) -> Option<SocketAddr> {
        self.refused.as_ref().map(|(_, a)| *a)
    }

    pub fn scenario(&self) -> &Scenario {
        &self.config.scenario
    }

    pub fn config(&self) -> &TestbedConfig {
        &self.config
    }

    pub fn cgroup_root(&self) -> Option<&Path> {
        self.cgroup_root.as_deref()
    }

    /// Working directory with every config and log file.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// Pids of every process the test bed started (for leak checks).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(ManagedChild::pid).collect()
    }

    /// A readable dump of every replica's logs, for failure messages.
    pub fn log_tails(&self, max_bytes: u64) -> String {
        let mut out = String::new();
        for r in &self.replicas {
            out.push_str(&format!("--- {} ({}) ---\n", r.name, r.log_file.display()));
            out.push_str(&process::tail_file(&r.log_file, max_bytes));
        }
        for c in &self.children {
            if c.name() == "backend" {
                out.push_str(&format!("--- backend ({}) ---\n", c.log_path().display()));
                out.push_str(&c.log_tail(max_bytes));
            }
        }
        out
    }

    /// Stops every process (SIGTERM, then SIGKILL after a grace period), waits for them
    /// and removes every cgroup the test bed created. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        while let Some(mut child) = self.children.pop() {
            child.stop(Duration::from_secs(5));
        }
        let mut errors = Vec::new();
        for cg in self.cgroups.drain(..).rev() {
            if let Err(e) = cgroup::remove_tree(&cg, Duration::from_secs(5)) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Some(root) = self.cgroup_root.take() {
            if let Err(e) = cgroup::remove_tree(&root, Duration::from_secs(5)) {
                errors.push(format!("{e:#}"));
            }
        }
        self.refused = None;
        if std::env::var_os("ROUTESKEW_KEEP_TESTBED").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("routeskew-testbed: keeping {}", dir.keep().display());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("test bed cleanup incomplete: {}", errors.join("; "))
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("routeskew-testbed: {e:#}");
        }
    }
}
