//! The probe checks of a round: built from the replicas' probe endpoints, the known hosts
//! and the configured checks; run concurrently; their verdicts and durations recorded and
//! every report handed to the pipeline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use super::check::{self, Answer};
use super::client::{self, Caller, ClientError, Request, Tls};
use super::{replica_origin, Prober};
use crate::discovery::{Replica, TargetSet};
use crate::event::{Event, EventKind, Origin, PeerRole, ProbeCheck, ProbeReport, ProbeVerdict};
use crate::pipeline::classify::HttpClass;
use crate::pipeline::http;

/// One probe check to run.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) replica: Replica,
    pub(super) origin: Origin,
    pub(super) addr: SocketAddr,
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) path: String,
    pub(super) check: ProbeCheck,
    pub(super) id: u64,
}

/// What the jobs of one (replica, host, check) that ended so far found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Outcome {
    /// Every one succeeded.
    pub(super) success: bool,
    /// At least one got an answer.
    pub(super) answered: bool,
    /// At least one was answered with Traefik's router-miss 404.
    pub(super) router_miss: bool,
}

/// Jobs still running per (replica, host, check), and what those that ended found.
#[derive(Debug, Default)]
pub(super) struct Groups(BTreeMap<(Replica, String, ProbeCheck), (usize, Outcome)>);

impl Groups {
    /// One more job of its group is running.
    pub(super) fn expect(&mut self, job: &Job) {
        self.0
            .entry((job.replica.clone(), job.host.clone(), job.check))
            .or_insert((
                0,
                Outcome {
                    success: true,
                    answered: false,
                    router_miss: false,
                },
            ))
            .0 += 1;
    }

    /// `job` ended with verdict `v` (`answered`: an answer came): the group's outcome
    /// when it was the last one.
    fn ended(&mut self, job: &Job, v: &check::Verdict, answered: bool) -> Option<Outcome> {
        let key = (job.replica.clone(), job.host.clone(), job.check);
        let (left, o) = self.0.get_mut(&key)?;
        *left = left.saturating_sub(1);
        o.success &= v.success;
        o.answered |= answered;
        o.router_miss |= v.class == Some(HttpClass::RouterMiss);
        if *left > 0 {
            return None;
        }
        self.0.remove(&key).map(|(_, o)| o)
    }
}

pub(super) struct JobResult {
    job: Job,
    answer: Result<Answer, ProbeFailure>,
    elapsed: Duration,
}

/// Why a probe got no answer.
#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error(transparent)]
    Client { source: ClientError },
    #[error("timeout")]
    Timeout,
}

impl ProbeFailure {
    fn kind(&self) -> &'static str {
        match self {
            Self::Client { source } => source.kind(),
            Self::Timeout => "timeout",
        }
    }
}

impl Prober {
    /// This round's hosts: all of them, or a window of [`ProbeConfig::hosts_per_round`]
    /// that moves on each round (wrapping), the same for every replica so that their
    /// answers compare.
    pub(super) fn round_hosts(&mut self) -> Vec<String> {
        let all = self.hosts.hosts();
        let per_round = self.cfg.hosts_per_round.max(1);
        if all.len() <= per_round {
            return all.to_vec();
        }
        let start = self.host_cursor % all.len();
        self.host_cursor = (start + per_round) % all.len();
        all.iter()
            .cycle()
            .skip(start)
            .take(per_round)
            .cloned()
            .collect()
    }

    pub(super) fn jobs(&mut self, targets: &TargetSet) -> Vec<Job> {
        let mut jobs = Vec::new();
        let hosts = self.round_hosts();
        for t in targets.targets() {
            let endpoints = self.probe_endpoints(t);
            if let Some(st) = self.replicas.get_mut(&t.replica) {
                if endpoints.is_empty() && !st.no_endpoint_logged {
                    st.no_endpoint_logged = true;
                    tracing::info!(replica = %t.replica.name, endpoints = t.endpoints.len(), "no endpoint of the replica takes probes yet");
                } else if !endpoints.is_empty() {
                    st.no_endpoint_logged = false;
                }
            }
            let origin = replica_origin(t);
            for (addr, tls) in endpoints {
                if tls && self.tls.is_none() {
                    continue;
                }
                for host in &hosts {
                    let mut checks = vec![(ProbeCheck::Http, self.cfg.http_path.clone())];
                    for w in &self.cfg.ws_paths {
                        if w.host.as_ref().is_none_or(|h| h == host) {
                            checks.push((ProbeCheck::WebSocket, w.path.clone()));
                        }
                    }
                    for (check, path) in checks {
                        self.next_id = self.next_id.wrapping_add(1);
                        jobs.push(Job {
                            replica: t.replica.clone(),
                            origin,
                            addr,
                            tls,
                            host: host.clone(),
                            path,
                            check,
                            id: self.next_id,
                        });
                    }
                }
            }
        }
        jobs
    }

