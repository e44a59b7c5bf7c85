//! The agent's run loop: discovery feeds the sensor's cgroup filter and the pipeline's
//! target table; sensor events flow through the pipeline; /metrics serves the result.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{DataHooksArg, DiscoveryMode, RunArgs};
use crate::discovery::kubernetes::{KubeConfig, KubeDiscovery, KubeError};
use crate::discovery::local::{LocalConfig, LocalDiscovery, Scan, ScanFailure};
use crate::discovery::metrics::DiscoveryMetrics;
use crate::discovery::TargetSet;
use crate::event::Event;
use crate::metrics::{self, BuildInfo, Contract, Exposition, Readiness};
use crate::pipeline::metrics::PipelineMetrics;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::probe::{ProbeConfig, Prober};
use crate::sensor::metrics::{SensorMetrics, SensorTotals};
use crate::sensor::{DataHooks, Sensor, SensorConfig, SensorError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Kubernetes(#[from] KubeError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Discovery(#[from] crate::discovery::local::DiscoveryError),
    #[error("kernel sensor: {0}")]
    Sensor(#[from] SensorError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// Every metric of the agent, registered once at start-up: the contract families and each
/// stage's own.
pub struct AgentMetrics {
    pub registry: Registry,
    pub contract: Contract,
    pub sensor: SensorMetrics,
    pub pipeline: PipelineMetrics,
    pub discovery: DiscoveryMetrics,
}

impl AgentMetrics {
    pub fn register(build: BuildInfo) -> Self {
        let mut registry = Registry::with_prefix("routeskew");
        let contract = Contract::register(&mut registry, build);
        let sensor = SensorMetrics::register(&mut registry);
        let pipeline = PipelineMetrics::register(&mut registry);
        let discovery = DiscoveryMetrics::register(&mut registry);
        AgentMetrics {
            registry,
            contract,
            sensor,
            pipeline,
            discovery,
        }
    }

    /// The exposition `/metrics` serves.
    pub fn encode(&self) -> String {
        metrics::encode(&self.registry)
    }
}

/// Batches of events (up to [`crate::sensor::BATCH`] each) buffered between the
/// ring-buffer reader and the pipeline. When full, the reader waits and the kernel ring
/// buffer absorbs the burst (and counts what it drops).
const EVENT_QUEUE: usize = 16;
/// Probe reports waiting for the pipeline (a round sends one per replica, host and check).
const PROBE_QUEUE: usize = 1024;

pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    args.validate().map_err(AgentError::Config)?;
    let hosts = args.all_hosts().map_err(AgentError::Config)?;

    let AgentMetrics {
        registry,
        contract,
        sensor: mut sensor_metrics,
        pipeline: pipeline_metrics,
        discovery: discovery_metrics,
    } = AgentMetrics::register(BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: kernel_release(),
    });
    let readiness = Readiness::new("starting");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: args.listen,
            source,
        })?;
    let listen = listener.local_addr().unwrap_or(args.listen);
    let exposition = Arc::new(Exposition {
        registry,
        readiness: readiness.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(listener, exposition).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(%listen, "serving /metrics, /healthz, /readyz");

    let discovery = Discovery::start(&args, &hosts, discovery_metrics).await?;

    let (tx, mut rx) = mpsc::channel::<Vec<Event>>(EVENT_QUEUE);
    // Probe reports are events like the sensor's and go through the same
    // `Pipeline::handle`; their own queue keeps "the sensor's reader stopped" (its channel
    // closed) observable.
    let (probe_tx, mut probe_rx) = mpsc::channel::<Event>(PROBE_QUEUE);
    let mut sensor = Sensor::start(
        &SensorConfig {
            object: args.ebpf_object.clone(),
            capture_len: args.capture_bytes,
            ring_buffer_bytes: args.ring_buffer_bytes,
            poll_interval: args.poll_interval,
            upstream_responses: args.upstream_responses,
            data_hooks: match args.data_hooks {
                DataHooksArg::Auto => DataHooks::Auto,
                DataHooksArg::RawSysExit => DataHooks::RawSysExit,
                DataHooksArg::Classic => DataHooks::Classic,
            },
        },
        tx,
    )?;
    for hook in sensor.hooks() {
        sensor_metrics.set_hook_attached(&hook.name, hook.attached);
        match &hook.error {
            None => tracing::info!(hook = %hook.name, "hook attached"),
            Some(e) => {
                tracing::warn!(hook = %hook.name, error = %e, "hook unavailable, continuing without it")
            }
        }
    }

    let probe_cfg = ProbeConfig {
        interval: args.probe_interval,
        timeout: args.probe_timeout,
        concurrency: args.probe_concurrency as usize,
        hosts: hosts.clone(),
        http_path: args.probe_path.clone(),
        ws_paths: args.probe_ws_paths.clone(),
        ws_accept: args.probe_ws_accept.clone(),
        ports: args.probe_ports.clone(),
        api_port: args.api_port,
        series_grace: args.series_grace,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let probing = !args.probe_interval.is_zero();

    let mut pipeline = Pipeline::new(
        PipelineConfig {
            known_hosts: hosts.clone(),
            ws_early_close: args.ws_early_close,
            series_grace: args.series_grace,
            upstream_responses: args.upstream_responses,
            probe_deadline: probe_cfg.sensor_deadline(),
            ..PipelineConfig::default()
        },
        contract.clone(),
        pipeline_metrics,
    );

    let (targets_tx, targets_rx) = watch::channel(TargetSet::default());
    let (hosts_tx, hosts_rx) = watch::channel(hosts.clone());
    let mut watched = Watched {
        current: TargetSet::default(),
        failures: Vec::new(),
        published: targets_tx,
        tls: TlsState {
            enabled: !args.no_tls,
            failed_replicas: 0,
        },
    };
    if !watched.tls.enabled {
        tracing::warn!("Go crypto/tls uprobes disabled by configuration: TLS traffic goes unseen");
    }
    apply_scan(
        discovery.scan(),
        &mut watched,
        &mut sensor,
        &mut pipeline,
        &contract,
    );
    discovery.update_hosts(&mut pipeline, &hosts_tx);
    discovery.report_readiness(&readiness);
    if probing {
        tokio::spawn(
            Prober::new(probe_cfg, contract.clone(), probe_tx, targets_rx)
                .with_host_updates(hosts_rx)
                .run(),
        );
    } else {
        drop(probe_tx);
        tracing::info!("prober off (--probe-interval 0)");
    }

    let mut rescan = tokio::time::interval(args.rescan_interval);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Probe reports overdue from the kernel are settled at this pace, well inside the
    // sensor deadline, so that a blind sensor shows within two probe intervals.
    let mut probe_deadlines = tokio::time::interval(Duration::from_millis(100));
    probe_deadlines.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(AgentError::Signal)?;
    // One future for the whole loop: recreating it each pass could miss a SIGINT
    // that arrives between two passes.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        tokio::select! {
            batch = rx.recv() => {
                let Some(batch) = batch else {
                    tracing::error!("sensor reader stopped; exiting");
                    break;
                };
                pipeline.handle_batch(&batch);
            }
            _ = rescan.tick() => {
                apply_scan(discovery.scan(), &mut watched, &mut sensor, &mut pipeline, &contract);
            }
            Some(ev) = probe_rx.recv(), if probing => {
                pipeline.handle(&ev);
            }
            _ = probe_deadlines.tick(), if probing => {
                pipeline.expire_probes(crate::event::monotonic_ns());
            }
            _ = discovery.changed() => {
                apply_scan(discovery.scan(), &mut watched, &mut sensor, &mut pipeline, &contract);
                discovery.update_hosts(&mut pipeline, &hosts_tx);
            }
            _ = housekeeping.tick() => {
                discovery.report_readiness(&readiness);
                pipeline.tick(crate::event::monotonic_ns());
                if let Err(e) = sensor.publish_counters(&mut sensor_metrics) {
                    tracing::warn!(error = %e, "reading kernel counters failed");
                }
            }
            _ = &mut ctrl_c => { tracing::info!("interrupted; detaching"); break; }
            _ = sigterm.recv() => { tracing::info!("terminated; detaching"); break; }
        }
    }
    readiness.set(false, "shutting down");
    drop(sensor);
    Ok(())
}

