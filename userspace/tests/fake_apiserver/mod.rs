//! An in-process stand-in for the Kubernetes API server, speaking the list/watch protocol
//! the way the real one does, for the discovery tests (no cluster can run here).
//!
//! - one resourceVersion counter for every object, like etcd's revision;
//! - lists (`kind: PodList`, `metadata.resourceVersion`, items without kind/apiVersion for
//!   built-in types, with them for custom resources);
//! - `?watch=true&resourceVersion=N` streams newline-separated `{"type", "object"}` events
//!   newer than N, then live ones; objects that start or stop matching the selectors are
//!   `ADDED`/`DELETED` like in the real server; `BOOKMARK`s when `allowWatchBookmarks`;
//! - a watch from a resourceVersion older than the compaction point gets an `ERROR` event
//!   with a 410 `Status` (too old resource version) and the stream ends;
//! - `/apis` and `/apis/<group>/<version>` for API group discovery;
//! - stop/start on the same port to simulate an API server outage.
//!
//! Modules: `world` (objects, change log, watches), `handler` (the HTTP side),
//! `selectors` (label and field selectors), `objects` (pods, Ingresses, IngressRoutes).

mod handler;
mod objects;
mod selectors;
mod world;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use handler::handle;
use world::{gone_event, send_bookmarks, LogEntry, World};

pub(crate) use objects::{ingress, ingress_route, pod, NODE};

/// The collections the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    Pod,
    Ingress,
    /// IngressRoute in `traefik.io/v1alpha1`.
    IngressRoute,
    /// IngressRoute in the old `traefik.containo.us/v1alpha1`.
    IngressRouteOld,
}

impl Kind {
    pub(super) fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Ingress => "Ingress",
            Kind::IngressRoute | Kind::IngressRouteOld => "IngressRoute",
        }
    }
    pub(super) fn api_version(self) -> &'static str {
        match self {
            Kind::Pod => "v1",
            Kind::Ingress => "networking.k8s.io/v1",
            Kind::IngressRoute => "traefik.io/v1alpha1",
            Kind::IngressRouteOld => "traefik.containo.us/v1alpha1",
        }
    }
    pub(super) fn custom(self) -> bool {
        matches!(self, Kind::IngressRoute | Kind::IngressRouteOld)
    }
}

pub(crate) struct FakeApi {
    world: Arc<Mutex<World>>,
    addr: SocketAddr,
    server: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
    bookmarks: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.bookmarks.abort();
        if let Some((_, h)) = self.server.lock().unwrap().take() {
            h.abort();
        }
    }
}

impl FakeApi {
    /// Serves on a fresh loopback port. `old_group`: whether the Traefik v2 CRD group exists.
    pub(crate) async fn start(old_group: bool) -> Self {
        let world = Arc::new(Mutex::new(World {
            rv: 1000,
            objects: BTreeMap::new(),
            log: Vec::new(),
            compacted: 0,
            watches: Vec::new(),
            old_group,
            new_group: true,
            requests: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let w = world.clone();
        let bookmarks = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                send_bookmarks(&w);
            }
        });
        let api = FakeApi {
            world,
            addr,
            server: Mutex::new(None),
            bookmarks,
        };
        api.serve(listener);
        api
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn kube_config(&self) -> kube::Config {
        kube::Config::new(self.url().parse().unwrap())
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = Router::new()
            .fallback(handle)
            .with_state(self.world.clone());
        let h = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
        *self.server.lock().unwrap() = Some((stop_tx, h));
    }

    /// The API server goes away: open watches end, new connections are refused.
    pub(crate) async fn stop(&self) {
        let taken = self.server.lock().unwrap().take();
        self.world.lock().unwrap().watches.clear();
        if let Some((stop, h)) = taken {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
    }

    /// The API server comes back on the same address with the same state.
    pub(crate) async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Forget the event history (like etcd compaction): watches resuming from before now
    /// get 410 Gone, and open watches are told so at once.
    pub(crate) fn compact(&self) {
        let mut w = self.world.lock().unwrap();
        w.compacted = w.rv;
        w.log.clear();
        let rv = w.rv;
        for watch in w.watches.drain(..) {
            let _ = watch.tx.send(gone_event(rv - 1, rv));
        }
    }

    pub(crate) fn set_old_group(&self, on: bool) {
        self.world.lock().unwrap().old_group = on;
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.world.lock().unwrap().requests.clone()
    }

    /// Create or replace an object (by namespace/name); returns its resourceVersion.
    pub(crate) fn put(&self, kind: Kind, mut obj: Value) -> u64 {
        let mut w = self.world.lock().unwrap();
        w.rv += 1;
        let rv = w.rv;
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
        }
        obj["metadata"]["creationTimestamp"] = json!("2026-05-01T10:00:00Z");
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind());
        let old = w.objects.insert((kind, ns, name), obj.clone());
        w.publish(LogEntry {
            rv,
            kind,
            old,
            new: Some(obj),
        });
        rv
    }

    pub(crate) fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut w = self.world.lock().unwrap();
        let Some(mut obj) = w
            .objects
            .remove(&(kind, namespace.to_string(), name.to_string()))
        else {
            return;
        };
        w.rv += 1;
        let rv = w.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        w.publish(LogEntry {
            rv,
            kind,
            old: Some(obj),
            new: None,
        });
    }
}
