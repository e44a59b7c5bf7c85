//! Kubernetes discovery: the Traefik pods on this node are the replicas, and Ingress /
//! IngressRoute objects name the hosts. The only module that talks to the API server.
//!
//! Every resource is followed by a `kube::runtime` watcher feeding a reflector store
//! (list, then watch from the list's resourceVersion, relist on `410 Gone`, the runtime's
//! exponential backoff on failures). The stores keep the last known state through an API
//! outage; [`KubeDiscovery::scan`] turns the pod store into targets through
//! [`super::pod_cgroup`], and [`KubeDiscovery::hosts`] the Ingress and IngressRoute
//! stores into `host` label values.
//!
//! IngressRoutes are read as `DynamicObject`s rather than a derived CustomResource: the
//! same code then serves both API groups (`traefik.io` and the older
//! `traefik.containo.us`), only `spec.routes[].match` and one annotation are read, and the
//! build needs neither kube's derive macros nor JSON schemas.

mod health;
mod objects;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::pod_cgroup::{CgroupLayout, PodResolver, PodScan};
use crate::discovery::metrics::{DiscoveryMetrics, ResourceLabels};
use crate::hosts::KnownHosts;
use health::{ApiHealth, ObserveLayer};

pub use objects::CLASS_ANNOTATION;

/// IngressRoute API groups, newest first; the old one only exists on clusters that still
/// have Traefik v2's CRDs installed.
pub const INGRESS_ROUTE_GROUPS: [&str; 2] = ["traefik.io", "traefik.containo.us"];
const INGRESS_ROUTE_VERSION: &str = "v1alpha1";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "no usable Kubernetes configuration (neither an in-cluster service account nor a \
         kubeconfig from KUBECONFIG or ~/.kube/config): {0}"
    )]
    NoConfig(String),
    #[error("kubernetes client: {0}")]
    Client(String),
    #[error("--node-name (NODE_NAME) is required for kubernetes discovery: only this node's pods are watched")]
    NoNodeName,
    #[error("{0}")]
    Cgroups(String),
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
        .map_err(|e| KubeError::NoConfig(e.to_string()))
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

/// IngressRoute stores by API group, grown as groups are discovered.
type RouteStores = Arc<Mutex<Vec<(&'static str, Store<DynamicObject>)>>>;

pub struct KubeDiscovery {
    cfg: KubeConfig,
    resolver: PodResolver,
    pods: Store<Pod>,
    ingresses: Store<Ingress>,
    routes: RouteStores,
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
        let layout = CgroupLayout::detect(&cfg.host_cgroup_root).map_err(KubeError::Cgroups)?;
        tracing::info!(layout = %layout.describe(), proc = %cfg.host_proc.display(), "host cgroups");
        if matches!(layout, CgroupLayout::Legacy { .. }) {
            tracing::error!("this host has no cgroup v2 hierarchy: the kernel filter needs cgroup v2, every pod will be reported as failed");
        }
        let resolver = PodResolver::new(layout, cfg.host_proc.clone());

        let health = Arc::new(ApiHealth::new(metrics.api_up.clone()));
        let client = kube::client::ClientBuilder::try_from(kube_config)
            .map_err(|e| KubeError::Client(e.to_string()))?
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
        tasks.push(spawn_watch("pods", pod_api, pod_watch, w, shared.clone()));

        let (ingresses, w) = reflector::store();
        tasks.push(spawn_watch(
            "ingresses",
            Api::<Ingress>::all(client.clone()),
            watcher::Config::default(),
            w,
            shared.clone(),
        ));

        let routes = Arc::new(Mutex::new(Vec::new()));
        tasks.push(tokio::spawn(watch_ingress_route_groups(
            client,
            routes.clone(),
            shared.clone(),
            cfg.crd_recheck,
        )));

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

    /// `host` label values: `--host` entries, then Ingress and IngressRoute hosts.
    pub fn hosts(&self) -> HostSet {
        let mut discovered = BTreeSet::new();
        for ing in self.ingresses.state() {
            discovered.extend(objects::ingress_hosts(&ing, &self.cfg.ingress_class));
        }
        let mut unparsable = 0;
        let stores: Vec<Store<DynamicObject>> = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(_, s)| s.clone())
            .collect();
        for store in stores {
            for route in store.state() {
                let r = objects::ingress_route_hosts(&route, &self.cfg.ingress_class);
                unparsable += r.unparsable;
                discovered.extend(r.hosts);
            }
        }
        // Wildcards (`*.example.com`) cannot be a label (requests carry concrete names):
        // they are dropped with the invalid names.
        let hosts = KnownHosts::new(self.cfg.static_hosts.iter().chain(discovered.iter()));
        let set = HostSet {
            dropped: hosts.dropped(),
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

/// Runs one watcher into its reflector store until the discovery is dropped.
fn spawn_watch<K>(
    resource: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    shared: Arc<Shared>,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        let stream = watcher(api, config).default_backoff().reflect(writer);
        futures::pin_mut!(stream);
        let errors = shared
            .metrics
            .api_errors
            .get_or_create(&ResourceLabels { resource })
            .clone();
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::InitDone) => {
                    tracing::debug!(resource, "list complete");
                    match resource {
                        "pods" => shared.synced.pods.store(true, Ordering::SeqCst),
                        "ingresses" => shared.synced.ingresses.store(true, Ordering::SeqCst),
                        _ => {}
                    }
                    shared.changed.notify_one();
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    shared.changed.notify_one();
                }
                // The store swaps its contents at InitDone; nothing to act on before.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => {
                    errors.inc();
                    tracing::warn!(resource, error = %e, "watch failed; retrying with backoff");
                }
            }
        }
    })
}

