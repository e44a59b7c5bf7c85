//! Hostile requests at a modest rate: binary junk, malformed heads, an unsupported
//! version, a missing or malformed Host, huge and oddly spelled Hosts, requests cut in
//! the middle of their head, half-open connections, and plaintext sent to a TLS port.
//!
//! All use hosts no replica routes (labelled `other`), except the odd spellings of a
//! known host, which Traefik routes. An answer Traefik's handlers wrote (its router-miss
//! 404, or the routed host's 200) joins the ground truth like any other; an answer Go's
//! HTTP server wrote itself, before any handler (400, 505), is tolerated on
//! (replica, `other`, class): the agent may count it or not. Nothing else may move.

use std::sync::Arc;
use std::time::Duration;

use routeskew_testbed::expect;
use routeskew_testbed::http::HttpConn;
use routeskew_testbed::tally::class_of_status;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::shared::{Shared, Target};

/// How long a hostile request waits for an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a half-open connection stays open.
const HALF_OPEN_HOLD: Duration = Duration::from_millis(1500);

/// The kinds, in the order they take turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hostile {
    Junk,
    BadHeaderLine,
    BadVersion,
    NoHost,
    SpaceInHost,
    HugeHost,
    OddCase,
    TrailingDot,
    CutMidHead,
    HalfOpen,
    PlainToTls,
}

const ORDER: [Hostile; 11] = [
    Hostile::Junk,
    Hostile::BadHeaderLine,
    Hostile::BadVersion,
    Hostile::NoHost,
    Hostile::SpaceInHost,
    Hostile::HugeHost,
    Hostile::OddCase,
    Hostile::TrailingDot,
    Hostile::CutMidHead,
    Hostile::HalfOpen,
    Hostile::PlainToTls,
];

/// A small xorshift generator: junk bytes and Host lengths, reproducible per run.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The bytes sent for one hostile request, and whether an answer is awaited (`false`:
/// the client stops mid-head, there is nothing to answer).
pub(crate) fn request(kind: Hostile, seq: u64, rng: &mut Rng, app_host: &str) -> (Vec<u8>, bool) {
    let host = format!("x{seq}.hostile.invalid");
    let simple = |h: &str| format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n");
    match kind {
        Hostile::Junk => {
            let len = 16 + rng.below(500) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // A line end first, so Go reads a (junk) request line at once.
            b.extend_from_slice(b"\r\n\r\n");
            (b, true)
        }
        Hostile::BadHeaderLine => (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nthis is no header\r\n\r\n").into_bytes(),
            true,
        ),
        Hostile::BadVersion => (
            format!("GET / HTTP/7.3\r\nHost: {host}\r\n\r\n").into_bytes(),
            true,
        ),
        Hostile::NoHost => (
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            true,
        ),
        Hostile::SpaceInHost => (
            simple(&format!("x{seq} hostile.invalid")).into_bytes(),
            true,
        ),
        Hostile::HugeHost => {
            let sizes = [300usize, 6_000, 60_000];
            let n = sizes[rng.below(sizes.len() as u64) as usize];
            (
                simple(&format!("{}.{host}", "a".repeat(n))).into_bytes(),
                true,
            )
        }
        Hostile::OddCase => (
            simple(&format!("{}:80", app_host.to_ascii_uppercase())).into_bytes(),
            true,
        ),
        Hostile::TrailingDot => (simple(&format!("{app_host}.")).into_bytes(), true),
        Hostile::CutMidHead => {
            let full = simple(&host).into_bytes();
            let cut = 1 + rng.below(full.len() as u64 - 5) as usize;
            (full[..cut].to_vec(), false)
        }
        Hostile::HalfOpen => (b"GET / HTTP/1.1\r\n".to_vec(), false),
        Hostile::PlainToTls => (simple(&host).into_bytes(), true),
    }
}

/// The Host header a hostile request carries, when it has a well-formed one.
fn host_of(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.split("\r\n")
        .find_map(|l| l.strip_prefix("Host: "))
        .map(String::from)
}

async fn one(s: &Shared, t: &Target, kind: Hostile, seq: u64, rng: &mut Rng) {
    let (bytes, answered) = request(kind, seq, rng, &s.scenario.app_host);
    let addr = if kind == Hostile::PlainToTls {
        t.websecure
    } else {
        t.web
    };
    s.truth().counts.hostile += 1;
    if !answered {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            return;
        };
        let _ = stream.write_all(&bytes).await;
        if kind == Hostile::HalfOpen {
            tokio::time::sleep(HALF_OPEN_HOLD).await;
        }
        return;
    }
    let Ok(mut conn) = HttpConn::connect(addr).await else {
        return;
    };
    let Ok(Ok(r)) = tokio::time::timeout(ANSWER_TIMEOUT, conn.round_trip(&bytes)).await else {
        return;
    };
    let host = host_of(&bytes);
    let mut truth = s.truth();
    let router_miss = expect::is_traefik_router_miss(&r);
    // Plaintext on the TLS port reaches Traefik's HTTP handler too (its routers there
    // all require TLS): a router miss, like any unrouted request.
    if router_miss || r.status == 200 {
        // Traefik's handlers answered: the agent must count it like any answer.
        let label = s.label(host.as_deref().unwrap_or(""));
        truth.counts.hostile_routed += 1;
        truth.http(&t.name, &label, class_of_status(r.status, router_miss));
    } else {
        truth.counts.hostile_rejected += 1;
        truth.tolerate(&t.name, class_of_status(r.status, false));
    }
}

/// Sends one hostile request every `every` to the next replica that is up, until the
/// soak stops.
pub(crate) async fn run(s: Arc<Shared>, every: Duration, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut cursor = 0usize;
    let mut seq = 0u64;
    while !s.stopping() {
        {
            let _open = s.gate.read().await;
            if s.stopping() {
                return;
            }
            if let Some(t) = s.pick(&mut cursor) {
                let kind = ORDER[(seq % ORDER.len() as u64) as usize];
                one(&s, t, kind, seq, &mut rng).await;
                seq += 1;
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_intended_shape() {
        let mut rng = Rng::new(7);
        let (b, a) = request(Hostile::OddCase, 1, &mut rng, "app.test");
        assert!(a);
        assert_eq!(host_of(&b).as_deref(), Some("APP.TEST:80"));
        let (b, _) = request(Hostile::TrailingDot, 1, &mut rng, "app.test");
        assert_eq!(host_of(&b).as_deref(), Some("app.test."));
        let (b, _) = request(Hostile::NoHost, 1, &mut rng, "app.test");
        assert_eq!(host_of(&b), None);
        for _ in 0..50 {
            let (b, a) = request(Hostile::CutMidHead, 3, &mut rng, "app.test");
            assert!(!a);
            assert!(!b.is_empty() && !b.ends_with(b"\r\n\r\n"));
            let (b, _) = request(Hostile::Junk, 3, &mut rng, "app.test");
            assert!(b.len() >= 20 && b.ends_with(b"\r\n\r\n"));
            let (b, _) = request(Hostile::HugeHost, 3, &mut rng, "app.test");
            let h = host_of(&b).unwrap();
            assert!(h.len() > 300 && h.ends_with(".x3.hostile.invalid"));
        }
    }

    #[test]
    fn rng_is_reproducible_and_bounded() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        for _ in 0..100 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
        assert_eq!(Rng::new(0).below(1), 0);
    }
}