    /// Runs `jobs`, at most the configured number at once.
    pub(super) async fn run_jobs(&self, jobs: Vec<Job>) -> Vec<JobResult> {
        self.job_runner()(jobs).collect().await
    }

    /// What runs a batch of jobs, owning all it needs, and yields each result as its job
    /// ends: batches of several replicas run side by side, so that a replica that answers
    /// slowly or not at all holds up only its own checks.
    pub(super) fn job_runner(
        &self,
    ) -> impl Fn(Vec<Job>) -> futures_util::stream::BoxStream<'static, JobResult> {
        let timeout = self.cfg.timeout;
        let tls = self.tls.clone();
        let version = self.cfg.version.clone();
        let tags = self.housekeeping.tags.clone();
        let concurrency = self.cfg.concurrency.max(1);
        move |jobs: Vec<Job>| {
            let (tls, version, tags) = (tls.clone(), version.clone(), tags.clone());
            stream::iter(jobs)
                .map(move |job| {
                    let tls = tls.clone();
                    let caller = Caller {
                        user_agent: http::probe_check_user_agent(&version, job.id),
                        role: PeerRole::Probe,
                        tags: tags.clone(),
                    };
                    async move { run_job(job, tls, caller, timeout).await }
                })
                .buffer_unordered(concurrency)
                .boxed()
        }
    }

    /// Hands every report to the pipeline (with its duration), then one verdict per
    /// (replica, host, check): success when every endpoint and path checked succeeded. The
    /// pipeline keeps the series.
    pub(super) async fn record(&mut self, results: Vec<JobResult>) {
        let mut groups = Groups::default();
        for r in &results {
            groups.expect(&r.job);
        }
        for r in results {
            if !self.record_one(r, &mut groups).await {
                return;
            }
        }
    }

    /// Hands one report to the pipeline, and the verdict of its (replica, host, check)
    /// once every job of that group in `groups` has ended. False once the pipeline is gone.
    pub(super) async fn record_one(&mut self, r: JobResult, groups: &mut Groups) -> bool {
        let job = &r.job;
        let report = ProbeReport {
            id: job.id,
            check: job.check,
            host: job.host.clone(),
            response: r.answer.as_ref().ok().map(|a| a.response.clone()),
            elapsed: r.elapsed,
        };
        let verdict = check::judge(&report, &self.cfg.ws_accept);
        if let Err(e) = &r.answer {
            tracing::debug!(replica = %job.replica.name, host = %job.host, addr = %job.addr, check = job.check.as_str(), reason = e.kind(), "probe got no answer");
        }
        let done = groups.ended(job, &verdict, report.response.is_some());
        if !self
            .send(job.origin, EventKind::Probe(Box::new(report)))
            .await
        {
            return false;
        }
        let Some(outcome) = done else {
            return true;
        };
        let verdict = ProbeVerdict {
            host: job.host.clone(),
            check: job.check,
            success: outcome.success,
            answered: outcome.answered,
            router_miss: outcome.router_miss,
        };
        self.send(job.origin, EventKind::ProbeVerdict(Box::new(verdict)))
            .await
    }

    /// False once the pipeline is gone (the agent stopped).
    async fn send(&self, origin: Origin, kind: EventKind) -> bool {
        let ev = Event {
            ts_ns: crate::event::monotonic_ns(),
            origin,
            kind,
        };
        self.events.send(ev).await.is_ok()
    }
}

