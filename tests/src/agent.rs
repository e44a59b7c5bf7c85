//! The routeskew agent under test: started against the test bed, polled until it is
//! attached to every replica, scraped and parsed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::metrics::Metrics;
use crate::process::ManagedChild;
use crate::{http, net, paths, Testbed};

/// How the agent finds the test bed's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// The production default: every process named `traefik`, named after its
    /// `ROUTESKEW_REPLICA`. Also picks up Traefik processes the test bed did not start.
    ByName,
    /// Only these cgroup v2 directories (`--no-name-match --cgroup …`), each a replica
    /// named after its directory.
    Cgroups(Vec<PathBuf>),
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub discovery: Discovery,
    /// Defaults to [`paths::agent_binary`].
    pub binary: Option<PathBuf>,
    /// Hosts the agent labels (anything else is `other`).
    pub hosts: Vec<String>,
    /// `routeskew_targets{state="attached"}` to wait for.
    pub expected_targets: usize,
    /// Defaults to [`paths::ebpf_object`].
    pub ebpf_object: Option<PathBuf>,
    /// Appended after the generated arguments. Without a `--probe-interval` among them
    /// the agent runs with its prober off.
    pub extra_args: Vec<String>,
    pub ready_timeout: Duration,
    /// Where the agent's output goes; defaults to a file in the test bed directory.
    pub log_file: Option<PathBuf>,
    /// A seccomp profile (deny list, Kubernetes format) the agent runs under.
    pub seccomp_profile: Option<PathBuf>,
}

impl AgentConfig {
    /// Watches every replica of `bed` and labels every host of its scenario.
    ///
    /// Discovery is by process name, as in production, unless another Traefik (one the
    /// test bed did not start) runs on the machine: then the agent is pointed at the
    /// replicas' cgroups, so the count of attached targets stays exact. The replica names
    /// are the same either way.
    pub fn for_testbed(bed: &Testbed) -> Self {
        let ours = bed.pids();
        let foreign = foreign_traefik_pids(&ours);
        let discovery = if foreign.is_empty() {
            Discovery::ByName
        } else {
            eprintln!(
                "routeskew-testbed: other Traefik processes run here ({foreign:?}); the agent watches the test bed's cgroups only"
            );
            Discovery::Cgroups(
                bed.replicas()
                    .iter()
                    .map(|r| r.cgroup_path.clone())
                    .collect(),
            )
        };
        AgentConfig {
            discovery,
            binary: None,
            hosts: bed.scenario().hosts(),
            expected_targets: bed.replicas().len(),
            ebpf_object: paths::ebpf_object(),
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            log_file: Some(bed.dir().join("agent.log")),
            seccomp_profile: None,
        }
    }
}

pub struct Agent {
    child: ManagedChild,
    pub addr: SocketAddr,
    pub log_file: PathBuf,
    /// The full command line, for failure messages.
    pub command: String,
}

impl Agent {
    pub async fn start(config: AgentConfig) -> Result<Agent> {
        paths::require_root()?;
        let binary = match &config.binary {
            Some(b) => b.clone(),
            None => paths::agent_binary()?,
        };
        let addr = net::loopback(net::free_port()?);
        let log_file = config.log_file.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("routeskew-agent-{}.log", addr.port()))
        });
        let mut args: Vec<String> = vec![
            "run".into(),
            "--discovery".into(),
            "local".into(),
            "--listen".into(),
            addr.to_string(),
        ];
        if let Discovery::Cgroups(cgroups) = &config.discovery {
            args.push("--no-name-match".into());
            for cg in cgroups {
                args.push("--cgroup".into());
                args.push(cg.display().to_string());
            }
        }
        for h in &config.hosts {
            args.push("--host".into());
            args.push(h.clone());
        }
        if let Some(obj) = config
            .ebpf_object
            .as_ref()
            .or(paths::ebpf_object().as_ref())
        {
            args.push("--ebpf-object".into());
            args.push(obj.display().to_string());
        }
        // Probes add their own requests to the replicas' traffic (and access logs): off
        // unless a test asks for them with `--probe-interval`.
        if !config
            .extra_args
            .iter()
            .any(|a| a.starts_with("--probe-interval"))
        {
            args.push("--probe-interval".into());
            args.push("0s".into());
        }
        args.extend(config.extra_args.iter().cloned());
        let command = format!("{} {}", binary.display(), args.join(" "));

        let mut cmd = Command::new(&binary);
        cmd.args(&args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        if let Some(profile) = &config.seccomp_profile {
            crate::seccomp::install(&mut cmd, crate::seccomp::filter(profile)?);
        }
        let child = ManagedChild::spawn("routeskew", cmd, &log_file, None)?;
        let mut agent = Agent {
            child,
            addr,
            log_file,
            command,
        };
        agent
            .wait_ready(config.expected_targets, config.ready_timeout)
            .await?;
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    async fn wait_ready(&mut self, targets: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_exited() {
                bail!(
                    "the agent exited during start-up ({status})\n  command: {}\n  output:\n{}",
                    self.command,
                    self.log_tail()
                );
            }
            let last = match self.check_ready(targets).await {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready within {timeout:?}: {last}\n  command: {}\n  output:\n{}",
                    self.command,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn check_ready(&self, targets: usize) -> Result<()> {
        let ready = http::get_local(self.addr, "/readyz").await?;
        if ready.status != 200 {
            bail!(
                "/readyz answered {}: {}",
                ready.status,
                ready.body_text().trim()
            );
        }
        let m = self.scrape().await?;
        let attached = m.get("routeskew_targets", &[("state", "attached")])?;
        if attached != Some(targets as f64) {
            bail!("routeskew_targets{{state=\"attached\"}} is {attached:?}, want {targets}");
        }
        Ok(())
    }

    /// Fetches and parses `/metrics`.
    pub async fn scrape(&self) -> Result<Metrics> {
        let resp = http::get_local(self.addr, "/metrics").await?;
        if resp.status != 200 {
            bail!("/metrics answered {}", resp.status);
        }
        Metrics::parse(&resp.body_text()).context("parsing /metrics")
    }

    /// Scrapes until `done` holds or `timeout` passes; returns the last scrape either
    /// way (the caller asserts on it and prints the difference).
    pub async fn scrape_until(
        &self,
        timeout: Duration,
        done: impl Fn(&Metrics) -> bool,
    ) -> Result<Metrics> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.scrape().await?;
            if done(&m) || Instant::now() > deadline {
                return Ok(m);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The last part of the agent's output.
    pub fn log_tail(&self) -> String {
        self.child.log_tail(8192)
    }

    /// Is the agent still running?
    pub fn running(&mut self) -> bool {
        self.child.try_exited().is_none()
    }

    pub fn stop(&mut self) {
        self.child.stop(Duration::from_secs(5));
    }
}

/// Processes whose name (comm or executable) is `traefik` and that are not in `ours`.
pub fn foreign_traefik_pids(ours: &[u32]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            comm.trim_end() == "traefik"
                || exe.is_some_and(|p| p.file_name().is_some_and(|f| f == "traefik"))
        })
        .collect();
    out.sort_unstable();
    out
}
