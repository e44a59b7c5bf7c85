//! Where replicas come from: local processes or the Kubernetes API, behind one interface
//! the run loop polls.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::AgentError;
use crate::config::{DiscoveryMode, RunArgs};
use crate::discovery::kubernetes::{KubeConfig, KubeDiscovery, KubeError};
use crate::discovery::local::{LocalConfig, LocalDiscovery, Scan};
use crate::discovery::metrics::DiscoveryMetrics;
use crate::hosts::KnownHosts;
use crate::metrics::Readiness;
use crate::pipeline::Pipeline;

/// Where replicas come from.
pub(super) enum Discovery {
    Local(Box<LocalDiscovery>),
    Kubernetes(Box<KubeDiscovery>),
}

impl Discovery {
    pub(super) async fn start(
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
                hosts_per_namespace: k.hosts_per_namespace,
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

    pub(super) fn scan(&self) -> Scan {
        match self {
            Discovery::Local(d) => d.scan(),
            Discovery::Kubernetes(d) => d.scan().scan,
        }
    }

    /// Resolves when Kubernetes objects changed; never in local mode (it polls).
    pub(super) async fn changed(&self) {
        match self {
            Discovery::Local(_) => std::future::pending().await,
            Discovery::Kubernetes(d) => d.changed().await,
        }
    }

    /// Publishes Kubernetes-discovered hosts, when they changed, to the pipeline's labels
    /// and to the prober.
    pub(super) fn update_hosts(
        &self,
        pipeline: &mut Pipeline,
        published: &watch::Sender<Arc<KnownHosts>>,
    ) {
        if let Discovery::Kubernetes(d) = self {
            let hosts = d.hosts().hosts;
            if **published.borrow() != hosts {
                let before = published.borrow().dropped();
                if hosts.dropped() != before {
                    tracing::warn!(
                        dropped = hosts.dropped(),
                        limit = crate::hosts::MAX_KNOWN_HOSTS,
                        "hosts left out of the host label changed (invalid, over the limit or over a namespace's quota: they count as other)"
                    );
                }
                tracing::info!(hosts = hosts.len(), "known hosts changed");
                let hosts = Arc::new(hosts);
                pipeline.set_known_hosts(hosts.clone());
                published.send_replace(hosts);
            }
        }
    }

    /// The sensor is attached when this is called: readiness is then discovery's.
    pub(super) fn report_readiness(&self, readiness: &Readiness) {
        match self {
            Discovery::Local(_) => readiness.set(true, "sensor attached, discovery ran"),
            Discovery::Kubernetes(d) => d.publish_readiness(readiness),
        }
    }
}