async fn run_job(job: Job, tls: Option<Tls>, caller: Caller, timeout: Duration) -> JobResult {
    let started = Instant::now();
    let req = Request {
        addr: job.addr,
        tls: if job.tls { tls.as_ref() } else { None },
        host: &job.host,
        path: &job.path,
        caller: &caller,
    };
    let fut = async {
        match job.check {
            ProbeCheck::Http => client::get(&req, check::BODY_PREFIX).await,
            ProbeCheck::WebSocket => client::websocket(&req).await,
        }
    };
    let answer = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(source)) => Err(ProbeFailure::Client { source }),
        Err(_) => Err(ProbeFailure::Timeout),
    };
    let elapsed = started.elapsed();
    JobResult {
        job,
        answer,
        elapsed,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::probe::endpoints::{EndpointInfo, EndpointState};
    use crate::probe::test_support::{cfg, prober, target};

    #[test]
    fn jobs_cover_hosts_checks_and_probe_endpoints_only() {
        let mut p = prober(cfg(1000));
        assert_eq!(p.hosts.hosts(), ["a.test", "b.test"]);
        let t = target(
            "r1",
            &[
                ("127.0.0.1:8000", None),
                ("127.0.0.1:9000", None),
                ("127.0.0.1:7000", None),
            ],
        );
        let set = TargetSet::new(vec![t.clone()]);
        p.track_replicas(&set);
        let known = |tls, api| EndpointState::Known(EndpointInfo { tls, api });
        p.endpoints
            .insert("127.0.0.1:8000".parse().unwrap(), known(false, false));
        p.endpoints
            .insert("127.0.0.1:9000".parse().unwrap(), known(false, true));
        // 7000 never answered: not probed.
        let jobs = p.jobs(&set);
        // a.test: http + /ws; b.test: http + /ws + /chat; on the one non-API endpoint.
        assert_eq!(jobs.len(), 5, "{jobs:?}");
        assert!(jobs.iter().all(|j| j.addr.port() == 8000));
        let ids: HashSet<u64> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(ids.len(), jobs.len(), "probe ids are unique");
        assert_eq!(
            jobs[0].origin,
            Origin {
                tgid: 50,
                cgroup_id: 5
            }
        );

        // Once the API named the entrypoints that carry routers, only those are probed.
        let st = p.replicas.get_mut(&t.replica).unwrap();
        st.router_entry_points = ["websecure".to_string()].into();
        st.tls_entry_points = ["websecure".to_string()].into();
        st.port_names = [(8000, "web".to_string()), (8443, "websecure".to_string())].into();
        let t2 = target(
            "r1",
            &[
                ("127.0.0.1:8000", None),
                ("127.0.0.1:8443", None),
                ("127.0.0.1:9000", None),
            ],
        );
        p.endpoints
            .insert("127.0.0.1:8443".parse().unwrap(), known(false, false));
        let eps = p.probe_endpoints(&t2);
        assert_eq!(eps, vec![("127.0.0.1:8443".parse().unwrap(), true)]);
        // An entrypoint with plaintext and TLS routers is probed both ways.
        let st = p.replicas.get_mut(&t.replica).unwrap();
        st.router_entry_points = ["web".to_string(), "websecure".to_string()].into();
        st.plain_entry_points = ["web".to_string(), "websecure".to_string()].into();
        let eps = p.probe_endpoints(&t2);
        assert_eq!(
            eps,
            vec![
                ("127.0.0.1:8000".parse().unwrap(), false),
                ("127.0.0.1:8443".parse().unwrap(), false),
                ("127.0.0.1:8443".parse().unwrap(), true),
            ]
        );
        // Without the API, a port named like a TLS entrypoint is probed over TLS.
        p.replicas
            .get_mut(&t.replica)
            .unwrap()
            .router_entry_points
            .clear();
        let named = target("r1", &[("127.0.0.1:8443", Some("websecure"))]);
        assert_eq!(
            p.probe_endpoints(&named),
            vec![("127.0.0.1:8443".parse().unwrap(), true)]
        );

        // --probe-port overrides everything.
        p.cfg.ports = vec![9000];
        let eps = p.probe_endpoints(&t2);
        assert_eq!(eps, vec![("127.0.0.1:9000".parse().unwrap(), false)]);
        assert!(
            p.housekeeping
                .user_agent
                .starts_with("routeskew-probe/0.0.0 housekeeping/"),
            "{}",
            p.housekeeping.user_agent
        );
    }
}
