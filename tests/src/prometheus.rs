//! A real Prometheus server (Debian's `prometheus`) scraping the agent, so tests can prove
//! that the consumer the exposition is written for accepts it, and can assert with the
//! PromQL users put in dashboards and alerts instead of with our own parser.
//!
//! The server binds loopback only, keeps its TSDB in a temporary directory, and is
//! configured with static scrape targets and nothing else (no rules, no alerting, no
//! remote write, a cleared environment so no proxy variable leaks in): it reaches nothing
//! beyond the targets it is given. It is stopped and its directory removed by
//! [`Prometheus::stop`] or on drop, also when a test panics; on a panic its log tail is
//! printed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process::{self, ManagedChild};
use crate::{http, net, paths};

/// The `Accept` header Prometheus 2.x (before scrape protocol negotiation became
/// configurable in 2.49) sends with every scrape: OpenMetrics first.
pub const SCRAPE_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Working directories share the test bed's prefix and pid scheme, so a test process
/// killed without unwinding leaves nothing the next test bed does not sweep.
const TEMP_PREFIX: &str = "routeskew-testbed-";

/// The Prometheus binary: `ROUTESKEW_PROMETHEUS`, else `prometheus` on `PATH`, else
/// Debian's `/usr/bin/prometheus`. Missing is an error, never a reason to skip.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ROUTESKEW_PROMETHEUS").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "Prometheus not found at {} (from ROUTESKEW_PROMETHEUS)",
                p.display()
            );
        }
        return Ok(p);
    }
    paths::which("prometheus")
        .or_else(|| Some(PathBuf::from("/usr/bin/prometheus")).filter(|p| p.is_file()))
        .context(
            "Prometheus not found on PATH nor at /usr/bin/prometheus (set ROUTESKEW_PROMETHEUS, \
             or install Debian's `prometheus` package; `cargo xtask setup` does)",
        )
}

#[derive(Debug, Clone)]
pub struct PrometheusConfig {
    /// Defaults to [`binary`].
    pub binary: Option<PathBuf>,
    /// `job` label of the scrape targets.
    pub job: String,
    /// Addresses serving `/metrics`; all must be loopback.
    pub targets: Vec<SocketAddr>,
    pub scrape_interval: Duration,
    /// How long to wait for `/-/ready` and for every target's first successful scrape.
    pub ready_timeout: Duration,
}

impl PrometheusConfig {
    /// Scrapes the agent at `addr` every second, as job `routeskew`.
    pub fn for_agent(addr: SocketAddr) -> Self {
        PrometheusConfig {
            binary: None,
            job: "routeskew".into(),
            targets: vec![addr],
            scrape_interval: Duration::from_secs(1),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// The configuration file: static targets only.
pub fn config_yaml(config: &PrometheusConfig) -> String {
    let ms = config.scrape_interval.as_millis().max(1);
    let targets: Vec<String> = config.targets.iter().map(|t| format!("'{t}'")).collect();
    // scrape_timeout may not exceed scrape_interval (the default 10 s would be refused).
    format!(
        "global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {ms}ms\n  evaluation_interval: {ms}ms\n\
         scrape_configs:\n  - job_name: '{job}'\n    scheme: http\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: [{targets}]\n",
        job = config.job,
        targets = targets.join(", ")
    )
}

/// One element of an instant-vector (or scalar) query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// Unix seconds of the evaluation.
    pub timestamp: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{")?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        write!(f, "}} {}", self.value)
    }
}

/// A scrape target as `/api/v1/targets` reports it.
#[derive(Debug, Clone)]
pub struct Target {
    pub scrape_url: String,
    pub health: String,
    pub last_error: String,
    pub labels: BTreeMap<String, String>,
}

pub struct Prometheus {
    child: Option<ManagedChild>,
    pub addr: SocketAddr,
    pub config: PrometheusConfig,
    pub log_file: PathBuf,
    /// The full command line, for failure messages.
    pub command: String,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
}

