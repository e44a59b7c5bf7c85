//! `pipeline_bench`: what routeskew's userspace pipeline costs per kernel event.
//!
//! Feeds a synthetic but realistic event stream through the real [`Pipeline::handle`]
//! (flows → classify → aggregate → prometheus-client counters), built from the golden
//! Traefik 3.7.15 captures in `userspace/tests/fixtures/`: three replicas, keep-alive client
//! connections that each carry a run of requests and then close, for each request the client
//! request read → the upstream request written on a pooled backend connection → (optionally)
//! the backend's response read → the client response written, with a few router misses on
//! one replica, backend 404s, unknown hosts and WebSocket upgrades that close later (some
//! within the early-close window).
//!
//! Events are generated in batches of the agent's size (1024) outside the timed region and
//! fed right after, so that, as in the agent, the bytes were just written (warm in cache) and
//! generation never counts. `Pipeline::tick` runs once per simulated second, as the agent's
//! housekeeping does, and is timed.
//!
//! Reports the best of several wall-clock runs in ns/event and, when `valgrind` is
//! installed, instructions/event under callgrind (counting only the feeding function and
//! what it calls), which is stable across runs and machines. Prints markdown lines for
//! BENCHMARKS.md on stdout; progress goes to stderr.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use routeskew::agent::AgentMetrics;
use routeskew::discovery::{Attribution, Replica, Target, TargetSet};
use routeskew::event::{ConnId, Direction, Event, EventKind, Origin};
use routeskew::metrics::BuildInfo;
use routeskew::pipeline::{Pipeline, PipelineConfig};

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
const KNOWN_HOSTS: [&str; 3] = [APP, TERM, API];
const REPLICAS: u32 = 3;
/// wrk -c32 over three replicas.
const CLIENT_CONNS_PER_REPLICA: usize = 11;
/// Traefik's idle pool towards the backend.
const UPSTREAM_CONNS_PER_REPLICA: usize = 4;
/// The agent's batch size (`agent::BATCH`).
const BATCH: usize = 1024;
const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

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

struct Gen {
    rng: Rng,
    msgs: Messages,
    upstream_responses: bool,
    ts: u64,
    next_fd: u32,
    clients: Vec<Vec<ClientConn>>,
    upstreams: Vec<Vec<u32>>,
    ws: Vec<OpenWs>,
    requests: u64,
}

fn origin(replica: usize) -> Origin {
    Origin {
        tgid: 1000 + replica as u32,
        cgroup_id: 50 + replica as u64,
    }
}

fn targets() -> TargetSet {
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
                endpoints: Vec::new(),
            })
            .collect(),
    )
}

