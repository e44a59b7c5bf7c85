//! Command line and environment configuration. Every flag has an environment twin so the
//! DaemonSet can be configured from its manifest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::sensor::semantic::{OffsetField, OffsetOverride};

#[derive(Debug, Parser)]
#[command(
    name = "routeskew",
    version,
    about = "Finds the Traefik replica that answers with its own 'no router' 404 or fails WebSocket upgrades"
)]
pub struct Cli {
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "ROUTESKEW_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log line format.
    #[arg(long, env = "ROUTESKEW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; a Box would only add an indirection"
)]
pub enum Command {
    /// Run the agent: discover local Traefik replicas, watch them from the kernel, serve /metrics.
    Run(RunArgs),
    /// Print every sample name the agent's /metrics can contain, one per line, sorted (the
    /// deploy checks hold the dashboard and the alert rules to this list).
    MetricsList,
    /// Print a running agent's verdicts per replica and host (its `/api/v1/replicas`).
    Status(StatusArgs),
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The agent's HTTP address (where it serves /metrics).
    #[arg(
        long,
        env = "ROUTESKEW_STATUS_URL",
        default_value = "http://127.0.0.1:9477"
    )]
    pub url: String,
    /// Print the JSON document as served instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiscoveryMode {
    /// `kubernetes` inside a cluster (KUBERNETES_SERVICE_HOST is set), `local` otherwise.
    Auto,
    /// Processes on this machine, by name, pid or cgroup.
    Local,
    /// Traefik pods on this node, from the Kubernetes API.
    Kubernetes,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where replicas come from.
    #[arg(long, env = "ROUTESKEW_DISCOVERY", value_enum, default_value_t = DiscoveryMode::Auto)]
    pub discovery: DiscoveryMode,

    /// Local discovery: process name (comm or executable file name) of replicas.
    #[arg(long, env = "ROUTESKEW_PROCESS_NAME", default_value = "traefik")]
    pub process_name: String,

    /// Local discovery: also watch these process ids (each one a replica).
    #[arg(long = "pid", env = "ROUTESKEW_PIDS", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Local discovery: watch every process in these cgroup v2 directories (absolute, or
    /// relative to the cgroup v2 mount); each directory is a replica.
    #[arg(long = "cgroup", env = "ROUTESKEW_CGROUPS", value_delimiter = ',')]
    pub cgroups: Vec<PathBuf>,

    /// Local discovery: only the processes given with --pid/--cgroup, no name matching.
    #[arg(long, env = "ROUTESKEW_NO_NAME_MATCH")]
    pub no_name_match: bool,

    /// `namespace` label of local replicas.
    #[arg(long, env = "ROUTESKEW_NAMESPACE", default_value = "local")]
    pub namespace: String,

    /// How often local discovery re-scans processes (restarts, new replicas).
    #[arg(long, env = "ROUTESKEW_RESCAN_INTERVAL", value_parser = humantime::parse_duration, default_value = "2s")]
    pub rescan_interval: Duration,

    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "ROUTESKEW_LISTEN", default_value = "0.0.0.0:9477")]
    pub listen: SocketAddr,

    /// A host the `host` label may take (repeatable); every other Host is `other`.
    #[arg(long = "host", env = "ROUTESKEW_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,

    /// Kernel object to load instead of the one built into the binary.
    #[arg(long, env = "ROUTESKEW_EBPF_OBJECT")]
    pub ebpf_object: Option<PathBuf>,

    /// Leading bytes of each read/write the kernel copies (1-1024).
    #[arg(long, env = "ROUTESKEW_CAPTURE_BYTES", default_value_t = routeskew_common::DEFAULT_CAPTURE_LEN,
          value_parser = clap::value_parser!(u32).range(64..=routeskew_common::DATA_CAP as i64))]
    pub capture_bytes: u32,

    /// Kernel ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, env = "ROUTESKEW_RING_BUFFER_BYTES", default_value_t = 8 << 20)]
    pub ring_buffer_bytes: u32,

    /// How often the agent drains the kernel ring buffer. The kernel wakes it early
    /// only when an eighth of the buffer is waiting, so this bounds event delay.
    #[arg(long, env = "ROUTESKEW_POLL_INTERVAL", value_parser = humantime::parse_duration, default_value = "20ms")]
    pub poll_interval: Duration,

    /// Also capture HTTP responses Traefik reads from its backends (a third more
    /// records; classification only needs the upstream requests).
    #[arg(long, env = "ROUTESKEW_UPSTREAM_RESPONSES")]
    pub upstream_responses: bool,

    /// Do not put uprobes on the replicas' Go `crypto/tls` functions (TLS connections
    /// then go unseen; plaintext capture is unaffected).
    #[arg(long, env = "ROUTESKEW_NO_TLS")]
    pub no_tls: bool,

    /// Which kernel hooks capture socket data: the best available, or a fallback.
    #[arg(long, env = "ROUTESKEW_DATA_HOOKS", value_enum, default_value_t = DataHooksArg::Auto)]
    pub data_hooks: DataHooksArg,

    /// How responses are seen: `semantic` reads Go net/http's own state at one uprobe per
    /// response and counts in the kernel (no per-syscall hooks; a binary it cannot verify
    /// falls back to byte capture); `bytes` copies the leading bytes of socket I/O (and TLS
    /// plaintext) of every replica and parses HTTP in the agent.
    #[arg(long, env = "ROUTESKEW_SENSOR", value_enum, default_value_t = SensorArg::Semantic)]
    pub sensor: SensorArg,

    /// Testing only: replace one entry of the semantic sensor's offset table before it is
    /// verified against each binary, as `FIELD=BYTES` (e.g. `req-host=136`). A wrong
    /// offset fails verification, and the replicas fall back to byte capture.
    #[arg(long, hide = true, value_parser = parse_offset_override)]
    pub semantic_offset: Option<OffsetOverride>,

    /// Testing only: replace one entry of what the kernel gets, after verification, as
    /// `FIELD=BYTES`: the semantic sensor then misses the probes, and the agent's run-time
    /// check must move the replicas to byte capture.
    #[arg(long, hide = true, value_parser = parse_offset_override)]
    pub semantic_kernel_offset: Option<OffsetOverride>,

    /// An upgraded WebSocket connection closed sooner than this counts as an early close.
    #[arg(long, env = "ROUTESKEW_WS_EARLY_CLOSE", value_parser = humantime::parse_duration, default_value = "10s")]
    pub ws_early_close: Duration,

    /// Bytes of pipeline state allowed: followed connections, requests waiting for
    /// their responses, buffers and series. What does not fit is shed and counted in
    /// `routeskew_pipeline_shed_total`. Keep it well under the container's memory limit.
    #[arg(long, env = "ROUTESKEW_MEMORY_BUDGET_BYTES", default_value_t = crate::pipeline::budget::DEFAULT_BUDGET,
          value_parser = clap::value_parser!(u64).range(1 << 20..))]
    pub memory_budget_bytes: u64,

    /// A request still waiting for its response after this long (behind a response that
    /// never ends, say) is shed and counted.
    #[arg(long, env = "ROUTESKEW_MAX_REQUEST_AGE", value_parser = humantime::parse_duration, default_value = "5m")]
    pub max_request_age: Duration,

    /// A replica is routeless for a host when its probes of the host have been Traefik's
    /// router-miss 404 for this long while its siblings route it (see `/api/v1/replicas`).
    #[arg(long, env = "ROUTESKEW_VERDICT_CONFIRM", value_parser = humantime::parse_duration, default_value = "3m")]
    pub verdict_confirm: Duration,

    /// A replica ready for less than this is never routeless (it may still be loading
    /// its routes).
    #[arg(long, env = "ROUTESKEW_VERDICT_MIN_READY", value_parser = humantime::parse_duration, default_value = "1m")]
    pub verdict_min_ready: Duration,

    /// Series of a replica that vanished are removed after this long.
    #[arg(long, env = "ROUTESKEW_SERIES_GRACE", value_parser = humantime::parse_duration, default_value = "5m")]
    pub series_grace: Duration,

    /// A file of hosts, one per line (`#` starts a comment), added to `--host`.
    #[arg(long, env = "ROUTESKEW_HOSTS_FILE")]
    pub hosts_file: Option<PathBuf>,

    /// How often every replica is probed for every host (with ±10 % jitter); 0 turns
    /// the prober off.
    #[arg(long, env = "ROUTESKEW_PROBE_INTERVAL", value_parser = humantime::parse_duration, default_value = "10s")]
    pub probe_interval: Duration,

    /// Time limit of one probe request.
    #[arg(long, env = "ROUTESKEW_PROBE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "3s")]
    pub probe_timeout: Duration,

    /// Probe requests in flight at once.
    #[arg(long, env = "ROUTESKEW_PROBE_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub probe_concurrency: u32,

    /// Hosts probed per round (on every replica); with more known hosts, rounds rotate
    /// through them, so that a round's cost stays bounded however many hosts tenants add.
    #[arg(long, env = "ROUTESKEW_PROBE_HOSTS_PER_ROUND", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub probe_hosts_per_round: u32,

    /// Path of the HTTP probe.
    #[arg(long, env = "ROUTESKEW_PROBE_PATH", default_value = "/")]
    pub probe_path: String,

    /// WebSocket probe: `/path` for every host or `host/path` for one (repeatable).
    #[arg(
        long = "probe-ws-path",
        env = "ROUTESKEW_PROBE_WS_PATHS",
        value_delimiter = ','
    )]
    pub probe_ws_paths: Vec<WsPath>,

    /// Status that also counts as a successful WebSocket probe, e.g. 302 for an auth
    /// redirect (repeatable).
    #[arg(long = "probe-ws-accept", env = "ROUTESKEW_PROBE_WS_ACCEPT", value_delimiter = ',',
          value_parser = clap::value_parser!(u16).range(100..=599))]
    pub probe_ws_accept: Vec<u16>,

    /// Only probe replica endpoints on these ports (repeatable); by default the ports
    /// whose Traefik entrypoints carry routers, or every port but the API's.
    #[arg(
        long = "probe-port",
        env = "ROUTESKEW_PROBE_PORTS",
        value_delimiter = ','
    )]
    pub probe_ports: Vec<u16>,

    /// Port of the replicas' Traefik API (router inventory); detected when not given.
    #[arg(long, env = "ROUTESKEW_API_PORT")]
    pub api_port: Option<u16>,

    /// Name of this node (Kubernetes downward API): Kubernetes discovery watches the
    /// Traefik pods scheduled here.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Kubernetes discovery settings.
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Label selector of the Traefik pods to watch.
    #[arg(
        long,
        env = "ROUTESKEW_LABEL_SELECTOR",
        default_value = "app.kubernetes.io/name=traefik"
    )]
    pub label_selector: String,

    /// Only watch Traefik pods in this namespace (default: all namespaces). Ingress and
    /// IngressRoute objects are read from all namespaces.
    #[arg(long, env = "ROUTESKEW_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Only watch these containers of a Traefik pod (repeatable; default: every container).
    #[arg(
        long = "container",
        env = "ROUTESKEW_CONTAINERS",
        value_delimiter = ','
    )]
    pub containers: Vec<String>,

    /// Ingress class of the watched Traefik: Ingresses and IngressRoutes that name another
    /// class (ingressClassName or the kubernetes.io/ingress.class annotation) add no hosts.
    #[arg(long, env = "ROUTESKEW_INGRESS_CLASS", default_value = "traefik")]
    pub ingress_class: String,

    /// Hosts labelled per namespace for objects that name no ingress class, outside the
    /// watched Traefik's namespaces (so that no tenant crowds others out of the bounded
    /// `host` label); the rest count as `other` and in routeskew_discovery_dropped_hosts.
    #[arg(long, env = "ROUTESKEW_HOSTS_PER_NAMESPACE", default_value_t = 50)]
    pub hosts_per_namespace: usize,

    /// The host's cgroup filesystem (a hostPath mount in the DaemonSet): pure v2, hybrid
    /// (v2 at `unified/`) or v1.
    #[arg(
        long,
        env = "ROUTESKEW_HOST_CGROUP_ROOT",
        default_value = "/sys/fs/cgroup"
    )]
    pub host_cgroup_root: PathBuf,

    /// The host's /proc (with hostPID), for container processes and binaries.
    #[arg(long, env = "ROUTESKEW_HOST_PROC", default_value = "/proc")]
    pub host_proc: PathBuf,
}

