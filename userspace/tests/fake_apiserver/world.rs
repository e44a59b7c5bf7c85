//! The fake server's state: every object, the change log a watch resumes from, the open
//! watches, and how a change becomes a watch event.

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::selectors::{LabelOp, LabelReq};
use super::Kind;

pub(super) struct Watch {
    pub(super) kind: Kind,
    pub(super) namespace: Option<String>,
    pub(super) labels: Vec<LabelReq>,
    pub(super) fields: Vec<(String, String)>,
    pub(super) bookmarks: bool,
    pub(super) tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Clone)]
pub(super) struct LogEntry {
    pub(super) rv: u64,
    pub(super) kind: Kind,
    pub(super) old: Option<Value>,
    pub(super) new: Option<Value>,
}

pub(super) struct World {
    pub(super) rv: u64,
    pub(super) objects: BTreeMap<(Kind, String, String), Value>,
    pub(super) log: Vec<LogEntry>,
    /// Watches from a resourceVersion at or below this get 410 Gone.
    pub(super) compacted: u64,
    pub(super) watches: Vec<Watch>,
    /// Whether the `traefik.containo.us` group is served.
    pub(super) old_group: bool,
    /// Whether the `traefik.io` group is served.
    pub(super) new_group: bool,
    pub(super) requests: Vec<String>,
}

impl World {
    pub(super) fn publish(&mut self, e: LogEntry) {
        self.watches.retain(|w| match event_for(w, &e) {
            Some(line) => w.tx.send(line).is_ok(),
            None => !w.tx.is_closed(),
        });
        self.log.push(e);
    }
}

pub(super) fn send_bookmarks(world: &Mutex<World>) {
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

pub(super) fn line(ty: &str, obj: &Value) -> Bytes {
    let mut s = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap();
    s.push(b'\n');
    Bytes::from(s)
}

pub(super) fn gone_event(asked: u64, current: u64) -> Bytes {
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
pub(super) fn event_for(w: &Watch, e: &LogEntry) -> Option<Bytes> {
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

pub(super) fn selected(w: &Watch, obj: &Value) -> bool {
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