impl Prometheus {
    /// Starts the server and returns once it is ready and has scraped every target
    /// successfully at least once.
    pub async fn start(config: PrometheusConfig) -> Result<Prometheus> {
        let binary = match &config.binary {
            Some(b) => b.clone(),
            None => binary()?,
        };
        if let Some(t) = config.targets.iter().find(|t| !t.ip().is_loopback()) {
            bail!("scrape target {t} is not loopback; the test Prometheus stays on loopback");
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-prometheus-", std::process::id()))
            .tempdir()
            .context("creating Prometheus's directory")?;
        let dir_path = dir.path().to_path_buf();
        let config_file = dir_path.join("prometheus.yml");
        std::fs::write(&config_file, config_yaml(&config))?;
        let data = dir_path.join("data");
        let log_file = dir_path.join("prometheus.log");
        let addr = net::loopback(net::free_port()?);
        let args = [
            format!("--config.file={}", config_file.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={addr}"),
            "--log.level=info".to_string(),
        ];
        let command = format!("{} {}", binary.display(), args.join(" "));
        let mut cmd = Command::new(&binary);
        // No proxy or other variable from the host may redirect scrapes elsewhere.
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &dir_path)
            .current_dir(&dir_path)
            .args(&args);
        let child = ManagedChild::spawn("prometheus", cmd, &log_file, None)?;
        let mut prom = Prometheus {
            child: Some(child),
            addr,
            config,
            log_file,
            command,
            dir: Some(dir),
            dir_path,
        };
        // `prom` owns the process and the directory from here on: an early return
        // drops it and cleans both up.
        prom.wait_ready().await?;
        prom.wait_targets_up().await?;
        Ok(prom)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ManagedChild::pid)
    }

