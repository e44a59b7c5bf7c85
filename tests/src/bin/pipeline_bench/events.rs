//! The benchmark's event stream: golden Traefik 3.7.15 captures turned into the events the
//! sensor would report for keep-alive client connections, pooled upstream connections,
//! router misses, backend 404s, unknown hosts and WebSocket upgrades (see the binary's doc
//! comment), from a deterministic generator so that every run sees the same stream.

use bytes::Bytes;
use routeskew::discovery::{Attribution, Replica, Target, TargetSet};
use routeskew::event::{ConnId, Direction, Event, EventKind, Origin};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../userspace/tests/fixtures/",
            $name
        ))
    };
}

const CLIENT_REQUEST: &[u8] = fixture!("traefik_relayed_200.req.bin");
const RELAYED_200: &[u8] = fixture!("traefik_relayed_200.bin");
const RELAYED_CHUNKED_200: &[u8] = fixture!("traefik_relayed_chunked_200.bin");
const BACKEND_CHUNKED_200: &[u8] = fixture!("go_backend_direct_chunked_200.bin");
const RELAYED_BACKEND_404: &[u8] = fixture!("traefik_relayed_backend_404.bin");
const UPSTREAM_REQUEST: &[u8] = fixture!("traefik_upstream_request.bin");
const ROUTER_MISS: &[u8] = fixture!("traefik_router_miss_404_keepalive.bin");
const WS_REQUEST: &[u8] = fixture!("traefik_ws_upgrade_101.req.bin");
const WS_UPSTREAM_REQUEST: &[u8] = fixture!("traefik_upstream_ws_request.bin");
const WS_101: &[u8] = fixture!("traefik_ws_upgrade_101.bin");
const WS_101_UPSTREAM: &[u8] = fixture!("traefik_rec_ws_101.bin");

const APP: &str = "app.example.test";
const TERM: &str = "terminal.example.test";
const API: &str = "api.example.test";
/// Configured hosts; requests also go to one that is not (label `other`).
pub(crate) const KNOWN_HOSTS: [&str; 3] = [APP, TERM, API];
const REPLICAS: u32 = 3;
/// wrk -c32 over three replicas.
const CLIENT_CONNS_PER_REPLICA: usize = 11;
/// Traefik's idle pool towards the backend.
const UPSTREAM_CONNS_PER_REPLICA: usize = 4;
/// The agent's batch size (`agent::BATCH`).
pub(crate) const BATCH: usize = 1024;
const MS: u64 = 1_000_000;
pub(crate) const S: u64 = 1_000 * MS;

/// One message as Traefik's peers would send it: the fixture with `Connection: close`
/// removed (the captures were made with one-shot clients; the benchmark is keep-alive) and
/// host and path substituted.
fn message(fixture: &[u8], from: &[(&str, &str)]) -> Vec<u8> {
    let mut text = String::from_utf8_lossy(fixture).replace("Connection: close\r\n", "");
    for (a, b) in from {
        text = text.replace(a, b);
    }
    text.into_bytes()
}

/// Precomputed message bytes; the generator copies them into each event as the sensor
/// copies them out of the ring buffer.
struct Messages {
    /// Per (host, path) variant: client request and the upstream request Traefik writes.
    requests: Vec<(Vec<u8>, Vec<u8>)>,
    /// The same hosts/paths, requests for a host without a router on replica 2.
    term_request: (Vec<u8>, Vec<u8>),
    ws_request: Vec<u8>,
    ws_upstream_request: Vec<u8>,
    ok: Vec<u8>,
    ok_upstream: Vec<u8>,
    chunked: Vec<u8>,
    chunked_upstream: Vec<u8>,
    backend_404: Vec<u8>,
}

