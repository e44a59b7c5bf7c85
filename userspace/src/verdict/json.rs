//! The verdicts as served on `/api/v1/replicas` and read back by `routeskew status`:
//! one object per (replica, host), `since` in Unix seconds, the evidence named.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Reason, State, Verdict};

/// The document `/api/v1/replicas` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictReport {
    /// Unix seconds when the verdicts were computed.
    pub generated_at: u64,
    pub replicas: Vec<ReplicaVerdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaVerdict {
    pub replica: String,
    pub namespace: String,
    pub host: String,
    /// `ok`, `suspect`, `routeless` or `unknown`.
    pub state: String,
    /// Why a replica with router misses is not routeless: `confirming`,
    /// `siblings_miss_too`, `inventory_complete`, `sensor_blind`, `too_young`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix seconds the state began.
    pub since: u64,
    pub evidence: Evidence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub router_miss_rounds: u32,
    pub siblings: u32,
    pub siblings_routing: u32,
    /// Routers its siblings list and it lacks; absent until its API answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lacks_routers: Option<Vec<String>>,
    pub sensor_blind: bool,
    pub ready_for_seconds: u64,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Suspect => "suspect",
            State::Routeless => "routeless",
            State::Unknown => "unknown",
        }
    }
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Confirming => "confirming",
            Reason::SiblingsMissToo => "siblings_miss_too",
            Reason::InventoryComplete => "inventory_complete",
            Reason::SensorBlind => "sensor_blind",
            Reason::TooYoung => "too_young",
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The report of `verdicts`, computed at monotonic `now` (wall clock `now_wall`).
pub fn render(verdicts: &[Verdict], now: u64, now_wall: SystemTime) -> VerdictReport {
    let replicas = verdicts
        .iter()
        .map(|v| {
            let ago = Duration::from_nanos(now.saturating_sub(v.since_ns));
            ReplicaVerdict {
                replica: v.replica.name.clone(),
                namespace: v.replica.namespace.clone(),
                host: v.host.clone(),
                state: v.state.as_str().to_string(),
                reason: v.reason.map(|r| r.as_str().to_string()),
                since: unix(now_wall.checked_sub(ago).unwrap_or(UNIX_EPOCH)),
                evidence: Evidence {
                    router_miss_rounds: v.router_miss_rounds,
                    siblings: v.siblings,
                    siblings_routing: v.siblings_routing,
                    lacks_routers: v.lacks.clone(),
                    sensor_blind: v.blind,
                    ready_for_seconds: v.ready_for.as_secs(),
                },
            }
        })
        .collect();
    VerdictReport {
        generated_at: unix(now_wall),
        replicas,
    }
}

impl VerdictReport {
    /// The per-replica table `routeskew status` prints: one line per (replica, host).
    pub fn table(&self) -> String {
        let mut rows = vec![[
            "REPLICA".to_string(),
            "NAMESPACE".to_string(),
            "HOST".to_string(),
            "STATE".to_string(),
            "FOR".to_string(),
            "EVIDENCE".to_string(),
        ]];
        for r in &self.replicas {
            let state = match &r.reason {
                Some(reason) => format!("{} ({reason})", r.state),
                None => r.state.clone(),
            };
            let e = &r.evidence;
            // Router misses come with their context; a routed host needs none.
            let mut evidence = if e.router_miss_rounds > 0 {
                format!(
                    "misses {} rounds; siblings routing {}/{}",
                    e.router_miss_rounds, e.siblings_routing, e.siblings
                )
            } else {
                String::new()
            };
            if let Some(l) = &e.lacks_routers {
                if !l.is_empty() {
                    let names: Vec<&str> = l.iter().take(3).map(String::as_str).collect();
                    let more = if l.len() > 3 { ", …" } else { "" };
                    if !evidence.is_empty() {
                        evidence.push_str("; ");
                    }
                    evidence.push_str(&format!("lacks {} ({}{more})", l.len(), names.join(", ")));
                }
            }
            if e.sensor_blind {
                if !evidence.is_empty() {
                    evidence.push_str("; ");
                }
                evidence.push_str("sensor blind");
            }
            let age = self.generated_at.saturating_sub(r.since);
            rows.push([
                r.replica.clone(),
                r.namespace.clone(),
                r.host.clone(),
                state,
                humantime::format_duration(Duration::from_secs(age)).to_string(),
                evidence,
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}