/// The Go TLS uprobes across scans.
struct TlsState {
    enabled: bool,
    /// Replicas whose binary the uprobes could not be put on (they stay watched in
    /// plaintext, and count as failed targets too).
    failed_replicas: i64,
}

/// Puts the TLS uprobes on the targets' binaries; returns how many targets run a binary
/// where that failed.
fn sync_tls(targets: &TargetSet, sensor: &mut Sensor) -> i64 {
    let pids: Vec<u32> = targets
        .targets()
        .iter()
        .flat_map(|t| t.pids.iter().copied())
        .collect();
    let failed_pids: std::collections::HashSet<u32> = sensor
        .set_tls_processes(&pids)
        .into_iter()
        .filter(|b| b.outcome.is_err())
        .flat_map(|b| b.pids)
        .collect();
    targets
        .targets()
        .iter()
        .filter(|t| t.pids.iter().any(|p| failed_pids.contains(p)))
        .count() as i64
}

/// Where replicas come from.
enum Discovery {
    Local(Box<LocalDiscovery>),
    Kubernetes(Box<KubeDiscovery>),
}

impl Discovery {
    async fn start(
        args: &RunArgs,
        hosts: &[String],
        metrics: DiscoveryMetrics,
    ) -> Result<Self, AgentError> {
        if args.effective_discovery() != DiscoveryMode::Kubernetes {
            let d = LocalDiscovery::new(LocalConfig {
                process_name: (!args.no_name_match).then(|| args.process_name.clone()),
                pids: args.pids.clone(),
                cgroups: args.cgroups.clone(),
                namespace: args.namespace.clone(),
                proc_root: "/proc".into(),
                endpoint_refresh: (!args.probe_interval.is_zero())
                    .then_some(crate::discovery::local::ENDPOINT_REFRESH),
            })?;
            tracing::info!(cgroup2 = %d.cgroup2_root().display(), node = args.node_name.as_deref().unwrap_or("-"), "local discovery");
            return Ok(Discovery::Local(Box::new(d)));
        }
        let node_name = args.node_name.clone().ok_or(KubeError::NoNodeName)?;
        let kube_config = crate::discovery::kubernetes::infer_config().await?;
        let k = &args.kube;
        let d = KubeDiscovery::start(
            kube_config,
            KubeConfig {
                node_name,
                label_selector: k.label_selector.clone(),
                pod_namespace: k.watch_namespace.clone(),
                containers: k.containers.clone(),
                ingress_class: k.ingress_class.clone(),
                static_hosts: hosts.to_vec(),
                host_cgroup_root: k.host_cgroup_root.clone(),
                host_proc: k.host_proc.clone(),
                crd_recheck: Duration::from_secs(300),
            },
            metrics,
        )?;
        tracing::info!(node = %args.node_name.as_deref().unwrap_or("-"), selector = %k.label_selector, "kubernetes discovery");
        Ok(Discovery::Kubernetes(Box::new(d)))
    }

