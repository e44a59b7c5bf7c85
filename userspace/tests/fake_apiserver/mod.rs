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
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The collections the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    Ingress,
    /// IngressRoute in `traefik.io/v1alpha1`.
    IngressRoute,
    /// IngressRoute in the old `traefik.containo.us/v1alpha1`.
    IngressRouteOld,
}

impl Kind {
    fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Ingress => "Ingress",
            Kind::IngressRoute | Kind::IngressRouteOld => "IngressRoute",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::Pod => "v1",
            Kind::Ingress => "networking.k8s.io/v1",
            Kind::IngressRoute => "traefik.io/v1alpha1",
            Kind::IngressRouteOld => "traefik.containo.us/v1alpha1",
        }
    }
    fn custom(self) -> bool {
        matches!(self, Kind::IngressRoute | Kind::IngressRouteOld)
    }
}

struct Watch {
    kind: Kind,
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<(String, String)>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Clone)]
struct LogEntry {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    new: Option<Value>,
}

struct World {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    log: Vec<LogEntry>,
    /// Watches from a resourceVersion at or below this get 410 Gone.
    compacted: u64,
    watches: Vec<Watch>,
    /// Whether the `traefik.containo.us` group is served.
    old_group: bool,
    /// Whether the `traefik.io` group is served.
    new_group: bool,
    requests: Vec<String>,
}