    /// The working directory (configuration, TSDB, log).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.ready_timeout
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.as_mut().and_then(ManagedChild::try_exited) {
            bail!(
                "Prometheus exited ({status})\n  command: {}\n  log:\n{}",
                self.command,
                self.log_tail()
            );
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = self.deadline();
        loop {
            self.check_alive()?;
            let last = match http::get_local(self.addr, "/-/ready").await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("/-/ready answered {}: {}", r.status, r.body_text().trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "Prometheus not ready within {:?}: {last}\n  command: {}\n  log:\n{}",
                    self.config.ready_timeout,
                    self.command,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every configured target is `up` with no scrape error: the proof that
    /// Prometheus fetched and parsed the exposition.
    pub async fn wait_targets_up(&mut self) -> Result<Vec<Target>> {
        let deadline = self.deadline();
        let want: Vec<String> = self
            .config
            .targets
            .iter()
            .map(|t| format!("http://{t}/metrics"))
            .collect();
        loop {
            self.check_alive()?;
            let last = match self.targets().await {
                Ok(targets) => {
                    let pending: Vec<String> = want
                        .iter()
                        .filter(|url| {
                            !targets.iter().any(|t| {
                                &t.scrape_url == *url && t.health == "up" && t.last_error.is_empty()
                            })
                        })
                        .cloned()
                        .collect();
                    if pending.is_empty() {
                        return Ok(targets);
                    }
                    format!("not up yet: {pending:?}; targets: {targets:?}")
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "Prometheus's targets not up within {:?}: {last}\n  log:\n{}",
                    self.config.ready_timeout,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Active targets from `/api/v1/targets`.
    pub async fn targets(&self) -> Result<Vec<Target>> {
        let data = self.api("/api/v1/targets?state=active").await?;
        let list = data
            .get("activeTargets")
            .and_then(Value::as_array)
            .context("no activeTargets in /api/v1/targets")?;
        let s = |t: &Value, k: &str| {
            t.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok(list
            .iter()
            .map(|t| Target {
                scrape_url: s(t, "scrapeUrl"),
                health: s(t, "health"),
                last_error: s(t, "lastError"),
                labels: string_map(t.get("labels")),
            })
            .collect())
    }

    /// `GET` of an API path; returns the `data` member of a successful answer.
    pub async fn api(&self, path_and_query: &str) -> Result<Value> {
        let resp = http::get_local(self.addr, path_and_query)
            .await
            .with_context(|| format!("GET {path_and_query} from Prometheus"))?;
        let v: Value = serde_json::from_slice(&resp.body).with_context(|| {
            format!(
                "{path_and_query}: HTTP {} with a non-JSON body: {}",
                resp.status,
                resp.body_text()
            )
        })?;
        if resp.status != 200 || v.get("status").and_then(Value::as_str) != Some("success") {
            bail!(
                "{path_and_query}: HTTP {}: {} {}",
                resp.status,
                v.get("errorType").and_then(Value::as_str).unwrap_or("?"),
                v.get("error").and_then(Value::as_str).unwrap_or("?")
            );
        }
        v.get("data").cloned().context("answer without data")
    }

    /// An instant query evaluated now (`/api/v1/query`). A vector comes back as its
    /// elements, a scalar as one sample without labels.
    pub async fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", urlencode(promql)))
            .await
            .with_context(|| format!("query {promql}"))?;
        let kind = data.get("resultType").and_then(Value::as_str);
        let result = data.get("result").context("no result")?;
        match kind {
            Some("vector") => result
                .as_array()
                .context("vector result is not a list")?
                .iter()
                .map(|e| {
                    let (timestamp, value) = point(e.get("value"))?;
                    Ok(Sample {
                        labels: string_map(e.get("metric")),
                        value,
                        timestamp,
                    })
                })
                .collect(),
            Some("scalar") => {
                let (timestamp, value) = point(Some(result))?;
                Ok(vec![Sample {
                    labels: BTreeMap::new(),
                    value,
                    timestamp,
                }])
            }
            other => bail!("query {promql}: unexpected result type {other:?}"),
        }
    }

    /// Metadata (`type`, `help`) of a metric family, as Prometheus learned it from the
    /// exposition's `# TYPE`/`# HELP` lines.
    pub async fn metadata(&self, family: &str) -> Result<Vec<BTreeMap<String, String>>> {
        let data = self
            .api(&format!("/api/v1/metadata?metric={}", urlencode(family)))
            .await?;
        Ok(data
            .get(family)
            .and_then(Value::as_array)
            .map(|l| l.iter().map(|m| string_map(Some(m))).collect())
            .unwrap_or_default())
    }

    /// The last part of Prometheus's log.
    pub fn log_tail(&self) -> String {
        process::tail_file(&self.log_file, 8192)
    }

    /// Is the server still running?
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_exited().is_none())
    }

    /// Stops the server (SIGTERM, SIGKILL after a grace period), reaps it, then removes
    /// its directory (kept with `ROUTESKEW_KEEP_TESTBED`). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(5));
        }
        // Only after the process is gone: it writes to the TSDB until then.
        if let Some(dir) = self.dir.take() {
            if std::env::var_os("ROUTESKEW_KEEP_TESTBED").is_some() {
                eprintln!("routeskew-testbed: keeping {}", dir.keep().display());
            } else if let Err(e) = dir.close() {
                eprintln!(
                    "routeskew-testbed: removing {}: {e}",
                    self.dir_path.display()
                );
            }
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "--- Prometheus log ({}) ---\n{}",
                self.log_file.display(),
                self.log_tail()
            );
        }
        self.stop();
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `[<unix seconds>, "<value>"]`; values are strings so `NaN` and `±Inf` survive JSON.
fn point(v: Option<&Value>) -> Result<(f64, f64)> {
    let a = v
        .and_then(Value::as_array)
        .context("sample is not a pair")?;
    let ts = a
        .first()
        .and_then(Value::as_f64)
        .context("sample without timestamp")?;
    let text = a
        .get(1)
        .and_then(Value::as_str)
        .context("sample without value")?;
    let value = text
        .parse::<f64>()
        .with_context(|| format!("sample value {text:?}"))?;
    Ok((ts, value))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            urlencode(r#"sum by (replica) (x{host="a.b"}[1m]) / 2"#),
            "sum%20by%20%28replica%29%20%28x%7Bhost%3D%22a.b%22%7D%5B1m%5D%29%20%2F%202"
        );
    }

    #[test]
    fn config_is_static_and_fast() {
        let c = config_yaml(&PrometheusConfig::for_agent(net::loopback(9477)));
        assert!(c.contains("scrape_interval: 1000ms"), "{c}");
        assert!(c.contains("scrape_timeout: 1000ms"), "{c}");
        assert!(c.contains("targets: ['127.0.0.1:9477']"), "{c}");
        for outside in ["remote_write", "alerting", "rule_files", "_sd_configs"] {
            assert!(!c.contains(outside), "{c}");
        }
    }
}
