//! The end-to-end traffic plans, in one place: which requests go to which replica and
//! host, and what each must produce. The plaintext and TLS tests send per-replica plans
//! (exact counts that differ per replica, so traffic credited to the wrong replica
//! shows); the Prometheus test and the demo send mixes through one round-robin cursor, the
//! way a Service spreads connections.

mod mix;
mod per_replica;

use crate::scenario::Scenario;
use crate::tally::{add, host_label, Table};
use crate::Replica;

pub use mix::{demo_round, demo_tls_round, prometheus_mix, Mix, Visit};
pub use per_replica::{plaintext, tls, Plain, Tls, UNROUTED_HOST};

/// `n` requests of one kind (the test's own) to one replica, and what each must produce.
#[derive(Debug, Clone)]
pub struct Step<K> {
    pub replica: usize,
    pub host: String,
    pub path: &'static str,
    pub kind: K,
    pub n: usize,
    pub status: u16,
    pub class: &'static str,
}

/// Steps in the order they are sent.
#[derive(Debug, Clone)]
pub struct Plan<K>(Vec<Step<K>>);

impl<K> Default for Plan<K> {
    fn default() -> Self {
        Plan(Vec::new())
    }
}

impl<K> Plan<K> {
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per column of the plan's table"
    )]
    pub fn step(
        &mut self,
        replica: usize,
        host: &str,
        path: &'static str,
        kind: K,
        n: usize,
        status: u16,
        class: &'static str,
    ) {
        self.0.push(Step {
            replica,
            host: host.to_string(),
            path,
            kind,
            n,
            status,
            class,
        });
    }

    pub fn into_steps(self) -> Vec<Step<K>> {
        self.0
    }
}

/// What a request for a host gets from a replica: 200 `ok` where the replica routes the
/// host, Traefik's own 404 (`router_miss`) where it does not.
pub fn routed_or_miss(routes: bool) -> (u16, &'static str) {
    if routes {
        (200, "ok")
    } else {
        (404, "router_miss")
    }
}

/// What a WebSocket upgrade for a host gets from a replica: 101 (`ok`) where the replica
/// routes the host, Traefik's own 404 (`router_miss`) where it does not.
pub fn upgraded_or_miss(routes: bool) -> (u16, &'static str) {
    if routes {
        (101, "ok")
    } else {
        (404, "router_miss")
    }
}

/// The agent's `outcome` label for an upgrade answered with `status` of `class`.
pub fn ws_outcome(status: u16, class: &str) -> &'static str {
    match status {
        101 => "upgraded",
        _ if class == "router_miss" => "router_miss",
        500..=599 => "failed",
        _ => "rejected",
    }
}

/// Whether a plan's step is a WebSocket upgrade (else plain requests).
pub trait StepKind {
    fn is_upgrade(&self) -> bool;
}

/// What the agent must count for a plan, keyed (replica, second label, third label) like
/// [`crate::tally::table`].
#[derive(Debug, Clone, Default)]
pub struct Expected {
    /// `routeskew_http_responses_total` by (replica, host label, class); upgrade requests
    /// are HTTP exchanges too (a 101 counts as `ok`).
    pub http: Table,
    /// `routeskew_ws_upgrades_total` by (replica, host, outcome).
    pub ws: Table,
    /// `routeskew_ws_early_closes_total` by (replica, host, `-`): the test clients close
    /// an upgraded connection well inside the early-close window.
    pub early_closes: Table,
    /// `routeskew_upstream_connect_failures_total` by (replica, reason, `-`).
    pub upstream: Table,
}

/// The counts `steps` must produce on `replicas`, for an agent labelling `hosts`.
pub fn expected<K: StepKind>(
    steps: &[Step<K>],
    replicas: &[Replica],
    scenario: &Scenario,
) -> Expected {
    let hosts = scenario.hosts();
    let mut want = Expected::default();
    for s in steps {
        let name = &replicas[s.replica].name;
        let n = s.n as u64;
        if s.kind.is_upgrade() {
            add(
                &mut want.ws,
                name,
                &s.host,
                ws_outcome(s.status, s.class),
                n,
            );
            if s.status == 101 {
                add(&mut want.early_closes, name, &s.host, "-", n);
            }
        }
        add(
            &mut want.http,
            name,
            &host_label(&hosts, &s.host),
            s.class,
            n,
        );
        if s.host == scenario.refused_host {
            add(&mut want.upstream, name, "refused", "-", n);
        }
    }
    want
}