pub struct FakeApi {
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
    pub async fn start(old_group: bool) -> Self {
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

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn kube_config(&self) -> kube::Config {
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
    pub async fn stop(&self) {
        let taken = self.server.lock().unwrap().take();
        self.world.lock().unwrap().watches.clear();
        if let Some((stop, h)) = taken {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
        }
    }

    /// The API server comes back on the same address with the same state.
    pub async fn restart(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Forget the event history (like etcd compaction): watches resuming from before now
    /// get 410 Gone, and open watches are told so at once.
    pub fn compact(&self) {
        let mut w = self.world.lock().unwrap();
        w.compacted = w.rv;
        w.log.clear();
        let rv = w.rv;
        for watch in w.watches.drain(..) {
            let _ = watch.tx.send(gone_event(rv - 1, rv));
        }
    }

    pub fn set_old_group(&self, on: bool) {
        self.world.lock().unwrap().old_group = on;
    }

    pub fn requests(&self) -> Vec<String> {
        self.world.lock().unwrap().requests.clone()
    }

    /// Create or replace an object (by namespace/name); returns its resourceVersion.
    pub fn put(&self, kind: Kind, mut obj: Value) -> u64 {
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

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
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

impl World {
    fn publish(&mut self, e: LogEntry) {
        self.watches.retain(|w| match event_for(w, &e) {
            Some(line) => w.tx.send(line).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.log.push(e);
    }
}

fn send_bookmarks(world: &Mutex<World>) {
    let mut w = world.lock().unwrap();
    let rv = w.rv;
    w.watches.retain(|watch| {
        if !watch.bookmarks {
            return !watch.tx.is_closed();
        }
        let obj = json!({
            "kind": watch.kind.kind(), "apiVersion": watch.kind.api_version(),
            "metadata": {"resourceVersion": rv.to_string()}
        });
        watch.tx.send(line("BOOKMARK", &obj)).is_ok()
    });
}

fn line(ty: &str, obj: &Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap();
    s.push(b'\n');
    Bytes::from(s)
}

fn gone_event(asked: u64, current: u64) -> Bytes {
    line(
        "ERROR",
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure",
            "message": format!("too old resource version: {asked} ({current})"),
            "reason": "Expired", "code": 410
        }),
    )
}

/// The event a watch sees for a change, if any (selectors decide ADDED/MODIFIED/DELETED).
fn event_for(w: &Watch, e: &LogEntry) -> Option<Bytes> {
    if e.kind != w.kind {
        return None;
    }
    let matches = |o: &Option<Value>| o.as_ref().is_some_and(|o| selected(w, o));
    match (matches(&e.old), matches(&e.new)) {
        (false, true) => Some(line("ADDED", e.new.as_ref()?)),
        (true, true) => Some(line("MODIFIED", e.new.as_ref()?)),
        (true, false) => {
            // A deletion carries the final object; an object that stopped matching is
            // deleted as far as this watch is concerned, with its new state.
            let obj = e.new.as_ref().or(e.old.as_ref())?;
            Some(line("DELETED", obj))
        }
        (false, false) => None,
    }
}

fn selected(w: &Watch, obj: &Value) -> bool {
    if let Some(ns) = &w.namespace {
        if obj["metadata"]["namespace"].as_str() != Some(ns) {
            return false;
        }
    }
    let labels = &obj["metadata"]["labels"];
    let label_ok = w.labels.iter().all(|r| {
        let v = labels.get(&r.key).and_then(Value::as_str);
        match &r.op {
            LabelOp::Eq(want) => v == Some(want.as_str()),
            LabelOp::Ne(want) => v != Some(want.as_str()),
            LabelOp::Exists => v.is_some(),
            LabelOp::Absent => v.is_none(),
        }
    });
    let field_ok = w.fields.iter().all(|(path, want)| {
        let mut cur = obj;
        for part in path.split('.') {
            cur = &cur[part];
        }
        cur.as_str().unwrap_or("") == want
    });
    label_ok && field_ok
}

#[derive(Debug, Clone)]
enum LabelOp {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

#[derive(Debug, Clone)]
struct LabelReq {
    key: String,
    op: LabelOp,
}

fn parse_labels(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            LabelReq {
                key: k.trim().into(),
                op: LabelOp::Ne(v.trim().into()),
            }
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            LabelReq {
                key: k.trim().into(),
                op: LabelOp::Eq(v.trim().into()),
            }
        } else if let Some(k) = part.strip_prefix('!') {
            LabelReq {
                key: k.trim().into(),
                op: LabelOp::Absent,
            }
        } else if part.contains(' ') {
            return Err(format!("unsupported label selector {part:?}"));
        } else {
            LabelReq {
                key: part.into(),
                op: LabelOp::Exists,
            }
        };
        out.push(req);
    }
    Ok(out)
}

fn parse_fields(s: &str, kind: Kind) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("invalid field selector {part:?}"))?;
        let k = k.trim_end_matches('=');
        let supported = matches!(k, "metadata.name" | "metadata.namespace")
            || (kind == Kind::Pod && matches!(k, "spec.nodeName" | "status.phase"));
        if !supported {
            return Err(format!("field label not supported: {k}"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 3;
                }
                Err(_) => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()})
        .to_string(),
    )
        .into_response()
}

fn json_response(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `(kind, namespace)` for a collection path.
fn collection(path: &str, w: &World) -> Option<(Kind, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let split = if parts.first() == Some(&"api") { 2 } else { 3 };
    if parts.len() <= split {
        return None;
    }
    let (prefix, rest) = parts.split_at(split);
    let (ns, resource) = match rest {
        [r] => (None, *r),
        ["namespaces", ns, r] => (Some(ns.to_string()), *r),
        _ => return None,
    };
    let kind = match (prefix.join("/").as_str(), resource) {
        ("api/v1", "pods") => Kind::Pod,
        ("apis/networking.k8s.io/v1", "ingresses") => Kind::Ingress,
        ("apis/traefik.io/v1alpha1", "ingressroutes") if w.new_group => Kind::IngressRoute,
        ("apis/traefik.containo.us/v1alpha1", "ingressroutes") if w.old_group => {
            Kind::IngressRouteOld
        }
        _ => return None,
    };
    Some((kind, ns))
}

async fn handle(State(world): State<Arc<Mutex<World>>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut w = world.lock().unwrap();
    w.requests.push(match req.uri().query() {
        Some(q) => format!("{path}?{}", percent_decode(q)),
        None => path.clone(),
    });

    match path.as_str() {
        "/version" => {
            return json_response(json!({"major": "1", "minor": "35", "gitVersion": "v1.35.2"}))
        }
        "/api" => {
            return json_response(json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]}))
        }
        "/apis" => {
            let group = |name: &str| {
                json!({"name": name, "versions": [{"groupVersion": format!("{name}/v1alpha1"), "version": "v1alpha1"}],
                       "preferredVersion": {"groupVersion": format!("{name}/v1alpha1"), "version": "v1alpha1"}})
            };
            let mut groups = vec![json!({"name": "networking.k8s.io",
                "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"}})];
            if w.new_group {
                groups.push(group("traefik.io"));
            }
            if w.old_group {
                groups.push(group("traefik.containo.us"));
            }
            return json_response(
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            );
        }
        "/apis/traefik.io/v1alpha1" | "/apis/traefik.containo.us/v1alpha1" => {
            let served = if path.contains("containo") {
                w.old_group
            } else {
                w.new_group
            };
            if !served {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                );
            }
            let gv = path.trim_start_matches("/apis/");
            return json_response(
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": [
                    {"name": "ingressroutes", "singularName": "ingressroute", "namespaced": true, "kind": "IngressRoute",
                     "verbs": ["delete","deletecollection","get","list","patch","create","update","watch"]},
                    {"name": "middlewares", "singularName": "middleware", "namespaced": true, "kind": "Middleware",
                     "verbs": ["get","list","watch"]}
                ]}),
            );
        }
        _ => {}
    }

    let Some((kind, namespace)) = collection(&path, &w) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let labels = match parse_labels(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(l) => l,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let fields = match parse_fields(query.get("fieldSelector").map_or("", String::as_str), kind) {
        Ok(f) => f,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let watch = Watch {
        kind,
        namespace,
        labels,
        fields,
        bookmarks: query.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        tx,
    };

    if query.get("watch").map(String::as_str) != Some("true") {
        let items: Vec<Value> = w
            .objects
            .iter()
            .filter(|((k, _, _), o)| *k == kind && selected(&watch, o))
            .map(|(_, o)| {
                let mut o = o.clone();
                if !kind.custom() {
                    // Built-in list items carry no type: the list does.
                    let m = o.as_object_mut().unwrap();
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                o
            })
            .collect();
        return json_response(json!({
            "kind": format!("{}List", kind.kind()),
            "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": w.rv.to_string()},
            "items": items,
        }));
    }

    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if from < w.compacted {
        let _ = watch.tx.send(gone_event(from, w.rv));
        drop(watch);
    } else {
        let backlog: Vec<Bytes> = w
            .log
            .iter()
            .filter(|e| e.rv > from)
            .filter_map(|e| event_for(&watch, e))
            .collect();
        for l in backlog {
            let _ = watch.tx.send(l);
        }
        w.watches.push(watch);
    }
    drop(w);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

// Objects shaped like the API's.

pub const NODE: &str = "node-a";

pub fn pod(name: &str, uid: &str, node: &str, container_id: Option<&str>, ip: &str) -> Value {
    let state = match container_id {
        Some(_) => json!({"running": {"startedAt": "2026-05-01T10:00:05Z"}}),
        None => json!({"waiting": {"reason": "ContainerCreating"}}),
    };
    let mut status = json!({
        "phase": if container_id.is_some() { "Running" } else { "Pending" },
        "conditions": [{"type": "Ready", "status": if container_id.is_some() { "True" } else { "False" },
                        "lastProbeTime": null, "lastTransitionTime": "2026-05-01T10:00:06Z"}],
        "hostIP": "192.168.1.10", "hostIPs": [{"ip": "192.168.1.10"}],
        "podIP": ip, "podIPs": [{"ip": ip}],
        "startTime": "2026-05-01T10:00:00Z",
        "qosClass": "Burstable",
        "containerStatuses": [{
            "name": "traefik", "state": state, "lastState": {},
            "ready": container_id.is_some(), "restartCount": 0,
            "image": "docker.io/library/traefik:v3.7.15",
            "imageID": "docker.io/library/traefik@sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "started": container_id.is_some()
        }]
    });
    if let Some(id) = container_id {
        status["containerStatuses"][0]["containerID"] = json!(format!("containerd://{id}"));
    }
    json!({
        "metadata": {
            "name": name, "generateName": "traefik-6d5f8c7b9-", "namespace": "traefik", "uid": uid,
            "labels": {"app.kubernetes.io/name": "traefik", "app.kubernetes.io/instance": "traefik-traefik",
                       "pod-template-hash": "6d5f8c7b9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "traefik-6d5f8c7b9",
                                 "uid": "9a8b7c6d-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": "traefik",
            "containers": [{
                "name": "traefik", "image": "docker.io/library/traefik:v3.7.15",
                "args": ["--entryPoints.web.address=:8000/tcp", "--entryPoints.websecure.address=:8443/tcp"],
                "ports": [
                    {"name": "metrics", "containerPort": 9100, "protocol": "TCP"},
                    {"name": "traefik", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "web", "containerPort": 8000, "protocol": "TCP"},
                    {"name": "websecure", "containerPort": 8443, "protocol": "TCP"},
                    {"name": "websecure-http3", "containerPort": 8443, "protocol": "UDP"}
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 60, "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "priority": 0, "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": status
    })
}

pub fn ingress(name: &str, hosts: &[&str], class: Option<&str>) -> Value {
    let rules: Vec<Value> = hosts
        .iter()
        .map(|h| {
            json!({"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": name, "port": {"number": 80}}}}]}})
        })
        .collect();
    let mut spec = json!({"rules": rules});
    if let Some(c) = class {
        spec["ingressClassName"] = json!(c);
    }
    json!({
        "metadata": {"name": name, "namespace": "apps", "generation": 1,
                     "annotations": {"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"}},
        "spec": spec,
        "status": {"loadBalancer": {}}
    })
}

pub fn ingress_route(name: &str, rules: &[&str]) -> Value {
    let routes: Vec<Value> = rules
        .iter()
        .map(|r| {
            json!({"kind": "Rule", "match": r, "priority": 10,
                   "services": [{"kind": "Service", "name": name, "port": 80}]})
        })
        .collect();
    json!({
        "metadata": {"name": name, "namespace": "apps", "generation": 1},
        "spec": {"entryPoints": ["websecure"], "routes": routes, "tls": {}}
    })
}
