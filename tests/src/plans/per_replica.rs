//! Per-replica plans: exact counts to each replica's entrypoint, different per replica so
//! traffic attributed to the wrong replica shows.

use super::{routed_or_miss, upgraded_or_miss, Plan, Step, StepKind};
use crate::scenario::path;
use crate::traffic::ConnMode;
use crate::Testbed;

/// A host no replica routes: Traefik's 404 everywhere, labelled `other` by the agent.
pub const UNROUTED_HOST: &str = "nobody.test";

/// How the plaintext test sends a step to a replica's `web` entrypoint.
#[derive(Debug, Clone, Copy)]
pub enum Plain {
    Http(ConnMode),
    /// `n` upgrades, each on its own connection.
    Ws,
}

impl StepKind for Plain {
    fn is_upgrade(&self) -> bool {
        matches!(self, Plain::Ws)
    }
}

/// Different counts per replica, so traffic attributed to the wrong replica shows.
const MISSING_HTTP: [usize; 3] = [2, 7, 3];
const MISSING_WS: [usize; 3] = [2, 3, 4];
const WS_OK: [usize; 3] = [1, 2, 1];

/// The plaintext end-to-end plan: every kind of answer the scenario has, per replica,
/// on fresh and kept-alive connections.
pub fn plaintext(bed: &Testbed) -> Vec<Step<Plain>> {
    use Plain::{Http, Ws};
    let (keep_alive, fresh) = (Http(ConnMode::KeepAlive), Http(ConnMode::NewConnection));
    let sc = bed.scenario();
    let mut steps = Plan::default();
    for r in bed.replicas() {
        let i = r.index;
        let routes_missing = r.routes(&sc.missing_host);
        steps.step(i, &sc.app_host, path::ROOT, keep_alive, 3 + i, 200, "ok");
        steps.step(i, &sc.app_host, path::ROOT, fresh, 2, 200, "ok");
        let (status, class) = routed_or_miss(routes_missing);
        let missing = &sc.missing_host;
        steps.step(
            i,
            missing,
            path::ROOT,
            keep_alive,
            MISSING_HTTP[i],
            status,
            class,
        );
        let (status, class) = upgraded_or_miss(routes_missing);
        steps.step(i, missing, path::WS, Ws, MISSING_WS[i], status, class);
        steps.step(i, &sc.ws_host, path::WS, Ws, WS_OK[i], 101, "ok");
        let notfound = &sc.notfound_host;
        steps.step(i, notfound, path::NOTFOUND, fresh, 2, 404, "client_error");
        steps.step(
            i,
            notfound,
            path::MISSING,
            keep_alive,
            2,
            404,
            "client_error",
        );
        steps.step(i, UNROUTED_HOST, path::ROOT, fresh, 1, 404, "router_miss");
    }
    steps.step(0, &sc.app_host, path::CHUNKED, keep_alive, 1, 200, "ok");
    let unavailable = &sc.unavailable_host;
    steps.step(
        0,
        unavailable,
        path::ROOT,
        keep_alive,
        2,
        503,
        "server_error",
    );
    steps.step(1, &sc.slow_host, path::SLOW, fresh, 1, 504, "server_error");
    steps.step(
        2,
        &sc.refused_host,
        path::ROOT,
        fresh,
        3,
        502,
        "server_error",
    );
    steps.into_steps()
}

/// How the TLS test sends a step to a replica's `websecure` entrypoint (curl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// `n` requests on one keep-alive connection.
    Http,
    /// `n` requests as streams of one HTTP/2 connection.
    Http2,
    /// `n` upgrades, each on its own connection.
    Ws,
}

impl StepKind for Tls {
    fn is_upgrade(&self) -> bool {
        *self == Tls::Ws
    }
}

/// The TLS end-to-end plan: the plaintext plan's shapes over HTTP/1.1, then again over
/// HTTP/2 with counts per replica that differ from each other and from the HTTP/1.1 ones.
pub fn tls(bed: &Testbed) -> Vec<Step<Tls>> {
    use Tls::{Http, Http2, Ws};
    let sc = bed.scenario();
    let (missing, notfound) = (&sc.missing_host, &sc.notfound_host);
    let mut steps = Plan::default();
    for r in bed.replicas() {
        let i = r.index;
        let routes_missing = r.routes(missing);
        steps.step(i, &sc.app_host, path::ROOT, Http, 3 + i, 200, "ok");
        let (status, class) = routed_or_miss(routes_missing);
        steps.step(i, missing, path::ROOT, Http, MISSING_HTTP[i], status, class);
        let (status, class) = upgraded_or_miss(routes_missing);
        steps.step(i, missing, path::WS, Ws, MISSING_WS[i], status, class);
        steps.step(i, &sc.ws_host, path::WS, Ws, WS_OK[i], 101, "ok");
        steps.step(i, notfound, path::NOTFOUND, Http, 2, 404, "client_error");
        steps.step(i, UNROUTED_HOST, path::ROOT, Http, 1, 404, "router_miss");
    }
    steps.step(
        0,
        &sc.unavailable_host,
        path::ROOT,
        Http,
        2,
        503,
        "server_error",
    );
    let missing_h2 = [4, 5, 1];
    for r in bed.replicas() {
        let i = r.index;
        steps.step(i, &sc.app_host, path::ROOT, Http2, 2 + 2 * i, 200, "ok");
        let (status, class) = routed_or_miss(r.routes(missing));
        steps.step(i, missing, path::ROOT, Http2, missing_h2[i], status, class);
        // A Go backend's own http.NotFound and a JSON 404, relayed over h2: never a miss.
        steps.step(
            i,
            notfound,
            path::NOTFOUND,
            Http2,
            1 + i,
            404,
            "client_error",
        );
        steps.step(i, notfound, path::MISSING, Http2, 1, 404, "client_error");
        steps.step(i, UNROUTED_HOST, path::ROOT, Http2, 2, 404, "router_miss");
    }
    steps.step(
        2,
        &sc.unavailable_host,
        path::ROOT,
        Http2,
        3,
        503,
        "server_error",
    );
    steps.into_steps()
}