/// Watches IngressRoutes in every Traefik API group the server has, looking again every
/// `recheck` for CRDs installed later.
async fn watch_ingress_route_groups(
    client: Client,
    routes: RouteStores,
    shared: Arc<Shared>,
    recheck: Duration,
) {
    let errors = shared
        .metrics
        .api_errors
        .get_or_create(&ResourceLabels {
            resource: "discovery",
        })
        .clone();
    let mut watched: Vec<&'static str> = Vec::new();
    // The per-group watchers end with this task (dropping the future drops this).
    struct AbortOnDrop(Vec<JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            for h in &self.0 {
                h.abort();
            }
        }
    }
    let mut handles = AbortOnDrop(Vec::new());
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = match served_ingress_route_groups(&client).await {
            Ok(groups) => {
                retry = Duration::from_secs(1);
                for g in groups {
                    if watched.contains(&g) {
                        continue;
                    }
                    tracing::info!(group = g, "watching IngressRoutes");
                    let gvk = GroupVersionKind::gvk(g, INGRESS_ROUTE_VERSION, "IngressRoute");
                    let ar = ApiResource::from_gvk_with_plural(&gvk, "ingressroutes");
                    let writer = reflector::store::Writer::new(ar.clone());
                    let store = writer.as_reader();
                    handles.0.push(spawn_watch(
                        "ingressroutes",
                        Api::<DynamicObject>::all_with(client.clone(), &ar),
                        watcher::Config::default(),
                        writer,
                        shared.clone(),
                    ));
                    routes
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((g, store));
                    watched.push(g);
                }
                recheck
            }
            Err(e) => {
                errors.inc();
                tracing::warn!(error = %e, "API group discovery failed; retrying");
                let w = retry;
                retry = (retry * 2).min(Duration::from_secs(30));
                w
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Which IngressRoute groups the API server serves (`ingressroutes` in `<group>/v1alpha1`).
async fn served_ingress_route_groups(client: &Client) -> Result<Vec<&'static str>, kube::Error> {
    let groups = client.list_api_groups().await?;
    let mut out = Vec::new();
    for g in INGRESS_ROUTE_GROUPS {
        let Some(group) = groups.groups.iter().find(|x| x.name == g) else {
            continue;
        };
        if !group
            .versions
            .iter()
            .any(|v| v.version == INGRESS_ROUTE_VERSION)
        {
            continue;
        }
        let resources = client
            .list_api_group_resources(&format!("{g}/{INGRESS_ROUTE_VERSION}"))
            .await?;
        if resources
            .resources
            .iter()
            .any(|r| r.name == "ingressroutes")
        {
            out.push(g);
        }
    }
    Ok(out)
}
