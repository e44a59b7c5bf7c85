//! Kubernetes discovery: the Traefik pods on this node are the replicas, and Ingress /
//! IngressRoute objects name the hosts. The only module that talks to the API server.
//!
//! Every resource is followed by a `kube::runtime` watcher (list, then watch from the
//! list's resourceVersion, relist on `410 Gone`, the runtime's exponential backoff on
//! failures). Pods feed a reflector store, Ingresses and IngressRoutes a [`HostIndex`]
//! that keeps only the hosts each object names; both keep the last known state through
//! an API outage. [`KubeDiscovery::scan`] turns the pod store into targets through
//! [`super::pod_cgroup`], and [`KubeDiscovery::hosts`] the indexes into `host` label
//! values.
//!
//! IngressRoutes are read as `DynamicObject`s rather than a derived CustomResource: the
//! same code then serves both API groups (`traefik.io` and the older
//! `traefik.containo.us`), only `spec.routes[].match` and one annotation are read, and the
//! build needs neither kube's derive macros nor JSON schemas.
//!
//! Submodules: `watch` (the watch tasks, each in its own span), `objects` (API objects to
//! plain types), `health` (API server reachability from every request's outcome).

mod health;
pub mod host_index;
mod objects;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::Api;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::pod_cgroup::{CgroupLayout, CgroupLayoutError, PodResolver, PodScan};
use crate::discovery::metrics::DiscoveryMetrics;
use crate::hosts::KnownHosts;
use health::{ApiHealth, ObserveLayer};
use host_index::HostIndex;
use watch::{spawn_index_watch, spawn_watch, watch_ingress_route_groups};

pub use objects::CLASS_ANNOTATION;

/// IngressRoute API groups, newest first; the old one only exists on clusters that still
/// have Traefik v2's CRDs installed.
pub const INGRESS_ROUTE_GROUPS: [&str; 2] = ["traefik.io", "traefik.containo.us"];

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "no usable Kubernetes configuration (neither an in-cluster service account nor a \
         kubeconfig from KUBECONFIG or ~/.kube/config): {source}"
    )]
    NoConfig {
        #[source]
        source: kube::config::InferConfigError,
    },
    #[error("kubernetes client: {source}")]
    Client {
        #[source]
        source: kube::Error,
    },
    #[error("--node-name (NODE_NAME) is required for kubernetes discovery: only this node's pods are watched")]
    NoNodeName,
    #[error(transparent)]
    Cgroups {
        #[from]
        source: CgroupLayoutError,
    },
}

#[derive(Debug, Clone)]
pub struct KubeConfig {
    pub node_name: String,
    pub label_selector: String,
    /// Only pods in this namespace (`None`: all).
    pub pod_namespace: Option<String>,
    /// Only these containers of a pod (empty: all).
    pub containers: Vec<String>,
    pub ingress_class: String,
    /// Hosts per namespace of objects that name no class, outside Traefik's namespaces.
    pub hosts_per_namespace: usize,
    /// Hosts from `--host`, always labelled.
    pub static_hosts: Vec<String>,
    pub host_cgroup_root: PathBuf,
    pub host_proc: PathBuf,
    /// How often API groups are looked at again for IngressRoute CRDs installed later.
    pub crd_recheck: Duration,
}

/// The kube configuration from the environment: in-cluster service account, else
/// KUBECONFIG / ~/.kube/config.
pub async fn infer_config() -> Result<kube::Config, KubeError> {
    kube::Config::infer()
        .await
        .map_err(|source| KubeError::NoConfig { source })
}

/// Whether each watched resource has completed its first list.
#[derive(Default)]
struct Synced {
    pods: AtomicBool,
    ingresses: AtomicBool,
}

struct Shared {
    metrics: DiscoveryMetrics,
    changed: Notify,
    synced: Synced,
}

/// Readiness as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The pod list arrived at least once.
    pub ready: bool,
    /// Why not ready, or a degraded condition while ready ("" when all is well).
    pub detail: String,
}

/// Hosts for the `host` label, with what was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSet {
    /// `--host` entries first, then discovered hosts in sorted order (normalised,
    /// deduplicated and bounded by [`KnownHosts`]).
    pub hosts: KnownHosts,
    /// Wildcard, invalid or over-the-limit names.
    pub dropped: usize,
    pub unparsable_rules: usize,
}

