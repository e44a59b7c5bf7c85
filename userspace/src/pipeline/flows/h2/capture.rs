//! The records the sensor reported for one connection, stored as golden fixtures, and
//! their replay through the h2 tracker.
//!
//! File format, one record after another: a tag byte (`R` read, `W` write, `C` close);
//! after `R`/`W` the transfer's total length (u64 LE), the captured length (u32 LE) and
//! the captured bytes.

use crate::event::Direction;
use crate::hosts::{normalize_host, Host};
use crate::pipeline::budget::Budget;
use crate::pipeline::flows::exchange::ClientRequest;
use crate::pipeline::http::{self, ResponseHead};

use super::{H2Conns, H2Event, H2Traffic, READ, WRITE};
use crate::pipeline::metrics::{PipelineMetrics, Unclassified};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Data {
        direction: Direction,
        total_len: u64,
        bytes: Vec<u8>,
    },
    Closed,
}

pub fn encode(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        match r {
            Record::Data {
                direction,
                total_len,
                bytes,
            } => {
                out.push(match direction {
                    Direction::Read => b'R',
                    Direction::Write => b'W',
                });
                out.extend_from_slice(&total_len.to_le_bytes());
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Record::Closed => out.push(b'C'),
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("capture file corrupt at byte {0}")]
pub struct CorruptCapture(pub usize);

pub fn decode(mut b: &[u8]) -> Result<Vec<Record>, CorruptCapture> {
    let len = b.len();
    let mut out = Vec::new();
    while let Some((&tag, rest)) = b.split_first() {
        let at = len - b.len();
        b = rest;
        let direction = match tag {
            b'R' => Direction::Read,
            b'W' => Direction::Write,
            b'C' => {
                out.push(Record::Closed);
                continue;
            }
            _ => return Err(CorruptCapture(at)),
        };
        let (total, rest) = b.split_at_checked(8).ok_or(CorruptCapture(at))?;
        let (captured, rest) = rest.split_at_checked(4).ok_or(CorruptCapture(at))?;
        let total_len = u64::from_le_bytes(total.try_into().map_err(|_| CorruptCapture(at))?);
        let n = u32::from_le_bytes(captured.try_into().map_err(|_| CorruptCapture(at))?);
        let (bytes, rest) = rest
            .split_at_checked(n as usize)
            .ok_or(CorruptCapture(at))?;
        out.push(Record::Data {
            direction,
            total_len,
            bytes: bytes.to_vec(),
        });
        b = rest;
    }
    Ok(out)
}

/// One stream as the tracker ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub request: ClientRequest,
    /// `None`: the request was unanswered.
    pub response: Option<ResponseHead>,
}

impl Pair {
    pub fn status(&self) -> Option<u16> {
        self.response.as_ref().map(|r| r.status)
    }

    /// A GET of `path` for `host`.
    pub fn is_get(&self, host: &str, path: &str) -> bool {
        self.request.host == normalize_host(host.as_bytes())
            && self.request.host != Host::Invalid
            && self.request.target == http::target_hash(b"GET", path.as_bytes())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub pairs: Vec<Pair>,
    /// The first direction's loss of sync, if any.
    pub desync: Option<Unclassified>,
    pub traffic: H2Traffic,
    /// The health counters the tracker incremented.
    pub metrics: PipelineMetrics,
}

/// Feeds the records of one connection (starting with the preface read) to a fresh
/// tracker, as the flow tracker would.
pub fn replay(records: &[Record]) -> Replay {
    let metrics = PipelineMetrics::default();
    let mut conns = H2Conns::new(1, metrics.clone(), Budget::unlimited());
    let mut events = Vec::new();
    let mut replay = Replay::default();
    let mut opened = false;
    for (i, r) in records.iter().enumerate() {
        let ts = i as u64 + 1;
        match r {
            Record::Data {
                direction,
                total_len,
                bytes,
            } => {
                if !opened {
                    conns.open((), ts, &mut events);
                    opened = true;
                }
                let dir = match direction {
                    Direction::Read => READ,
                    Direction::Write => WRITE,
                };
                conns.feed((), dir, ts, bytes, *total_len, &mut events);
                if replay.desync.is_none() {
                    replay.desync = conns
                        .conns
                        .get(&())
                        .and_then(|c| c.desync(READ).or(c.desync(WRITE)));
                }
            }
            Record::Closed => {
                conns.close((), ts, &mut events);
            }
        }
    }
    conns.close((), records.len() as u64 + 1, &mut events);
    replay.pairs = events
        .into_iter()
        .map(|e| match e {
            H2Event::Exchange {
                request, response, ..
            } => Pair {
                request,
                response: Some(response),
            },
            H2Event::Unanswered { request, .. } => Pair {
                request,
                response: None,
            },
        })
        .collect();
    replay.traffic = *conns.traffic();
    replay.metrics = metrics;
    replay
}
