//! The HTTP side: discovery documents, lists and watches of the served collections.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::selectors::{parse_fields, parse_labels, percent_decode};
use super::world::{event_for, gone_event, selected, Watch, World};
use super::Kind;

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

pub(super) async fn handle(State(world): State<Arc<Mutex<World>>>, req: Request) -> Response {
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
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    let fields = match parse_fields(query.get("fieldSelector").map_or("", String::as_str), kind) {
        Ok(f) => f,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
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
