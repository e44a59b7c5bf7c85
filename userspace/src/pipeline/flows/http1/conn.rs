//! The HTTP/1 connections being followed: what each expects next in each direction, the
//! requests waiting for their responses, and the bounded table that holds them.
//!
//! The table evicts the least recently active connection at capacity. Recency is an
//! append-only queue compacted now and then instead of a sorted set updated on every
//! event.

use std::collections::VecDeque;

use crate::event::Origin;
use crate::pipeline::flows::exchange::{ClientRequest, ConnKey};
use crate::pipeline::http::Tail;

/// Largest head kept across syscalls (the sensor captures about 1 KiB per syscall).
pub(super) const MAX_STASH: usize = 4096;
/// All stashed heads together; slow clients on many connections must not grow memory.
const MAX_STASH_TOTAL: usize = 8 << 20;
/// Stale entries the recency queue may hold beyond one per connection before it is
/// compacted.
pub(in crate::pipeline::flows) const AGE_SLACK: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    /// The next data starts a message.
    Message,
    /// This many bytes of body first.
    Body(u64),
    /// Data that does not look like a message start continues the previous one.
    Continuation,
}

impl From<Tail> for Expect {
    fn from(t: Tail) -> Self {
        match t {
            Tail::Complete => Expect::Message,
            Tail::Body(n) => Expect::Body(n),
            Tail::Chunked | Tail::UntilClose | Tail::HeadIncomplete | Tail::Unknown => {
                Expect::Continuation
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct Upgraded {
    pub(super) at_ns: u64,
    /// The client request that was upgraded; `None` on an upstream connection.
    pub(super) request: Option<ClientRequest>,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) origin: Origin,
    last_seen: u64,
    /// Tag of this connection's live entry in [`ConnTable::age`].
    age_seq: u64,
    /// Client requests waiting for Traefik's response, oldest first.
    pub(super) pending: VecDeque<ClientRequest>,
    /// With `FlowConfig::upstream_responses`: upstream requests waiting for the
    /// upstream's response, whether each was a HEAD.
    pub(super) upstream_pending: VecDeque<bool>,
    /// The last upstream request written was a HEAD: how to frame a response that arrives
    /// when upstream requests are not tracked (Go's transport never pipelines, so the last
    /// request is the one being answered).
    pub(super) upstream_last_head: bool,
    /// The last upstream request written asked for a WebSocket upgrade, whose 101 is not
    /// reported when upstream responses are off.
    pub(super) upstream_last_ws: bool,
    /// Rare, and large next to the rest: boxed.
    pub(super) upgraded: Option<Box<Upgraded>>,
    /// Indexed by direction: 0 = Read, 1 = Write.
    pub(super) expect: [Expect; 2],
    /// A head the last syscall in that direction ended in the middle of.
    stash: [Option<Vec<u8>>; 2],
}

impl Conn {
    fn stash_len(&self) -> usize {
        self.stash.iter().flatten().map(Vec::len).sum()
    }

    fn new(origin: Origin, ts: u64, age_seq: u64) -> Self {
        Conn {
            origin,
            last_seen: ts,
            age_seq,
            pending: VecDeque::new(),
            upstream_pending: VecDeque::new(),
            upstream_last_head: false,
            upstream_last_ws: false,
            upgraded: None,
            expect: [Expect::Message; 2],
            stash: [None, None],
        }
    }
}

/// The connections, their recency and the bytes their stashed heads hold.
#[derive(Debug, Default)]
pub(super) struct ConnTable {
    conns: foldhash::HashMap<ConnKey, Conn>,
    /// Connections in order of their last activity, oldest first, as `(tag, key)`: every
    /// time a connection is active an entry is appended and the connection remembers its
    /// tag, so only the entry carrying the connection's current tag is live and the first
    /// live entry is the least recently active connection. Stale entries are skipped when
    /// met at the front and dropped in bulk when they outnumber the live ones. (Timestamps
    /// from different CPUs can be slightly out of order; the queue follows arrival order.)
    age: VecDeque<(u64, ConnKey)>,
    next_age_seq: u64,
    stash_bytes: usize,
}

impl ConnTable {
    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(super) fn get(&self, key: &ConnKey) -> Option<&Conn> {
        self.conns.get(key)
    }

    pub(super) fn get_mut(&mut self, key: &ConnKey) -> Option<&mut Conn> {
        self.conns.get_mut(key)
    }

    pub(super) fn contains(&self, key: &ConnKey) -> bool {
        self.conns.contains_key(key)
    }

    /// Append the recency entry tagged `next_age_seq` for `key`, whose connection already
    /// carries that tag, and compact the queue when stale entries dominate.
    fn push_age(&mut self, key: ConnKey) {
        self.age.push_back((self.next_age_seq, key));
        self.next_age_seq += 1;
        if self.age.len() > 2 * self.conns.len() + AGE_SLACK {
            let conns = &self.conns;
            self.age
                .retain(|(seq, key)| conns.get(key).is_some_and(|c| c.age_seq == *seq));
        }
    }

    pub(super) fn touch(&mut self, key: ConnKey, ts: u64) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if ts <= c.last_seen {
            return;
        }
        c.last_seen = ts;
        c.age_seq = self.next_age_seq;
        self.push_age(key);
    }

    /// Starts following `key`, evicting the least recently active connections while
    /// `max` are followed. Returns how many were evicted.
    pub(super) fn insert(&mut self, key: ConnKey, origin: Origin, ts: u64, max: usize) -> u64 {
        let mut evicted = 0;
        while self.conns.len() >= max.max(1) {
            let Some((seq, old)) = self.age.pop_front() else {
                break;
            };
            if self.conns.get(&old).is_none_or(|c| c.age_seq != seq) {
                continue;
            }
            if let Some(c) = self.conns.remove(&old) {
                self.stash_bytes = self.stash_bytes.saturating_sub(c.stash_len());
                evicted += 1;
                tracing::debug!(tgid = old.0, conn = %old.1, "connection evicted at capacity");
            }
        }
        // Tag first, then queue: compaction keeps only entries whose connection carries
        // their tag.
        self.conns
            .insert(key, Conn::new(origin, ts, self.next_age_seq));
        self.push_age(key);
        evicted
    }

    pub(super) fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        // Its recency entry turns stale and is dropped later.
        let c = self.conns.remove(&key)?;
        self.stash_bytes = self.stash_bytes.saturating_sub(c.stash_len());
        Some(c)
    }

    /// Forgets connections idle since before `horizon`. Returns how many.
    pub(super) fn expire(&mut self, horizon: u64) -> u64 {
        let mut expired = 0;
        while let Some(&(seq, key)) = self.age.front() {
            match self.conns.get(&key) {
                Some(c) if c.age_seq == seq => {
                    if c.last_seen >= horizon {
                        break;
                    }
                    self.age.pop_front();
                    if let Some(c) = self.conns.remove(&key) {
                        self.stash_bytes = self.stash_bytes.saturating_sub(c.stash_len());
                        expired += 1;
                        tracing::debug!(tgid = key.0, conn = %key.1, "idle connection expired");
                    }
                }
                _ => {
                    self.age.pop_front();
                }
            }
        }
        expired
    }

    /// The head stashed in direction `d` of `key`, taken out.
    pub(super) fn take_stash(&mut self, key: ConnKey, d: usize) -> Option<Vec<u8>> {
        let head = self.conns.get_mut(&key)?.stash[d].take()?;
        self.stash_bytes = self.stash_bytes.saturating_sub(head.len());
        Some(head)
    }

    /// Whether a head of `len` bytes may be stashed.
    pub(super) fn stash_fits(&self, len: usize) -> bool {
        len <= MAX_STASH / 2 && self.stash_bytes + len <= MAX_STASH_TOTAL
    }

    /// Keeps `head`, the start of a message direction `d` of `key` ended in, until the
    /// next syscall in that direction completes it.
    pub(super) fn stash(&mut self, key: ConnKey, d: usize, head: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&key) {
            self.stash_bytes += head.len();
            c.expect[d] = Expect::Message;
            c.stash[d] = Some(head);
        }
    }

    /// Bytes held by stashed heads (tests).
    #[cfg(test)]
    pub(super) fn stash_bytes(&self) -> usize {
        self.stash_bytes
    }

    /// Entries of the recency queue, live and stale (tests).
    #[cfg(test)]
    pub(super) fn queue_len(&self) -> usize {
        self.age.len()
    }
}