impl Messages {
    fn new() -> Self {
        let pair = |host: &str, path: &str| {
            (
                message(
                    CLIENT_REQUEST,
                    &[
                        ("GET /ok ", &format!("GET {path} ")),
                        ("Host: app.example.test", &format!("Host: {host}")),
                    ],
                ),
                message(
                    UPSTREAM_REQUEST,
                    &[
                        ("GET /api/items?id=7 ", &format!("GET {path} ")),
                        ("rec.example.test", host),
                        ("User-Agent: routeskew-probe/0.1", "User-Agent: capture/1"),
                    ],
                ),
            )
        };
        let mut requests = Vec::new();
        for (host, path) in [
            (APP, "/"),
            (APP, "/static/app.js"),
            (API, "/api/items?id=7"),
            (API, "/api/items?id=8"),
            ("unknown.example.test", "/"),
        ] {
            requests.push(pair(host, path));
        }
        Messages {
            requests,
            term_request: pair(TERM, "/token"),
            ws_request: message(WS_REQUEST, &[]),
            ws_upstream_request: message(WS_UPSTREAM_REQUEST, &[("rec.example.test", APP)]),
            ok: message(RELAYED_200, &[]),
            ok_upstream: message(RELAYED_200, &[]),
            chunked: message(RELAYED_CHUNKED_200, &[]),
            chunked_upstream: message(BACKEND_CHUNKED_200, &[]),
            backend_404: message(RELAYED_BACKEND_404, &[]),
        }
    }
}

/// xorshift64*: deterministic, so every run and every build sees the same stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct ClientConn {
    fd: u32,
    /// Requests left before the client closes the connection.
    left: u32,
}

struct OpenWs {
    origin: Origin,
    client_fd: u32,
    upstream_fd: u32,
    close_at: u64,
}

pub(crate) struct Gen {
    rng: Rng,
    msgs: Messages,
    upstream_responses: bool,
    ts: u64,
    next_fd: u32,
    clients: Vec<Vec<ClientConn>>,
    upstreams: Vec<Vec<u32>>,
    ws: Vec<OpenWs>,
    pub(crate) requests: u64,
}

fn origin(replica: usize) -> Origin {
    Origin {
        tgid: 1000 + replica as u32,
        cgroup_id: 50 + replica as u64,
    }
}

pub(crate) fn targets() -> TargetSet {
    TargetSet::new(
        (0..REPLICAS as usize)
            .map(|i| Target {
                replica: Replica {
                    name: format!("traefik-{}", i + 1),
                    namespace: "traefik".into(),
                },
                cgroup_id: origin(i).cgroup_id,
                pids: vec![origin(i).tgid],
                attribution: Attribution::Cgroup,
                group: "traefik".into(),
                ready_since: None,
                endpoints: Vec::new(),
            })
            .collect(),
    )
}

impl Gen {
    pub(crate) fn new(upstream_responses: bool) -> Self {
        let mut g = Gen {
            rng: Rng(0x9e37_79b9_7f4a_7c15),
            msgs: Messages::new(),
            upstream_responses,
            ts: 1_000 * S,
            next_fd: 10,
            clients: Vec::new(),
            upstreams: Vec::new(),
            ws: Vec::new(),
            requests: 0,
        };
        for _ in 0..REPLICAS {
            let clients = (0..CLIENT_CONNS_PER_REPLICA)
                .map(|_| g.new_client())
                .collect();
            g.clients.push(clients);
            let ups = (0..UPSTREAM_CONNS_PER_REPLICA)
                .map(|_| g.fd())
                .collect::<Vec<_>>();
            g.upstreams.push(ups);
        }
        g
    }

    fn fd(&mut self) -> u32 {
        self.next_fd += 1;
        self.next_fd
    }

    fn new_client(&mut self) -> ClientConn {
        ClientConn {
            fd: self.fd(),
            left: 20 + (self.rng.next() % 200) as u32,
        }
    }

    fn data(&mut self, out: &mut Vec<Event>, o: Origin, fd: u32, dir: Direction, b: &[u8]) {
        // A few tens of microseconds between the syscalls of one request.
        self.ts += 5_000 + self.rng.next() % 30_000;
        out.push(Event {
            ts_ns: self.ts,
            origin: o,
            kind: EventKind::Data {
                conn: ConnId::Fd(fd),
                direction: dir,
                total_len: b.len() as u64,
                bytes: Bytes::copy_from_slice(b),
            },
        });
    }