/// Why `--semantic-offset` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OffsetOverrideError {
    #[error("{given:?} is not FIELD=BYTES")]
    Shape { given: String },
    #[error("unknown field {field:?}")]
    Field { field: String },
    #[error("{value:?} is not a byte offset: {source}")]
    Value {
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
}

fn parse_offset_override(s: &str) -> Result<OffsetOverride, OffsetOverrideError> {
    let (field, value) = s
        .split_once('=')
        .ok_or_else(|| OffsetOverrideError::Shape {
            given: s.to_owned(),
        })?;
    Ok(OffsetOverride {
        field: OffsetField::from_str(field, true).map_err(|_| OffsetOverrideError::Field {
            field: field.to_owned(),
        })?,
        value: value.parse().map_err(|source| OffsetOverrideError::Value {
            value: value.to_owned(),
            source,
        })?,
    })
}

/// `--sensor`: how responses are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SensorArg {
    /// Byte capture on socket hooks and the Go TLS uprobes; the pipeline parses HTTP.
    Bytes,
    /// Uprobes on Go net/http's response funnels; counted in the kernel.
    Semantic,
}

impl SensorArg {
    /// The `mode` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bytes => "bytes",
            Self::Semantic => "semantic",
        }
    }
}

/// `--data-hooks`: which kernel hooks capture socket data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataHooksArg {
    /// Socket tracepoints (Linux 6.3+), else the raw `sys_exit` tracepoint, else classic syscall tracepoints.
    Auto,
    /// The raw `sys_exit` tracepoint (falls back to the classic ones).
    RawSysExit,
    /// Only the classic `syscalls/*` tracepoints; no BTF needed.
    Classic,
}