    fn scan(&self) -> Scan {
        match self {
            Discovery::Local(d) => d.scan(),
            Discovery::Kubernetes(d) => d.scan().scan,
        }
    }

    /// Resolves when Kubernetes objects changed; never in local mode (it polls).
    async fn changed(&self) {
        match self {
            Discovery::Local(_) => std::future::pending().await,
            Discovery::Kubernetes(d) => d.changed().await,
        }
    }

    /// Pushes Kubernetes-discovered hosts to the pipeline's labels and to the prober.
    fn update_hosts(&self, pipeline: &mut Pipeline, probed: &watch::Sender<Vec<String>>) {
        if let Discovery::Kubernetes(d) = self {
            let hosts = d.hosts().hosts;
            let labels = pipeline.host_labels();
            // `other` is last in the labels and never among the hosts.
            if labels.len() != hosts.len() + 1 || labels.iter().zip(&hosts).any(|(a, b)| a != b) {
                tracing::info!(hosts = hosts.len(), "known hosts changed");
                pipeline.set_known_hosts(&hosts);
                probed.send_replace(hosts);
            }
        }
    }

    /// The sensor is attached when this is called: readiness is then discovery's.
    fn report_readiness(&self, readiness: &Readiness) {
        match self {
            Discovery::Local(_) => readiness.set(true, "sensor attached, discovery ran"),
            Discovery::Kubernetes(d) => d.publish_readiness(readiness),
        }
    }
}

/// What the agent watches, across discovery scans.
struct Watched {
    current: TargetSet,
    /// The last scan's failures, so that a persistent one is logged once.
    failures: Vec<ScanFailure>,
    /// The targets as the prober sees them.
    published: watch::Sender<TargetSet>,
    tls: TlsState,
}