    fn close(&mut self, out: &mut Vec<Event>, o: Origin, fd: u32, upgraded: bool) {
        self.ts += 1_000;
        out.push(Event {
            ts_ns: self.ts,
            origin: o,
            kind: EventKind::Closed {
                conn: ConnId::Fd(fd),
                upgraded,
            },
        });
    }

    /// The events of one client request (and whatever closes are due), appended to `out`.
    fn request(&mut self, out: &mut Vec<Event>) {
        self.requests += 1;
        let r = self.rng.below(REPLICAS as usize);
        let o = origin(r);
        let c = self.rng.below(CLIENT_CONNS_PER_REPLICA);
        let client_fd = self.clients[r][c].fd;
        let up_fd = self.upstreams[r][self.rng.below(UPSTREAM_CONNS_PER_REPLICA)];
        let dice = self.rng.next() % 1000;
        // Take the message bytes out of `self` for the duration of the request so that
        // `self.data` can borrow `self` mutably.
        let msgs = std::mem::replace(&mut self.msgs, Messages::empty());
        if dice < 10 {
            // WebSocket upgrade on a fresh client connection and a fresh backend
            // connection; closed later, a third of them within the early-close window.
            let ws_fd = self.fd();
            let ws_up = self.fd();
            self.data(out, o, ws_fd, Direction::Read, &msgs.ws_request);
            self.data(out, o, ws_up, Direction::Write, &msgs.ws_upstream_request);
            if self.upstream_responses {
                self.data(out, o, ws_up, Direction::Read, WS_101_UPSTREAM);
            }
            self.data(out, o, ws_fd, Direction::Write, WS_101);
            let life = if self.rng.chance(333) { 2 * S } else { 30 * S };
            self.ws.push(OpenWs {
                origin: o,
                client_fd: ws_fd,
                upstream_fd: ws_up,
                close_at: self.ts + life,
            });
        } else if dice < 40 && r == 1 {
            // Replica 2 lacks the router of TERM: Traefik answers itself.
            self.data(out, o, client_fd, Direction::Read, &msgs.term_request.0);
            self.data(out, o, client_fd, Direction::Write, ROUTER_MISS);
        } else {
            let (req, upreq) = if dice < 40 {
                &msgs.term_request
            } else {
                &msgs.requests[self.rng.below(msgs.requests.len())]
            };
            let (resp, upresp) = if dice < 55 {
                (&msgs.backend_404, &msgs.backend_404)
            } else if dice < 80 {
                (&msgs.chunked, &msgs.chunked_upstream)
            } else {
                (&msgs.ok, &msgs.ok_upstream)
            };
            self.data(out, o, client_fd, Direction::Read, req);
            self.data(out, o, up_fd, Direction::Write, upreq);
            if self.upstream_responses {
                self.data(out, o, up_fd, Direction::Read, upresp);
            }
            self.data(out, o, client_fd, Direction::Write, resp);
        }
        self.msgs = msgs;
        let conn = &mut self.clients[r][c];
        conn.left = conn.left.saturating_sub(1);
        if conn.left == 0 {
            self.close(out, o, client_fd, false);
            self.clients[r][c] = self.new_client();
        }
        // ~10k requests/s across the replicas.
        self.ts += 20_000;
        let now = self.ts;
        let mut i = 0;
        while i < self.ws.len() {
            if self.ws[i].close_at <= now {
                let w = self.ws.swap_remove(i);
                self.close(out, w.origin, w.client_fd, true);
                self.close(out, w.origin, w.upstream_fd, true);
            } else {
                i += 1;
            }
        }
    }

    /// At least `n` events (whole requests), replacing the contents of `out`.
    pub(crate) fn batch(&mut self, out: &mut Vec<Event>, n: usize) {
        out.clear();
        while out.len() < n {
            self.request(out);
        }
    }
}

impl Messages {
    fn empty() -> Self {
        Messages {
            requests: Vec::new(),
            term_request: (Vec::new(), Vec::new()),
            ws_request: Vec::new(),
            ws_upstream_request: Vec::new(),
            ok: Vec::new(),
            ok_upstream: Vec::new(),
            chunked: Vec::new(),
            chunked_upstream: Vec::new(),
            backend_404: Vec::new(),
        }
    }
}
