//! The HTTP/1 connections being followed: what each expects next in each direction, the
//! requests waiting for their responses, and the bounded table that holds them.
//!
//! The table evicts the least recently active connection at capacity or when the memory
//! budget has no room for another. Recency is an append-only queue compacted now and then
//! instead of a sorted set updated on every event. What each connection holds is charged
//! to the budget ([`crate::pipeline::budget`]).

use std::collections::VecDeque;
use std::mem::size_of;

use crate::event::Origin;
use crate::pipeline::budget::{growth_bytes, queue_bytes, Budget};
use crate::pipeline::flows::exchange::{ClientRequest, ConnKey};
use crate::pipeline::http::{RequestHead, Tail};
use crate::pipeline::metrics::MemoryPart;

/// Largest head kept across syscalls (the sensor captures about 1 KiB per syscall).
pub(super) const MAX_STASH: usize = 4096;
/// All stashed heads together; slow clients on many connections must not grow memory.
const MAX_STASH_TOTAL: usize = 8 << 20;
/// Stale entries the recency queue may hold beyond one per connection before it is
/// compacted.
pub(in crate::pipeline::flows) const AGE_SLACK: usize = 1024;
/// What a followed connection costs before its queues and heads: its hash table slot
/// (twice: tables double when they grow) and its recency entries (up to two each, in a
/// queue that doubles too).
pub(in crate::pipeline::flows) const CONN_COST: usize =
    2 * (size_of::<(ConnKey, Conn)>() + 1) + 4 * size_of::<(u64, ConnKey)>();

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
    /// Bytes of `pending` and `upstream_pending` charged to the budget.
    charged: usize,
    /// Requests shed while waiting (counted then): the next this many responses answer
    /// them and are passed over. Shed requests are always older than those still waiting.
    pub(super) shed_responses: u32,
}

impl Conn {
    fn stash_len(&self) -> usize {
        self.stash.iter().flatten().map(Vec::len).sum()
    }

    fn queue_bytes(&self) -> usize {
        queue_bytes::<ClientRequest>(self.pending.capacity())
            + queue_bytes::<bool>(self.upstream_pending.capacity())
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
            charged: 0,
            shed_responses: 0,
        }
    }
}

/// What became of a request offered to its connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Waiting,
    /// The connection is not followed.
    Untracked,
    /// The connection already has this many waiting (the newest is dropped).
    Overflow,
    /// The budget had no room: this many requests were shed (the new one and every one
    /// waiting before it).
    Refused(u64),
}

/// Connections dropped by [`ConnTable::insert`] to make room.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Evicted {
    pub(super) capacity: u64,
    pub(super) budget: u64,
    /// Requests that were waiting on them.
    pub(super) requests: u64,
    /// Nothing was left to evict and the budget still had no room: not followed.
    pub(super) refused: bool,
}

/// The connections, their recency and the bytes their stashed heads hold.
#[derive(Debug)]
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
    budget: Budget,
    /// No waiting request is older than this (`u64::MAX`: none waits), so that ticks
    /// look for aged requests only when some may be.
    oldest_waiting: u64,
}

impl ConnTable {
    pub(super) fn new(budget: Budget) -> Self {
        ConnTable {
            conns: foldhash::HashMap::default(),
            age: VecDeque::new(),
            next_age_seq: 0,
            stash_bytes: 0,
            budget,
            oldest_waiting: u64::MAX,
        }
    }

    /// Releases what a connection leaving the table held; returns its waiting requests.
    fn released(&mut self, c: &Conn) -> u64 {
        self.stash_bytes = self.stash_bytes.saturating_sub(c.stash_len());
        self.budget.release(MemoryPart::Buffers, c.stash_len());
        self.budget.release(MemoryPart::Requests, c.charged);
        self.budget.release(MemoryPart::Connections, CONN_COST);
        c.pending.len() as u64
    }

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
    /// `max` are followed or the budget has no room for one more. With no connection
    /// left to evict and still no room, `key` is not followed (`refused`).
    pub(super) fn insert(&mut self, key: ConnKey, origin: Origin, ts: u64, max: usize) -> Evicted {
        let mut evicted = Evicted::default();
        loop {
            let full = self.conns.len() >= max.max(1);
            if !full && self.budget.fits(CONN_COST) {
                break;
            }
            let Some(requests) = self.evict_oldest() else {
                evicted.refused = !full;
                return evicted;
            };
            evicted.requests += requests;
            if full {
                evicted.capacity += 1;
            } else {
                evicted.budget += 1;
            }
        }
        self.budget.charge(MemoryPart::Connections, CONN_COST);
        // Tag first, then queue: compaction keeps only entries whose connection carries
        // their tag.
        self.conns
            .insert(key, Conn::new(origin, ts, self.next_age_seq));
        self.push_age(key);
        evicted
    }

    /// When the least recently active connection was last active.
    pub(super) fn oldest(&mut self) -> Option<u64> {
        while let Some(&(seq, key)) = self.age.front() {
            match self.conns.get(&key) {
                Some(c) if c.age_seq == seq => return Some(c.last_seen),
                _ => {
                    self.age.pop_front();
                }
            }
        }
        None
    }

    /// Drops the least recently active connection; returns how many requests waited on
    /// it (`None`: no connection is followed).
    pub(super) fn evict_oldest(&mut self) -> Option<u64> {
        while let Some((seq, old)) = self.age.pop_front() {
            if self.conns.get(&old).is_none_or(|c| c.age_seq != seq) {
                continue;
            }
            let c = self.conns.remove(&old)?;
            tracing::debug!(tgid = old.0, conn = %old.1, "connection evicted to make room");
            return Some(self.released(&c));
        }
        None
    }

