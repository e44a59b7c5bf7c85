//! Tags of abandoned connections stay a while: a probe the prober gave up on (its
//! timeout) may still be answered by the replica (a slow backend), and that late answer is
//! the probe's, not passive traffic. Bounded in time and in number.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// How long an abandoned connection's tag outlives it: longer than Traefik's default
/// read timeout (60 s), so that an answer written as late as that is still the probe's.
pub(super) const LINGER: Duration = Duration::from_secs(120);
/// Abandoned tags kept at once (the kernel's peer map holds 1024 for live and lingering
/// ones together); past it the oldest goes early.
pub(super) const CAP: usize = 256;

/// Abandoned connections whose tag is still in the kernel, oldest first.
#[derive(Debug, Default)]
pub(super) struct Linger {
    queue: VecDeque<(Instant, SocketAddr)>,
}

impl Linger {
    /// References whose time is up at `now`, or that exceed [`CAP`]: to release.
    pub(super) fn due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        while let Some(&(at, peer)) = self.queue.front() {
            if now.duration_since(at) < LINGER && self.queue.len() <= CAP {
                break;
            }
            self.queue.pop_front();
            out.push(peer);
        }
        out
    }

    /// A connection on `peer` was abandoned at `now` (each one holds its own reference
    /// to the tag, [`super::book`]: a reused address is queued once per connection).
    pub(super) fn abandoned(&mut self, peer: SocketAddr, now: Instant) {
        self.queue.push_back((now, peer));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn abandoned_tags_go_after_the_linger_or_past_the_cap() {
        let t0 = Instant::now();
        let mut l = Linger::default();
        l.abandoned(addr(1), t0);
        l.abandoned(addr(2), t0 + Duration::from_secs(1));
        assert!(l.due(t0 + LINGER - Duration::from_millis(1)).is_empty());
        assert_eq!(l.due(t0 + LINGER), vec![addr(1)]);
        assert_eq!(l.due(t0 + LINGER + Duration::from_secs(1)), vec![addr(2)]);
        for p in 0..=CAP as u16 {
            l.abandoned(addr(100 + p), t0);
        }
        assert_eq!(l.due(t0), vec![addr(100)]);
        assert_eq!(l.len(), CAP);
        // Two abandoned connections on one address: two references, released in turn.
        l.abandoned(addr(101), t0 + LINGER);
        assert_eq!(l.len(), CAP + 1);
        assert_eq!(l.due(t0), vec![addr(101)]);
    }
}