/// IngressRoute host indexes by API group, grown as groups are discovered.
type RouteIndexes = Arc<Mutex<Vec<(&'static str, Arc<Mutex<HostIndex>>)>>>;

pub struct KubeDiscovery {
    cfg: KubeConfig,
    resolver: PodResolver,
    pods: Store<Pod>,
    ingresses: Arc<Mutex<HostIndex>>,
    routes: RouteIndexes,
    shared: Arc<Shared>,
    health: Arc<ApiHealth>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeDiscovery {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeDiscovery {
    /// Starts the watchers. Returns at once: the first lists arrive in the background
    /// (see [`KubeDiscovery::readiness`]).
    pub fn start(
        kube_config: kube::Config,
        cfg: KubeConfig,
        metrics: DiscoveryMetrics,
    ) -> Result<Self, KubeError> {
        if cfg.node_name.is_empty() {
            return Err(KubeError::NoNodeName);
        }
        let layout = CgroupLayout::detect(&cfg.host_cgroup_root)?;
        tracing::info!(layout = %layout.describe(), proc = %cfg.host_proc.display(), "host cgroups");
        if matches!(layout, CgroupLayout::Legacy { .. }) {
            tracing::error!("this host has no cgroup v2 hierarchy: the kernel filter needs cgroup v2, every pod will be reported as failed");
        }
        let resolver = PodResolver::new(layout, cfg.host_proc.clone());

        let health = Arc::new(ApiHealth::new(metrics.api_up.clone()));
        let client = kube::client::ClientBuilder::try_from(kube_config)
            .map_err(|source| KubeError::Client { source })?
            .with_layer(&ObserveLayer {
                health: health.clone(),
            })
            .build();
        let shared = Arc::new(Shared {
            metrics,
            changed: Notify::new(),
            synced: Synced::default(),
        });

        let mut tasks = Vec::new();
        let pod_api: Api<Pod> = match &cfg.pod_namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let pod_watch = watcher::Config::default()
            .fields(&format!("spec.nodeName={}", cfg.node_name))
            .labels(&cfg.label_selector);
        let (pods, w) = reflector::store();
        tasks.push(spawn_watch(
            "pods",
            pod_api,
            pod_watch,
            w,
            objects::slim_pod,
            shared.clone(),
        ));

        let ingresses = Arc::new(Mutex::new(HostIndex::default()));
        tasks.push(spawn_index_watch(
            "ingresses",
            Api::<Ingress>::all(client.clone()),
            ingresses.clone(),
            cfg.ingress_class.clone(),
            shared.clone(),
        ));

        let routes = Arc::new(Mutex::new(Vec::new()));
        tasks.push(tokio::spawn(
            watch_ingress_route_groups(
                client,
                routes.clone(),
                cfg.ingress_class.clone(),
                shared.clone(),
                cfg.crd_recheck,
            )
            .instrument(tracing::info_span!("ingress_route_groups")),
        ));

        Ok(KubeDiscovery {
            cfg,
            resolver,
            pods,
            ingresses,
            routes,
            shared,
            health,
            tasks,
        })
    }

    /// Resolves when a store changed (or a first list completed) since the last call.
    pub async fn changed(&self) {
        self.shared.changed.notified().await;
    }

    /// Targets for the pods known now (the last known state during an outage).
    pub fn scan(&self) -> PodScan {
        let mut pods: Vec<_> = self
            .pods
            .state()
            .iter()
            .filter_map(|p| objects::pod_info(p, &self.cfg.node_name, &self.cfg.containers))
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.resolver.resolve(&pods)
    }

    /// `host` label values, most trusted first (the label is bounded, and tenants must not
    /// push the watched Traefik's own hosts out of it): `--host` entries; hosts of objects
    /// that name our ingress class or live in the namespace of a watched Traefik pod;
    /// then, namespace by namespace, at most `hosts_per_namespace` hosts of each other
    /// namespace's class-less objects. Within a tier, in order.
    pub fn hosts(&self) -> HostSet {
        let traefik_namespaces: BTreeSet<String> = self
            .pods
            .state()
            .iter()
            .filter_map(|p| p.metadata.namespace.clone())
            .collect();
        let mut indexes = vec![self.ingresses.clone()];
        indexes.extend(
            self.routes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(|(_, i)| i.clone()),
        );
        let guards: Vec<_> = indexes
            .iter()
            .map(|i| i.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect();
        let unparsable = guards.iter().map(|g| g.unparsable()).sum();
        let indexes: Vec<&HostIndex> = guards.iter().map(|g| &**g).collect();
        let (hosts, over_quota) = label_hosts(
            &self.cfg.static_hosts,
            &indexes,
            &traefik_namespaces,
            self.cfg.hosts_per_namespace,
        );
        drop(guards);
        let set = HostSet {
            dropped: hosts.dropped() + over_quota,
            hosts,
            unparsable_rules: unparsable,
        };
        let d = &self.shared.metrics;
        d.known_hosts.set(set.hosts.len() as i64);
        d.dropped_hosts.set(set.dropped as i64);
        d.unparsable_rules.set(unparsable as i64);
        set
    }

    /// Ready once the pods were listed; while ready, an unreachable API server is reported
    /// as a degraded condition rather than unreadiness (the agent keeps working on the last
    /// known pods).
    pub fn readiness(&self) -> Readiness {
        let outage = self.health.outage();
        if !self.shared.synced.pods.load(Ordering::SeqCst) {
            let mut detail = "waiting for the first list of Traefik pods".to_string();
            if !outage.is_empty() {
                detail = format!("{detail}: {outage}");
            }
            return Readiness {
                ready: false,
                detail,
            };
        }
        let mut notes = Vec::new();
        if !outage.is_empty() {
            notes.push(outage);
        }
        if !self.shared.synced.ingresses.load(Ordering::SeqCst) {
            notes.push("Ingress objects not listed yet: hosts may be incomplete".to_string());
        }
        Readiness {
            ready: true,
            detail: notes.join("\n"),
        }
    }

    /// Puts [`KubeDiscovery::readiness`] on `/readyz`. Call only once the sensor is
    /// attached: until then the agent is not ready whatever discovery says.
    pub fn publish_readiness(&self, readiness: &crate::metrics::Readiness) {
        let r = self.readiness();
        if r.ready {
            readiness.set_note(&r.detail);
            readiness.set(true, "");
        } else {
            readiness.set_note("");
            readiness.set(false, &r.detail);
        }
    }

    pub fn api_up(&self) -> bool {
        self.health.is_up()
    }

    /// IngressRoute API groups being watched.
    pub fn ingress_route_groups(&self) -> Vec<&'static str> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(g, _)| *g)
            .collect()
    }
}

/// The bounded `host` label set from `--host` entries and the host indexes, most trusted
/// first (see [`KubeDiscovery::hosts`]); and how many tenant hosts the per-namespace quota
/// left out.
pub fn label_hosts(
    static_hosts: &[String],
    indexes: &[&HostIndex],
    traefik_namespaces: &BTreeSet<String>,
    per_namespace: usize,
) -> (KnownHosts, usize) {
    let mut ours: Vec<&String> = Vec::new();
    // Sorted runs appended to `ours`: one needs no sort (the usual case: Ingresses only).
    let mut runs = 0;
    let mut tenants: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
    for index in indexes {
        let before = ours.len();
        ours.extend(index.named_ours());
        runs += usize::from(ours.len() > before);
        for (ns, hosts) in index.by_namespace() {
            if traefik_namespaces.contains(ns) {
                let before = ours.len();
                ours.extend(hosts);
                runs += usize::from(ours.len() > before);
            } else {
                tenants.entry(ns).or_default().extend(hosts);
            }
        }
    }
    if runs > 1 {
        // A sort of references: no name is copied, however many the cluster has.
        ours.sort_unstable();
        ours.dedup();
    }
    let mut over_quota = 0;
    let mut tenant_hosts: Vec<&String> = Vec::new();
    for hosts in tenants.values() {
        over_quota += hosts.len().saturating_sub(per_namespace);
        tenant_hosts.extend(hosts.iter().take(per_namespace));
    }
    tenant_hosts.sort_unstable();
    tenant_hosts.dedup();
    // Wildcards (`*.example.com`) cannot be a label (requests carry concrete names): they
    // are dropped with the invalid names.
    let hosts = KnownHosts::new(static_hosts.iter().chain(ours).chain(tenant_hosts));
    (hosts, over_quota)
}