/// Pushes a discovery result to the kernel filter, the TLS uprobes, the pipeline and the
/// target gauges; logs only what changed (failures too: a persistent one is logged once).
fn apply_scan(
    scan: Scan,
    state: &mut Watched,
    sensor: &mut Sensor,
    pipeline: &mut Pipeline,
    metrics: &Contract,
) {
    let Watched {
        current,
        failures,
        published,
        tls,
    } = state;
    for f in &scan.failures {
        if !failures.contains(f) {
            tracing::warn!(target = %f.what, reason = %f.reason, "replica could not be resolved");
        }
    }
    *failures = scan.failures.clone();
    let failed = scan.failures.len() as i64;
    if scan.targets == *current {
        metrics.set_targets(current.replica_count() as i64, failed + tls.failed_replicas);
        return;
    }
    for t in scan.targets.targets() {
        if !current.targets().contains(t) {
            tracing::info!(replica = %t.replica.name, namespace = %t.replica.namespace, cgroup_id = t.cgroup_id, pids = ?t.pids, "watching replica");
        }
    }
    for t in current.targets() {
        if !scan.targets.targets().contains(t) {
            tracing::info!(replica = %t.replica.name, namespace = %t.replica.namespace, "replica gone");
        }
    }
    if tls.enabled {
        tls.failed_replicas = sync_tls(&scan.targets, sensor);
    }
    match sensor.set_watched_cgroups(&scan.targets.cgroup_ids()) {
        Ok(()) => metrics.set_targets(
            scan.targets.replica_count() as i64,
            failed + tls.failed_replicas,
        ),
        Err(e) => {
            tracing::error!(error = %e, "updating the kernel cgroup filter failed");
            metrics.set_targets(0, failed + scan.targets.replica_count() as i64);
        }
    }
    pipeline.set_targets(scan.targets.clone());
    published.send_replace(scan.targets.clone());
    *current = scan.targets;
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Every sample name the agent's `/metrics` can contain, sorted (`routeskew
/// metrics-list`; the deploy checks hold the dashboard and the alert rules to it).
pub fn metric_names() -> std::collections::BTreeSet<String> {
    metrics::sample_names(&exposition_with_every_family())
}

/// The exposition of a fresh [`AgentMetrics`] in which every family has a series.
/// prometheus-client writes a family's `# TYPE` line only once it has one, and the
/// families below get theirs at run time (per replica, program or hook), so each gets a
/// placeholder series here; a metrics unit test checks that no registered family is
/// missing.
pub(crate) fn exposition_with_every_family() -> String {
    use crate::metrics::{
        HostLabels, HttpLabels, ProbeCheckLabels, ProbeLabels, ReplicaLabels, UpstreamLabels,
        WsLabels,
    };

    let mut m = AgentMetrics::register(BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: String::new(),
    });
    let c = &m.contract;
    let replica = || ReplicaLabels {
        replica: String::new(),
        namespace: String::new(),
    };
    let _ = c.http_responses.get_or_create(&HttpLabels {
        replica: String::new(),
        namespace: String::new(),
        host: String::new(),
        class: "ok",
        source: "passive",
    });
    let _ = c.ws_upgrades.get_or_create(&WsLabels {
        replica: String::new(),
        namespace: String::new(),
        host: String::new(),
        outcome: "upgraded",
        source: "passive",
    });
    let _ = c.ws_early_closes.get_or_create(&HostLabels {
        replica: String::new(),
        namespace: String::new(),
        host: String::new(),
    });
    let _ = c.upstream_connect_failures.get_or_create(&UpstreamLabels {
        replica: String::new(),
        namespace: String::new(),
        reason: "refused",
    });
    let _ = c.probe_success.get_or_create(&ProbeLabels {
        replica: String::new(),
        namespace: String::new(),
        host: String::new(),
        check: "http",
    });
    let _ = c.probe_duration.get_or_create(&ProbeCheckLabels {
        replica: String::new(),
        namespace: String::new(),
        check: "http",
    });
    let _ = c.replica_routers.get_or_create(&replica());
    let _ = c.sensor_blind_probes.get_or_create(&replica());
    // The four per-program totals, the skipped runs and the hook gauge.
    m.sensor.set_totals("", SensorTotals::default());
    m.sensor.set_program_misses("", 0);
    m.sensor.set_hook_attached("", false);
    m.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `routeskew metrics-list` must name every registered family, including those
    /// without a series yet (prometheus-client leaves those out of the exposition).
    #[test]
    fn metric_names_cover_every_registered_family() {
        // prometheus-client has no API that lists a registry's families; its Debug
        // output shows one `Descriptor` per registered metric.
        let registered = format!(
            "{:?}",
            AgentMetrics::register(BuildInfo {
                version: String::new(),
                kernel: String::new(),
            })
            .registry
        )
        .matches("Descriptor {")
        .count();
        assert!(
            registered > 30,
            "counted {registered} registered families: the Debug format changed"
        );
        let exposed = exposition_with_every_family()
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .count();
        assert_eq!(
            exposed, registered,
            "exposition_with_every_family misses a family without series"
        );
        let names = metric_names();
        for name in [
            "routeskew_http_responses_total",
            "routeskew_targets",
            "routeskew_build_info",
            "routeskew_probe_duration_seconds_bucket",
            "routeskew_probe_duration_seconds_count",
            "routeskew_sensor_decode_errors_total",
            "routeskew_sensor_hook_attached",
            "routeskew_pipeline_connections",
            "routeskew_discovery_api_errors_total",
        ] {
            assert!(names.contains(name), "{name} not in {names:#?}");
        }
    }
}
