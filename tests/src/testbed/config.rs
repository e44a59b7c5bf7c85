//! How a test bed is configured, and the replicas it started.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::accesslog;
use crate::scenario::Scenario;

#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// Number of Traefik replicas.
    pub replicas: usize,
    /// 0-based index of the replica that lacks the routers of
    /// [`Scenario::missing_on_broken`]; `None` for an all-healthy fleet.
    /// The default is the second replica, `traefik-2`.
    pub broken_replica: Option<usize>,
    pub scenario: Scenario,
    /// Traefik's JSON access log per replica (ground truth for cross-checks).
    pub access_log: bool,
    /// Traefik log level (`ROUTESKEW_TRAEFIK_LOG` overrides).
    pub traefik_log_level: String,
    /// How long to wait for every replica to serve its routers.
    pub ready_timeout: Duration,
    /// Also a `websecure` (TLS) entrypoint per replica, with a self-signed certificate
    /// made by the test bed, serving every route (as `<name>-tls` routers).
    pub tls: bool,
    /// The Traefik binary; `None` for [`crate::paths::traefik_binary`].
    pub traefik: Option<PathBuf>,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        TestbedConfig {
            replicas: 3,
            broken_replica: Some(1),
            scenario: Scenario::default(),
            access_log: true,
            traefik_log_level: std::env::var("ROUTESKEW_TRAEFIK_LOG")
                .unwrap_or_else(|_| "INFO".into()),
            ready_timeout: Duration::from_secs(30),
            tls: false,
            traefik: None,
        }
    }
}

/// One Traefik replica as the agent should see it.
#[derive(Debug, Clone)]
pub struct Replica {
    /// 0-based position in [`Testbed::replicas`].
    pub index: usize,
    /// `traefik-<index+1>`; also its `ROUTESKEW_REPLICA` and cgroup directory name.
    pub name: String,
    pub pid: u32,
    pub cgroup_path: PathBuf,
    /// Inode of the cgroup directory = the id `bpf_get_current_cgroup_id` reports.
    pub cgroup_id: u64,
    pub web_addr: SocketAddr,
    /// The `websecure` entrypoint, with [`TestbedConfig::tls`].
    pub websecure_addr: Option<SocketAddr>,
    /// Traefik API (`api.insecure`), e.g. `/api/http/routers`.
    pub api_addr: SocketAddr,
    /// Lacks the routers of [`Scenario::missing_on_broken`].
    pub broken: bool,
    /// Hosts this replica has a router for.
    pub routed_hosts: Vec<String>,
    pub config_dir: PathBuf,
    pub log_file: PathBuf,
    pub access_log: Option<PathBuf>,
}

impl Replica {
    pub fn routes(&self, host: &str) -> bool {
        self.routed_hosts.iter().any(|h| h == host)
    }

    /// Entries of this replica's access log for the `web` entrypoint.
    pub fn access_log_entries(&self) -> Result<Vec<accesslog::Entry>> {
        let path = self
            .access_log
            .as_ref()
            .context("the test bed was started without access logs")?;
        accesslog::read_web(path)
    }

    /// Entries of this replica's access log for the `websecure` entrypoint.
    pub fn websecure_access_log_entries(&self) -> Result<Vec<accesslog::Entry>> {
        let path = self
            .access_log
            .as_ref()
            .context("the test bed was started without access logs")?;
        accesslog::read_entrypoint(path, "websecure")
    }
}
