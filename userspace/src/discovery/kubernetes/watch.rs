//! The watch tasks: one `kube::runtime` watcher per resource feeding its reflector store
//! (pods) or its host index (Ingresses, IngressRoutes),
//! and the task that finds which IngressRoute API groups the server serves (now and
//! later) and starts a watcher for each. Every task runs in its own tracing span.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::host_index::{HostIndex, Hosted};
use super::{RouteIndexes, Shared, INGRESS_ROUTE_GROUPS};
use crate::discovery::metrics::ResourceLabels;

const INGRESS_ROUTE_VERSION: &str = "v1alpha1";

/// Runs one watcher into its reflector store until the discovery is dropped; `slim`
/// strips each object to what discovery reads before the store keeps it.
pub(super) fn spawn_watch<K>(
    resource: &'static str,
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    slim: fn(&mut K),
    shared: Arc<Shared>,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let task = async move {
        let stream = watcher(api, config)
            .default_backoff()
            .modify(slim)
            .reflect(writer);
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            observe(resource, item.as_ref(), &shared);
        }
    }
    .instrument(tracing::info_span!("watch", resource));
    tokio::spawn(task)
}

/// Runs one watcher into a [`HostIndex`] until the discovery is dropped: no object is
/// kept, only the hosts each names.
pub(super) fn spawn_index_watch<K>(
    resource: &'static str,
    api: Api<K>,
    index: Arc<Mutex<HostIndex>>,
    class: String,
    shared: Arc<Shared>,
) -> JoinHandle<()>
where
    K: Hosted + kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let task = async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if let Ok(event) = &item {
                index
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .event(event, &class);
            }
            observe(resource, item.as_ref(), &shared);
        }
    }
    .instrument(tracing::info_span!("watch", resource));
    tokio::spawn(task)
}

/// What every watch does with an event: marks the first list done, wakes discovery on
/// a change, counts and logs a failure (the watcher retries with backoff).
fn observe<K>(
    resource: &'static str,
    item: Result<&watcher::Event<K>, &watcher::Error>,
    shared: &Shared,
) {
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
            shared
                .metrics
                .api_errors
                .get_or_create(&ResourceLabels { resource })
                .inc();
            tracing::warn!(resource, error = %e, "watch failed; retrying with backoff");
        }
    }
}

/// Watches IngressRoutes in every Traefik API group the server has, looking again every
/// `recheck` for CRDs installed later.
pub(super) async fn watch_ingress_route_groups(
    client: Client,
    routes: RouteIndexes,
    class: String,
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
                    let index = Arc::new(Mutex::new(HostIndex::default()));
                    handles.0.push(spawn_index_watch(
                        "ingressroutes",
                        Api::<DynamicObject>::all_with(client.clone(), &ar),
                        index.clone(),
                        class.clone(),
                        shared.clone(),
                    ));
                    routes
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((g, index));
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
