//! The upstream requests each Traefik process wrote, kept to corroborate a router miss:
//! a 404 whose request Traefik had forwarded upstream is the backend's, not Traefik's.
//! Entries keep keyed hashes only (target, Host, X-Forwarded-Host), never a path.

use std::collections::VecDeque;

use super::exchange::ClientRequest;
use crate::pipeline::http::{host_hash, RequestHead};

/// Upstream requests remembered per process for corroboration.
const MAX_UPSTREAM_LOG: usize = 4096;
/// Processes with an upstream log; more would mean we watch far more than Traefik replicas.
const MAX_UPSTREAM_PROCESSES: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct UpstreamEntry {
    ts_ns: u64,
    target: u64,
    host: u64,
    forwarded_host: u64,
}

/// Per process (tgid), its upstream requests, oldest first. Bounded per process and in
/// processes.
#[derive(Debug, Default)]
pub(super) struct UpstreamLog {
    logs: foldhash::HashMap<u32, VecDeque<UpstreamEntry>>,
}

impl UpstreamLog {
    /// Logs an upstream request process `tgid` wrote at `ts`. Returns false when it was not
    /// logged because too many processes already have a log.
    pub(super) fn record(&mut self, tgid: u32, ts: u64, r: &RequestHead) -> bool {
        if !self.logs.contains_key(&tgid) && self.logs.len() >= MAX_UPSTREAM_PROCESSES {
            return false;
        }
        let host = host_hash(&r.host);
        // Traefik passes the Host through and repeats it in X-Forwarded-Host: hash once.
        let forwarded_host = if r.forwarded_host == r.host {
            host
        } else {
            host_hash(&r.forwarded_host)
        };
        let log = self.logs.entry(tgid).or_default();
        if log.len() >= MAX_UPSTREAM_LOG {
            log.pop_front();
        }
        log.push_back(UpstreamEntry {
            ts_ns: ts,
            target: r.target,
            host,
            forwarded_host,
        });
        true
    }

    /// Did process `tgid` write an upstream request for `req` between the request and
    /// `now`?
    pub(super) fn seen(&self, tgid: u32, req: &ClientRequest, now: u64) -> bool {
        let Some(log) = self.logs.get(&tgid) else {
            return false;
        };
        let host = host_hash(&req.host);
        log.iter()
            .rev()
            .take_while(|e| e.ts_ns >= req.ts_ns)
            .any(|e| {
                e.ts_ns <= now
                    && e.target == req.target
                    && (e.host == host || e.forwarded_host == host)
            })
    }

    /// Drops entries older than `horizon` (and the logs they empty).
    pub(super) fn expire(&mut self, horizon: u64) {
        self.logs.retain(|_, log| {
            while log.front().is_some_and(|e| e.ts_ns < horizon) {
                log.pop_front();
            }
            !log.is_empty()
        });
    }

    /// Entries logged for `tgid` (tests).
    #[cfg(test)]
    pub(super) fn len_of(&self, tgid: u32) -> Option<usize> {
        self.logs.get(&tgid).map(VecDeque::len)
    }
}
