//! Golden captures of real Traefik 3.7.15 h2 connections (curl over `websecure`, written
//! by the kernel test `traefik_websecure_h2_frames_are_captured`), and synthetic frame
//! streams built with an HPACK encoder for the shapes curl does not produce.

use loona_hpack::Encoder;

use super::capture::{self, Record};
use super::frames::{flag, kind};
use super::*;
use crate::event::{ConnId, Direction, Event, EventKind, Origin};
use crate::pipeline::classify::{
    router_miss_signature, Classifier, HttpClass, Observation, Signature,
};
use crate::pipeline::flows::{FlowConfig, FlowEvent, Flows};
use crate::pipeline::metrics::{Leg, PipelineMetrics, Skip, Unclassified};

const ROUTER_MISS: &[u8] = include_bytes!("../fixtures/traefik_h2_router_miss.bin");
const ROUTED: &[u8] = include_bytes!("../fixtures/traefik_h2_routed.bin");

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.push(kind);
    v.push(flags);
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn read(bytes: &[u8]) -> Record {
    Record::Data {
        direction: Direction::Read,
        total_len: bytes.len() as u64,
        bytes: bytes.to_vec(),
    }
}

fn write(bytes: &[u8]) -> Record {
    Record::Data {
        direction: Direction::Write,
        total_len: bytes.len() as u64,
        bytes: bytes.to_vec(),
    }
}

/// A record of which only the first `captured` bytes were copied.
fn write_cut(bytes: &[u8], captured: usize) -> Record {
    Record::Data {
        direction: Direction::Write,
        total_len: bytes.len() as u64,
        bytes: bytes[..captured].to_vec(),
    }
}

/// Both sides' encoders, which keep dynamic tables like Go's and curl's do.
struct Peer {
    client: Encoder<'static>,
    server: Encoder<'static>,
}

impl Peer {
    fn new() -> Self {
        Peer {
            client: Encoder::new(),
            server: Encoder::new(),
        }
    }

    fn request(&mut self, host: &str, path: &str) -> Vec<u8> {
        self.client.encode([
            (b":method".as_slice(), b"GET".as_slice()),
            (b":scheme", b"https"),
            (b":authority", host.as_bytes()),
            (b":path", path.as_bytes()),
            (b"user-agent", b"curl/7.88.1"),
        ])
    }

    fn router_miss(&mut self) -> Vec<u8> {
        self.server.encode([
            (b":status".as_slice(), b"404".as_slice()),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"x-content-type-options", b"nosniff"),
            (b"content-length", b"19"),
            (b"date", b"Sun, 22 Nov 2026 18:16:00 GMT"),
        ])
    }

    fn ok(&mut self) -> Vec<u8> {
        self.server.encode([
            (b":status".as_slice(), b"200".as_slice()),
            (b"content-type", b"text/plain"),
        ])
    }
}

fn preface() -> Record {
    read(PREFACE)
}

fn statuses(r: &capture::Replay) -> Vec<Option<u16>> {
    r.pairs.iter().map(|p| p.status()).collect()
}

#[test]
fn real_router_miss_over_h2_matches_the_signature() {
    let records = capture::decode(ROUTER_MISS).unwrap();
    let r = capture::replay(&records);
    assert_eq!(r.desync, None);
    assert_eq!(statuses(&r), [Some(404), Some(404)]);
    for (p, path) in r.pairs.iter().zip(["/nothing-here", "/still-nothing"]) {
        assert!(p.is_get("missing.test", path), "{p:?}");
        let resp = p.response.as_ref().unwrap();
        assert_eq!(router_miss_signature(resp), Signature::Full, "{resp:?}");
    }
    // The second response's header block is five fields in five bytes: all but `:status`
    // come from the dynamic table the first response filled, so decoding it proves the
    // table is carried across streams.
    let second_block = records
        .iter()
        .filter_map(|r| match r {
            Record::Data {
                direction: Direction::Write,
                bytes,
                ..
            } if bytes.get(3) == Some(&kind::HEADERS) => Some(bytes.clone()),
            _ => None,
        })
        .nth(1)
        .unwrap();
    let block = &second_block[9..];
    assert_eq!(block.len(), 5);
    assert!(
        block.iter().filter(|&&b| b >= 0x80 | 62).count() >= 4,
        "{block:x?}"
    );
}