impl Gen {
    fn new(upstream_responses: bool) -> Self {
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
    fn batch(&mut self, out: &mut Vec<Event>, n: usize) {
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

fn pipeline(upstream_responses: bool) -> (Pipeline, AgentMetrics) {
    let metrics = AgentMetrics::register(BuildInfo {
        version: "bench".into(),
        kernel: "bench".into(),
    });
    let mut p = Pipeline::new(
        PipelineConfig {
            known_hosts: KNOWN_HOSTS.iter().map(|h| h.to_string()).collect(),
            upstream_responses,
            ..PipelineConfig::default()
        },
        metrics.contract.clone(),
        metrics.pipeline.clone(),
    );
    p.set_targets(targets());
    (p, metrics)
}

/// The timed (and, under callgrind, the counted) work: one batch through the pipeline,
/// with the agent's once-a-second housekeeping.
#[inline(never)]
fn routeskew_bench_feed(p: &mut Pipeline, events: &[Event], next_tick: &mut u64) {
    // As the agent does: a batch at a time, housekeeping between batches when it is due.
    let mut start = 0;
    for (i, ev) in events.iter().enumerate() {
        if ev.ts_ns >= *next_tick {
            p.handle_batch(black_box(&events[start..=i]));
            start = i + 1;
            p.tick(ev.ts_ns);
            *next_tick = ev.ts_ns + S;
        }
    }
    p.handle_batch(black_box(&events[start..]));
}

/// The warm-up's feeding, under another name so that callgrind does not count it. Its body
/// must differ from [`routeskew_bench_feed`]'s (housekeeping once per batch here): the
/// compiler merges identical functions into one symbol.
#[inline(never)]
fn routeskew_bench_warmup(p: &mut Pipeline, events: &[Event], next_tick: &mut u64) {
    p.handle_batch(black_box(events));
    if let Some(last) = events.last() {
        if last.ts_ns >= *next_tick {
            p.tick(last.ts_ns);
            *next_tick = last.ts_ns + S;
        }
    }
}

struct RunResult {
    events: u64,
    requests: u64,
    elapsed: Duration,
}

/// One run: a fresh pipeline and generator; `warmup` events first (untimed), then `events`.
fn run(upstream_responses: bool, warmup: usize, events: usize) -> (RunResult, AgentMetrics) {
    let (mut p, metrics) = pipeline(upstream_responses);
    let mut gen = Gen::new(upstream_responses);
    let mut batch = Vec::with_capacity(BATCH + 16);
    let mut next_tick = 0;
    let mut done = 0;
    while done < warmup {
        gen.batch(&mut batch, BATCH);
        routeskew_bench_warmup(&mut p, &batch, &mut next_tick);
        done += batch.len();
    }
    let requests_before = gen.requests;
    let mut elapsed = Duration::ZERO;
    let mut fed = 0;
    while fed < events {
        gen.batch(&mut batch, BATCH.min(events - fed));
        let t = Instant::now();
        routeskew_bench_feed(&mut p, &batch, &mut next_tick);
        elapsed += t.elapsed();
        fed += batch.len();
    }
    (
        RunResult {
            events: fed as u64,
            requests: gen.requests - requests_before,
            elapsed,
        },
        metrics,
    )
}

struct Args {
    events: usize,
    runs: u32,
    callgrind_events: usize,
    callgrind: bool,
    modes: Vec<bool>,
    /// Internal: this process runs under callgrind.
    inner: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        events: 300_000,
        runs: 7,
        callgrind_events: 60_000,
        callgrind: true,
        modes: vec![false, true],
        inner: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => {
                println!(
                    "usage: pipeline_bench [--events N] [--runs R] [--callgrind-events N] [--no-callgrind] [--upstream-responses off|on|both]"
                );
                std::process::exit(0);
            }
            "--no-callgrind" => a.callgrind = false,
            "--inner-callgrind" => a.inner = true,
            "--upstream-responses" => {
                a.modes = match it.next().as_deref() {
                    Some("off") => vec![false],
                    Some("on") => vec![true],
                    Some("both") => vec![false, true],
                    other => bail!("--upstream-responses takes off, on or both, not {other:?}"),
                }
            }
            "--events" | "--runs" | "--callgrind-events" => {
                let v: usize = it
                    .next()
                    .with_context(|| format!("{flag} needs a value"))?
                    .parse()
                    .with_context(|| format!("{flag} takes a number"))?;
                match flag.as_str() {
                    "--events" => a.events = v,
                    "--runs" => a.runs = u32::try_from(v).context("--runs")?,
                    _ => a.callgrind_events = v,
                }
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.events == 0 || a.runs == 0 || a.callgrind_events == 0 {
        bail!("--events, --runs and --callgrind-events must be positive");
    }
    Ok(a)
}

fn mode_name(upstream_responses: bool) -> &'static str {
    // The sensor's default is not to report upstream responses.
    if upstream_responses {
        "with upstream responses"
    } else {
        "without upstream responses (default)"
    }
}

/// Instructions per event of the feeding function and its callees, under callgrind.
fn callgrind(upstream_responses: bool, events: usize) -> Result<Option<f64>> {
    if Command::new("valgrind")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = tempfile::tempdir().context("temporary directory")?;
    let out_file = dir.path().join("callgrind.out");
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg("--collect-atstart=no")
        .arg("--toggle-collect=*routeskew_bench_feed*")
        .arg(&exe)
        .arg("--inner-callgrind")
        .arg("--upstream-responses")
        .arg(if upstream_responses { "on" } else { "off" })
        .arg("--callgrind-events")
        .arg(events.to_string())
        .stderr(std::process::Stdio::null())
        .output()
        .context("running valgrind")?;
    if !output.status.success() {
        bail!("valgrind exited with {}", output.status);
    }
    // The inner run prints how many events it fed (whole batches, so a few more than asked).
    let fed: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("event count of the run under callgrind")?;
    let text = std::fs::read_to_string(&out_file)
        .with_context(|| format!("reading {}", out_file.display()))?;
    let total: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no instruction total in the callgrind output")?;
    if total == 0 || fed == 0 {
        bail!("callgrind counted nothing: was routeskew_bench_feed inlined or renamed?");
    }
    Ok(Some(total as f64 / fed as f64))
}

fn callgrind_warmup(events: usize) -> usize {
    events / 4
}

fn main() -> Result<()> {
    let a = parse_args()?;
    if a.inner {
        let mode = a.modes[0];
        let (r, _) = run(
            mode,
            callgrind_warmup(a.callgrind_events),
            a.callgrind_events,
        );
        println!("{}", r.events);
        return Ok(());
    }
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    println!("| benchmark | commit | stream | events/request | wall clock | callgrind |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &mode in &a.modes {
        let mut best: Option<RunResult> = None;
        let mut last_metrics = None;
        for i in 0..a.runs {
            let (r, m) = run(mode, a.events / 4, a.events);
            let ns = r.elapsed.as_nanos() as f64 / r.events as f64;
            eprintln!(
                "{}: run {}/{}: {} events ({:.2}/request) in {:?}: {:.0} ns/event",
                mode_name(mode),
                i + 1,
                a.runs,
                r.events,
                r.events as f64 / r.requests as f64,
                r.elapsed,
                ns
            );
            if best.as_ref().is_none_or(|b| {
                r.elapsed.as_nanos() * u128::from(b.events)
                    < b.elapsed.as_nanos() * u128::from(r.events)
            }) {
                best = Some(r);
            }
            last_metrics = Some(m);
        }
        let best = best.context("no run")?;
        if let Some(m) = last_metrics {
            // The counts must be real: a pipeline that dropped everything would be fast.
            let text = m.encode();
            let misses = text
                .lines()
                .filter(|l| l.starts_with("routeskew_http_responses_total{replica=\"traefik-2\",namespace=\"traefik\",host=\"terminal.example.test\",class=\"router_miss\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
            if misses == 0.0 {
                bail!("the pipeline counted no router miss on traefik-2: the benchmark is not measuring the real path");
            }
        }
        let ns = best.elapsed.as_nanos() as f64 / best.events as f64;
        let instr = if a.callgrind {
            eprintln!(
                "{}: callgrind over {} events ...",
                mode_name(mode),
                a.callgrind_events
            );
            match callgrind(mode, a.callgrind_events) {
                Ok(Some(i)) => format!("{i:.0}"),
                Ok(None) => "n/a (no valgrind)".into(),
                Err(e) => {
                    eprintln!("callgrind failed: {e:#}");
                    "n/a".into()
                }
            }
        } else {
            "-".into()
        };
        println!(
            "| pipeline_bench | {commit} | {} | {:.2} events/request | {:.0} ns/event (best of {}) | {} instructions/event |",
            mode_name(mode),
            best.events as f64 / best.requests as f64,
            ns,
            a.runs,
            instr
        );
    }
    Ok(())
}
