//! The routeskew test bed: real Traefik replicas, each in its own cgroup v2 directory,
//! in front of a real Go backend, with one replica missing routers; the agent started
//! against them; client traffic with exact per-replica counts; and a metrics parser to
//! read the agent's verdict back.
//!
//! Everything here needs root (cgroups, and the agent loads eBPF programs). Every process
//! and cgroup the test bed creates is removed by [`Testbed::stop`] or on drop, also when
//! a test panics.

pub mod accesslog;
pub mod agent;
pub mod backend;
pub mod cgroup;
pub mod expect;
pub mod http;
pub mod metrics;
pub mod net;
pub mod paths;
pub mod process;
pub mod prometheus;
pub mod scenario;
pub mod tally;
pub mod tls;
pub mod traefik;
pub mod traffic;
pub mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use agent::{Agent, AgentConfig};
pub use metrics::Metrics;
pub use scenario::{path, Scenario};
pub use traffic::{ConnMode, RoundRobin};

use process::ManagedChild;

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
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// Prefix of the test bed's working directories in the temp dir; the creating pid follows.
const TEMP_PREFIX: &str = "routeskew-testbed-";

/// Removes working directories of test processes that died without cleaning up.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !process::pid_alive(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Testbed {
    pub async fn start(config: TestbedConfig) -> Result<Testbed> {
        paths::require_root()?;
        if config.replicas == 0 {
            bail!("a test bed needs at least one replica");
        }
        if let Some(b) = config.broken_replica {
            if b >= config.replicas {
                bail!(
                    "broken_replica {b} is out of range for {} replicas",
                    config.replicas
                );
            }
        }
        let traefik_bin = paths::traefik_binary()?;
        let backend_bin = tokio::task::spawn_blocking(backend::build).await??;
        let mount = cgroup::v2_mount()?;
        cgroup::sweep_stale(&mount);

        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
            .tempdir()
            .context("creating the test bed directory")?;
        let mut bed = Testbed {
            config,
            replicas: Vec::new(),
            backend_addr: None,
            refused: None,
            children: Vec::new(),
            cgroup_root: None,
            cgroups: Vec::new(),
            dir: None,
            certificate: None,
            stopped: false,
        };
        let dir_path = dir.path().to_path_buf();
        bed.dir = Some(dir);
        // From here on every resource is registered in `bed` right after it is created,
        // so an early return drops `bed` and cleans up whatever exists.
        bed.launch(&traefik_bin, &backend_bin, &mount, &dir_path)
            .await?;
        Ok(bed)
    }

    async fn launch(
        &mut self,
        traefik_bin: &Path,
        backend_bin: &Path,
        mount: &Path,
        dir: &Path,
    ) -> Result<()> {
        let backend = backend::Backend::start(backend_bin, &dir.join("backend.log"))?;
        self.backend_addr = Some(backend.addr);
        self.children.push(backend.child);
        let refused = net::refusing_port()?;
        let refused_addr = refused.1;
        self.refused = Some(refused);

        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let root = mount.join(format!("{}{}-{n}", cgroup::ROOT_PREFIX, std::process::id()));
        cgroup::create(&root)?;
        self.cgroup_root = Some(root.clone());

        if self.config.tls {
            self.certificate = Some(tls::Certificate::self_signed(dir)?);
        }
        let scenario = self.config.scenario.clone();
        for index in 0..self.config.replicas {
            let name = format!("traefik-{}", index + 1);
            let broken = self.config.broken_replica == Some(index);
            let routes = scenario.routes_for(broken);
            let config_dir = dir.join(&name);
            std::fs::create_dir_all(&config_dir)?;
            let web_addr = net::loopback(net::free_port()?);
            let websecure_addr = match self.config.tls {
                true => Some(net::loopback(net::free_port()?)),
                false => None,
            };
            let api_addr = net::loopback(net::free_port()?);
            let dynamic_file = config_dir.join("dynamic.yml");
            let log_file = config_dir.join("traefik.log");
            let access_log = self
                .config
                .access_log
                .then(|| config_dir.join("access.json"));
            std::fs::write(
                &dynamic_file,
                traefik::dynamic_yaml(&traefik::DynamicConfig {
                    routes: &routes,
                    backend: backend.addr,
                    refused: refused_addr,
                    slow_timeout: scenario.slow_timeout,
                    tls: self.certificate.as_ref(),
                }),
            )?;
            let static_file = config_dir.join("traefik.yml");
            std::fs::write(
                &static_file,
                traefik::static_yaml(&traefik::StaticConfig {
                    web: web_addr,
                    websecure: websecure_addr,
                    api: api_addr,
                    dynamic_file: &dynamic_file,
                    log_file: &log_file,
                    access_log: access_log.as_deref(),
                    log_level: &self.config.traefik_log_level,
                }),
            )?;

            let cgroup_path = root.join(&name);
            let cgroup_id = cgroup::create(&cgroup_path)?;
            self.cgroups.push(cgroup_path.clone());

            let mut cmd = Command::new(traefik_bin);
            // A clean environment: Traefik also reads TRAEFIK_* variables as static
            // configuration, and the host's must not leak in.
            cmd.env_clear()
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .env("HOME", &config_dir)
                .env("ROUTESKEW_REPLICA", &name)
                .current_dir(&config_dir)
                .arg(format!("--configfile={}", static_file.display()));
            let child = ManagedChild::spawn(
                &name,
                cmd,
                &config_dir.join("stdout.log"),
                Some(&cgroup_path),
            )?;
            let pid = child.pid();
            self.children.push(child);
            self.replicas.push(Replica {
                index,
                name,
                pid,
                cgroup_path,
                cgroup_id,
                web_addr,
                websecure_addr,
                api_addr,
                broken,
                routed_hosts: routes.iter().map(|r| r.host.clone()).collect(),
                config_dir,
                log_file,
                access_log,
            });
        }
        self.wait_ready().await
    }

    /// Every replica listens on `web` and its API lists exactly the routers it was
    /// configured with. No HTTP request goes to `web` here: the access logs and the
    /// agent's counters start from zero.
    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.config.ready_timeout;
        let scenario = self.config.scenario.clone();
        for r in self.replicas.clone() {
            let mut expected =
                traefik::all_router_names(&scenario.routes_for(r.broken), self.config.tls);
            expected.sort();
            loop {
                if let Some(child) = self.children.iter_mut().find(|c| c.name() == r.name) {
                    if let Some(status) = child.try_exited() {
                        bail!(
                            "{} exited during start-up ({status}); its log:\n{}\n{}",
                            r.name,
                            child.log_tail(4096),
                            process::tail_file(&r.log_file, 4096)
                        );
                    }
                }
                let last = match self.routers_of(&r).await {
                    Ok(routers) if routers == expected => {
                        let mut listening = Vec::new();
                        for addr in std::iter::once(r.web_addr).chain(r.websecure_addr) {
                            listening.push(tokio::net::TcpStream::connect(addr).await.is_ok());
                        }
                        if listening.iter().all(|&l| l) {
                            break;
                        }
                        format!(
                            "entrypoints {} / {:?} not accepting yet",
                            r.web_addr, r.websecure_addr
                        )
                    }
                    Ok(routers) => format!("routers {routers:?}, want {expected:?}"),
                    Err(e) => format!("{e:#}"),
                };
                if Instant::now() > deadline {
                    bail!(
                        "{} not ready within {:?}: {last}; its log:\n{}",
                        r.name,
                        self.config.ready_timeout,
                        process::tail_file(&r.log_file, 4096)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Enabled `@file` routers the replica's API reports, sorted.
    pub async fn routers_of(&self, r: &Replica) -> Result<Vec<String>> {
        let resp = http::get_local(r.api_addr, "/api/http/routers").await?;
        if resp.status != 200 {
            bail!("{} API answered {}", r.name, resp.status);
        }
        let v: serde_json::Value =
            serde_json::from_slice(&resp.body).context("API routers JSON")?;
        let mut names: Vec<String> = v
            .as_array()
            .context("routers is not a list")?
            .iter()
            .filter(|r| r.get("provider").and_then(|p| p.as_str()) == Some("file"))
            .filter(|r| r.get("status").and_then(|s| s.as_str()) == Some("enabled"))
            .filter_map(|r| r.get("name").and_then(|n| n.as_str()).map(String::from))
            .collect();
        names.sort();
        Ok(names)
    }

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