#[test]
fn relayed_backend_404s_over_h2_do_not_match() {
    let r = capture::replay(&capture::decode(ROUTED).unwrap());
    assert_eq!(r.desync, None);
    assert_eq!(statuses(&r), [Some(404), Some(404), Some(200)]);
    let sig = |i: usize| router_miss_signature(r.pairs[i].response.as_ref().unwrap());
    // The backend's JSON 404, and a Go backend's own http.NotFound: same body as Traefik's,
    // other header order.
    assert!(r.pairs[0].is_get("routed.test", "/missing"));
    assert_eq!(sig(0), Signature::NoMatch);
    assert!(r.pairs[1].is_get("routed.test", "/notfound"));
    assert_eq!(
        r.pairs[1].response.as_ref().unwrap().body_prefix.as_slice(),
        crate::pipeline::classify::ROUTER_MISS_BODY
    );
    assert_eq!(sig(1), Signature::NoMatch);
    assert_eq!(sig(2), Signature::NoMatch);
}

fn tls_events(records: &[Record], conn: u64, first_ts: u64) -> Vec<Event> {
    let origin = Origin {
        tgid: 7,
        cgroup_id: 9,
    };
    records
        .iter()
        .enumerate()
        .map(|(i, r)| Event {
            ts_ns: first_ts + i as u64,
            origin,
            kind: match r {
                Record::Data {
                    direction,
                    total_len,
                    bytes,
                } => EventKind::Data {
                    conn: ConnId::GoTls(conn),
                    direction: *direction,
                    total_len: *total_len,
                    bytes: bytes::Bytes::copy_from_slice(bytes),
                },
                Record::Closed => EventKind::Closed {
                    conn: ConnId::GoTls(conn),
                    upgraded: false,
                },
            },
        })
        .collect()
}

/// The captures through the flow tracker and classifier, interleaved as two concurrent
/// connections: router miss only for the host Traefik had no router for.
#[test]
fn captures_classify_through_the_pipeline() {
    let miss = tls_events(&capture::decode(ROUTER_MISS).unwrap(), 0xc000_1000, 100);
    let routed = tls_events(&capture::decode(ROUTED).unwrap(), 0xc000_2000, 100);
    let mut events: Vec<Event> = miss.into_iter().chain(routed).collect();
    events.sort_by_key(|e| e.ts_ns);
    let mut flows = Flows::new(
        FlowConfig::default(),
        PipelineMetrics::default(),
        crate::pipeline::budget::Budget::unlimited(),
    );
    let mut classifier = Classifier::new();
    let mut fe = Vec::new();
    for e in &events {
        flows.handle(e, &mut fe);
    }
    let mut obs = Vec::new();
    for e in fe {
        classifier.classify(e, &mut obs);
    }
    let mut got: Vec<(String, HttpClass)> = obs
        .iter()
        .filter_map(|o| match o {
            Observation::Http { host, class, .. } => {
                Some((host.name().unwrap_or("-").to_string(), *class))
            }
            _ => None,
        })
        .collect();
    got.sort_by_key(|(h, c)| (h.clone(), c.as_str()));
    assert_eq!(
        got,
        [
            ("missing.test".to_string(), HttpClass::RouterMiss),
            ("missing.test".to_string(), HttpClass::RouterMiss),
            ("routed.test".to_string(), HttpClass::ClientError),
            ("routed.test".to_string(), HttpClass::ClientError),
            ("routed.test".to_string(), HttpClass::Ok),
        ]
    );
    assert_eq!(flows.connections(), 0, "closes end the h2 state");
    assert_eq!(flows.h2_traffic().requests, 5);
    assert_eq!(flows.metrics.unanswered_requests.get(Leg::Client), 0);
}

mod fuzz;
mod synthetic;
