//! The agent's run loop: discovery feeds the sensor's cgroup filter and the pipeline's
//! target table; sensor events flow through the pipeline; /metrics serves the result.
//!
//! Submodules: `discovery` (local or Kubernetes, behind one interface), `scan` (a
//! discovery result applied to the sensor, the pipeline and the prober).

mod discovery;
mod metrics_list;
mod scan;
mod verdicts;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::{ConfigError, DataHooksArg, RunArgs, SensorArg};
use crate::discovery::kubernetes::KubeError;
use crate::discovery::local::DiscoveryError;
use crate::discovery::TargetSet;
use crate::event::Event;
use crate::hosts::KnownHosts;
use crate::metrics::{self, BuildInfo, Contract, Exposition, Readiness};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::probe::{ProbeConfig, Prober};
use crate::sensor::{DataHooks, Sensor, SensorConfig, SensorError};
use crate::verdict::VerdictConfig;
use discovery::Discovery;
pub use metrics_list::{metric_names, AgentMetrics};
use scan::{apply_scan, SemanticState, TlsState, Watched};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config {
        #[from]
        source: ConfigError,
    },
    #[error(transparent)]
    Kubernetes {
        #[from]
        source: KubeError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Discovery {
        #[from]
        source: DiscoveryError,
    },
    #[error("kernel sensor: {source}")]
    Sensor {
        #[from]
        source: SensorError,
    },
    #[error("signal handler: {source}")]
    Signal {
        #[source]
        source: std::io::Error,
    },
}

/// Batches of events (up to [`crate::sensor::BATCH`] each) buffered between the
/// ring-buffer reader and the pipeline. When full, the reader waits and the kernel ring
/// buffer absorbs the burst (and counts what it drops).
const EVENT_QUEUE: usize = 16;
/// Probe reports waiting for the pipeline (a round sends one per replica, host and check).
const PROBE_QUEUE: usize = 1024;
/// Least time the semantic sensor's copy of a probe exchange is waited for: its counts
/// reach the pipeline on the 1 s housekeeping fold.
const SEMANTIC_PROBE_DEADLINE: Duration = Duration::from_secs(2);

pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    args.validate()?;
    let hosts = args.all_hosts()?;

    let AgentMetrics {
        registry,
        contract,
        sensor: mut sensor_metrics,
        pipeline: pipeline_metrics,
        discovery: discovery_metrics,
        server: server_metrics,
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
    let exposition = Arc::new(Exposition::new(registry, readiness.clone(), server_metrics));
    let mut verdicts = verdicts::VerdictStage::new(
        VerdictConfig {
            confirm: args.verdict_confirm,
            min_ready: args.verdict_min_ready,
        },
        Arc::clone(&exposition),
    );
    tokio::spawn(
        async move {
            if let Err(e) = metrics::serve(listener, exposition).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        }
        .instrument(tracing::info_span!("metrics_server")),
    );
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
            data_hooks: match (args.sensor, args.data_hooks) {
                (SensorArg::Semantic, _) => DataHooks::Off,
                (SensorArg::Bytes, DataHooksArg::Auto) => DataHooks::Auto,
                (SensorArg::Bytes, DataHooksArg::RawSysExit) => DataHooks::RawSysExit,
                (SensorArg::Bytes, DataHooksArg::Classic) => DataHooks::Classic,
            },
            semantic_offset: args.semantic_offset,
            semantic_kernel_offset: args.semantic_kernel_offset,
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
        hosts_per_round: args.probe_hosts_per_round as usize,
        // The agent's one set is published to the prober below.
        hosts: Vec::new(),
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
            // The agent's one set replaces it below (built once, published to both).
            known_hosts: Vec::new(),
            ws_early_close: args.ws_early_close,
            series_grace: args.series_grace,
            memory_budget: args.memory_budget_bytes,
            max_request_age: args.max_request_age,
            upstream_responses: args.upstream_responses,
            probe_deadline: match args.sensor {
                SensorArg::Bytes => probe_cfg.sensor_deadline(),
                // The semantic sensor's counts reach the pipeline on the 1 s fold.
                SensorArg::Semantic => probe_cfg.sensor_deadline().max(SEMANTIC_PROBE_DEADLINE),
            },
            ..PipelineConfig::default()
        },
        contract.clone(),
        pipeline_metrics,
    );

    // The configured hosts until discovery knows better; the pipeline and the prober
    // read the same set.
    let known = Arc::new(KnownHosts::new(&hosts));
    if known.dropped() > 0 {
        tracing::warn!(
            dropped = known.dropped(),
            "some configured hosts are invalid or over the limit; they count as other"
        );
    }
    pipeline.set_known_hosts(known.clone());
    let (targets_tx, targets_rx) = watch::channel(TargetSet::default());
    let (hosts_tx, hosts_rx) = watch::channel(known);
    let mut watched = Watched {
        current: TargetSet::default(),
        failures: Vec::new(),
        published: targets_tx,
        tls: TlsState {
            enabled: !args.no_tls,
            failed_replicas: 0,
            pids: Default::default(),
        },
        semantic: SemanticState {
            enabled: args.sensor == SensorArg::Semantic,
            modes: sensor_metrics.modes.clone(),
            counted: Default::default(),
            demoted: Default::default(),
            dirty: false,
        },
        pending: 0,
    };
    tracing::info!(mode = args.sensor.as_str(), "sensor mode");
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
    publish_hosts(&mut sensor, &pipeline);
    report_readiness(&discovery, &watched, &readiness);
    let resolved = sensor.resolved();
    if probing {
        // The span covers the prober's construction too (its TLS set-up logs).
        let span = tracing::info_span!("prober");
        let mut prober = span
            .in_scope(|| Prober::new(probe_cfg, probe_tx, targets_rx).with_host_updates(hosts_rx));
        if args.sensor == SensorArg::Semantic {
            match sensor.peer_tags() {
                Ok(tags) => prober = prober.with_peer_tags(Arc::new(tags)),
                Err(e) => {
                    tracing::warn!(error = %e, "the semantic sensor cannot tell the prober's connections apart: probe responses count as passive")
                }
            }
        }
        tokio::spawn(prober.run().instrument(span));
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
        .map_err(|source| AgentError::Signal { source })?;
    // One future for the whole loop: recreating it each pass could miss a SIGINT
    // that arrives between two passes.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    let mut folded = Vec::new();
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
                discovery_pass(&discovery, &mut watched, &mut sensor, &mut pipeline, &contract);
            }
            Some(ev) = probe_rx.recv(), if probing => {
                pipeline.handle(&ev);
                verdicts.observe(&pipeline, &ev);
            }
            _ = probe_deadlines.tick(), if probing => {
                pipeline.expire_probes(crate::event::monotonic_ns());
            }
            () = resolved.notified() => {
                discovery_pass(&discovery, &mut watched, &mut sensor, &mut pipeline, &contract);
                report_readiness(&discovery, &watched, &readiness);
            }
            _ = discovery.changed() => {
                discovery_pass(&discovery, &mut watched, &mut sensor, &mut pipeline, &contract);
                discovery.update_hosts(&mut pipeline, &hosts_tx);
                publish_hosts(&mut sensor, &pipeline);
            }
            _ = housekeeping.tick() => {
                if watched.pending > 0 {
                    // Catches a resolution that timed out (no answer wakes the loop).
                    discovery_pass(&discovery, &mut watched, &mut sensor, &mut pipeline, &contract);
                }
                report_readiness(&discovery, &watched, &readiness);
                let now = crate::event::monotonic_ns();
                if watched.semantic.enabled {
                    fold_responses(&mut sensor, &mut pipeline, now, &mut folded);
                }
                pipeline.tick(now);
                verdicts.publish(&pipeline, now);
                if scan::demote_blind(&mut watched, &mut pipeline) {
                    discovery_pass(&discovery, &mut watched, &mut sensor, &mut pipeline, &contract);
                }
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

/// A discovery pass applied; a slow one is logged with where its time went (the
/// pipeline waits meanwhile, and with it the ring-buffer reader once its queue is full).
fn discovery_pass(
    discovery: &Discovery,
    watched: &mut Watched,
    sensor: &mut Sensor,
    pipeline: &mut Pipeline,
    contract: &Contract,
) {
    let t0 = std::time::Instant::now();
    let scan = discovery.scan();
    let scanned = t0.elapsed();
    apply_scan(scan, watched, sensor, pipeline, contract);
    let took = t0.elapsed();
    if took > SLOW_PASS {
        tracing::warn!(
            scan_ms = scanned.as_millis() as u64,
            apply_ms = (took - scanned).as_millis() as u64,
            "a discovery pass was slow; events waited meanwhile"
        );
    } else {
        tracing::trace!(took_us = took.as_micros() as u64, "discovery pass");
    }
}

/// A discovery pass longer than this is logged.
const SLOW_PASS: Duration = Duration::from_millis(50);

/// Not ready while a replica's binary is being resolved (its probes are not on, so its
/// requests would go uncounted); otherwise discovery says.
fn report_readiness(discovery: &Discovery, watched: &Watched, readiness: &Readiness) {
    if watched.pending > 0 {
        readiness.set(
            false,
            &format!(
                "resolving the binaries of {} replica(s); their probes are not on yet",
                watched.pending
            ),
        );
    } else {
        discovery.report_readiness(readiness);
    }
}

/// The pipeline's known hosts, published to the semantic sensor's kernel map.
fn publish_hosts(sensor: &mut Sensor, pipeline: &Pipeline) {
    if let Err(e) = sensor.set_known_hosts(pipeline.known_hosts()) {
        tracing::warn!(error = %e, "publishing the known hosts to the kernel failed; their responses count as other");
    }
}

/// The semantic sensor's counts since the last fold, through the pipeline.
fn fold_responses(sensor: &mut Sensor, pipeline: &mut Pipeline, now: u64, buf: &mut Vec<Event>) {
    buf.clear();
    match sensor.fold_responses(now, buf) {
        Ok(stats) => {
            tracing::trace!(
                keys = stats.keys,
                events = stats.events,
                deleted = stats.deleted,
                "semantic counters folded"
            );
            pipeline.handle_batch(buf);
        }
        Err(e) => tracing::warn!(error = %e, "reading the semantic sensor's counters failed"),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