/// A configuration the agent cannot run with (beyond what clap itself rejects).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--ring-buffer-bytes must be a power of two of at least 4096, got {got}")]
    RingBufferBytes { got: u32 },
    #[error("--no-name-match needs at least one --pid or --cgroup")]
    NoNameMatchWithoutTargets,
    #[error("--hosts-file {}: {source}", path.display())]
    HostsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RunArgs {
    /// Validates combinations clap cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.ring_buffer_bytes.is_power_of_two() || self.ring_buffer_bytes < 4096 {
            return Err(ConfigError::RingBufferBytes {
                got: self.ring_buffer_bytes,
            });
        }
        if self.no_name_match && self.pids.is_empty() && self.cgroups.is_empty() {
            return Err(ConfigError::NoNameMatchWithoutTargets);
        }
        Ok(())
    }

    /// `--host` plus the hosts of `--hosts-file`, in order, without duplicates.
    pub fn all_hosts(&self) -> Result<Vec<String>, ConfigError> {
        let mut hosts = self.hosts.clone();
        if let Some(path) = &self.hosts_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::HostsFile {
                path: path.clone(),
                source,
            })?;
            hosts.extend(parse_hosts_file(&text));
        }
        // A host-specific WebSocket probe needs its host to be a label value.
        hosts.extend(self.probe_ws_paths.iter().filter_map(|w| w.host.clone()));
        let mut seen = std::collections::HashSet::new();
        hosts.retain(|h| seen.insert(h.clone()));
        Ok(hosts)
    }

    /// The discovery mode after resolving `auto`.
    pub fn effective_discovery(&self) -> DiscoveryMode {
        match self.discovery {
            DiscoveryMode::Auto if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                DiscoveryMode::Kubernetes
            }
            DiscoveryMode::Auto => DiscoveryMode::Local,
            other => other,
        }
    }
}

/// Hosts of a hosts file: one per line, blank lines and `#` comments ignored.
pub fn parse_hosts_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// A WebSocket check: a path, for every host or for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsPath {
    pub host: Option<String>,
    pub path: String,
}

/// A `--probe-ws-path` that is neither `/path` nor `host/path`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected /path or host/path, got {given:?}")]
pub struct WsPathError {
    given: String,
}

impl std::str::FromStr for WsPath {
    type Err = WsPathError;

    /// `/ws` (every host) or `chat.example.com/ws` (that host only).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with('/') {
            return Ok(WsPath {
                host: None,
                path: s.to_string(),
            });
        }
        match s.split_once('/') {
            Some((host, path)) if !host.is_empty() => Ok(WsPath {
                host: Some(host.to_ascii_lowercase()),
                path: format!("/{path}"),
            }),
            _ => Err(WsPathError {
                given: s.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