    pub(super) fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        // Its recency entry turns stale and is dropped later.
        let c = self.conns.remove(&key)?;
        self.released(&c);
        Some(c)
    }

    /// Forgets connections idle since before `horizon`. Returns how many, and how many
    /// requests were waiting on them.
    pub(super) fn expire(&mut self, horizon: u64) -> (u64, u64) {
        let mut expired = 0;
        let mut requests = 0;
        while let Some(&(seq, key)) = self.age.front() {
            match self.conns.get(&key) {
                Some(c) if c.age_seq == seq => {
                    if c.last_seen >= horizon {
                        break;
                    }
                    self.age.pop_front();
                    if let Some(c) = self.conns.remove(&key) {
                        requests += self.released(&c);
                        expired += 1;
                        tracing::debug!(tgid = key.0, conn = %key.1, "idle connection expired");
                    }
                }
                _ => {
                    self.age.pop_front();
                }
            }
        }
        (expired, requests)
    }

    /// Queues a client request on `key`, unless `max` already wait or the budget has no
    /// room for the queue to grow: then the request and every one waiting before it are
    /// shed, and their responses will be passed over.
    #[inline]
    pub(super) fn push_pending(
        &mut self,
        key: ConnKey,
        ts: u64,
        head: &RequestHead,
        max: usize,
    ) -> Admit {
        let Some(c) = self.conns.get_mut(&key) else {
            return Admit::Untracked;
        };
        if c.pending.len() >= max {
            return Admit::Overflow;
        }
        let growth = growth_bytes::<ClientRequest>(c.pending.len(), c.pending.capacity());
        if growth > 0 && !self.budget.fits(growth) {
            let shed = c.pending.len() as u64 + 1;
            c.pending = VecDeque::new();
            c.shed_responses = c.shed_responses.saturating_add(shed as u32);
            let now = c.queue_bytes();
            self.budget.adjust(MemoryPart::Requests, c.charged, now);
            c.charged = now;
            return Admit::Refused(shed);
        }
        self.oldest_waiting = self.oldest_waiting.min(ts);
        // Built in place: the request is large enough for a move to cost a copy.
        c.pending.push_back(ClientRequest::from_head(ts, head));
        if growth > 0 {
            let now = c.queue_bytes();
            self.budget.adjust(MemoryPart::Requests, c.charged, now);
            c.charged = now;
        }
        Admit::Waiting
    }

    /// Queues an upstream request's HEAD flag (upstream responses followed), charged
    /// like client requests; false when `max` wait or the budget has no room.
    pub(super) fn push_upstream(&mut self, key: ConnKey, head: bool, max: usize) -> bool {
        let Some(c) = self.conns.get_mut(&key) else {
            return true;
        };
        let q = &c.upstream_pending;
        let growth = growth_bytes::<bool>(q.len(), q.capacity());
        if q.len() >= max || (growth > 0 && !self.budget.fits(growth)) {
            return false;
        }
        c.upstream_pending.push_back(head);
        if growth > 0 {
            let now = c.queue_bytes();
            self.budget.adjust(MemoryPart::Requests, c.charged, now);
            c.charged = now;
        }
        true
    }

    /// Sheds client requests that arrived before `cutoff` and still wait (their
    /// responses will be passed over). Returns how many.
    pub(super) fn shed_aged(&mut self, cutoff: u64) -> u64 {
        if cutoff <= self.oldest_waiting {
            return 0;
        }
        let mut shed = 0;
        let mut oldest = u64::MAX;
        for c in self.conns.values_mut() {
            let before = c.pending.len();
            while c.pending.front().is_some_and(|r| r.ts_ns < cutoff) {
                c.pending.pop_front();
            }
            let n = before - c.pending.len();
            if n > 0 {
                shed += n as u64;
                c.shed_responses = c.shed_responses.saturating_add(n as u32);
                if c.pending.is_empty() {
                    c.pending = VecDeque::new();
                }
                let now = c.queue_bytes();
                self.budget.adjust(MemoryPart::Requests, c.charged, now);
                c.charged = now;
            }
            if let Some(r) = c.pending.front() {
                oldest = oldest.min(r.ts_ns);
            }
        }
        self.oldest_waiting = oldest;
        shed
    }

    /// The head stashed in direction `d` of `key`, taken out.
    #[inline]
    pub(super) fn take_stash(&mut self, key: ConnKey, d: usize) -> Option<Vec<u8>> {
        let head = self.conns.get_mut(&key)?.stash[d].take()?;
        self.stash_bytes = self.stash_bytes.saturating_sub(head.len());
        self.budget.release(MemoryPart::Buffers, head.len());
        Some(head)
    }

    /// Whether a head of `len` bytes may be stashed.
    pub(super) fn stash_fits(&self, len: usize) -> bool {
        len <= MAX_STASH / 2 && self.stash_bytes + len <= MAX_STASH_TOTAL && self.budget.fits(len)
    }

    /// Keeps `head`, the start of a message direction `d` of `key` ended in, until the
    /// next syscall in that direction completes it.
    pub(super) fn stash(&mut self, key: ConnKey, d: usize, head: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&key) {
            self.stash_bytes += head.len();
            self.budget.charge(MemoryPart::Buffers, head.len());
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
