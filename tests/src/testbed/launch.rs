//! Starting a test bed: the backend, the refusing port, one cgroup and one Traefik per
//! replica, and the wait until every replica serves exactly its routers.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Replica, Testbed, TestbedConfig};
use crate::process::{self, ManagedChild};
use crate::{backend, cgroup, expect, http, net, paths, tls, traefik};

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

/// Starts replica `name`'s Traefik from the static configuration in `config_dir`, inside
/// its cgroup. The child gets `PR_SET_PDEATHSIG`, which fires when the *thread* that
/// spawned it ends: call this from a thread that lives as long as the test bed.
pub(super) fn spawn_traefik(
    traefik_bin: &Path,
    name: &str,
    config_dir: &Path,
    cgroup_path: &Path,
) -> Result<ManagedChild> {
    let mut cmd = Command::new(traefik_bin);
    // A clean environment: Traefik also reads TRAEFIK_* variables as static
    // configuration, and the host's must not leak in.
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", config_dir)
        .env("ROUTESKEW_REPLICA", name)
        .current_dir(config_dir)
        .arg(format!(
            "--configfile={}",
            config_dir.join("traefik.yml").display()
        ));
    ManagedChild::spawn(name, cmd, &config_dir.join("stdout.log"), Some(cgroup_path))
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
        let traefik_bin = match &config.traefik {
            Some(path) => path.clone(),
            None => paths::traefik_binary()?,
        };
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
            traefik_bin: traefik_bin.clone(),
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

            let child = spawn_traefik(traefik_bin, &name, &config_dir, &cgroup_path)?;
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
        for r in self.replicas.clone() {
            self.wait_replica_ready(&r, deadline).await?;
        }
        Ok(())
    }

    /// One replica serves exactly its routers on every entrypoint, by `deadline`. Returns
    /// every answer its API entrypoint gave meanwhile, as (status, Traefik's router-miss
    /// 404): they are responses of the replica's process too (an agent that already
    /// watches it counts them).
    pub(super) async fn wait_replica_ready(
        &mut self,
        r: &Replica,
        deadline: Instant,
    ) -> Result<Vec<(u16, bool)>> {
        let mut api_answers = Vec::new();
        let scenario = self.config.scenario.clone();
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
            let routers = match http::get_local(r.api_addr, "/api/http/routers").await {
                Ok(resp) => {
                    // Before its API router is up, the entrypoint answers with
                    // Traefik's own no-router 404.
                    api_answers.push((resp.status, expect::is_traefik_router_miss(&resp)));
                    routers_in(r, &resp)
                }
                Err(e) => Err(e),
            };
            let last = match routers {
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
        Ok(api_answers)
    }

    /// Enabled `@file` routers the replica's API reports, sorted.
    pub async fn routers_of(&self, r: &Replica) -> Result<Vec<String>> {
        let resp = http::get_local(r.api_addr, "/api/http/routers").await?;
        routers_in(r, &resp)
    }
}

/// The enabled `@file` routers of an API answer to `/api/http/routers`, sorted.
fn routers_in(r: &Replica, resp: &http::Response) -> Result<Vec<String>> {
    {
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
}
