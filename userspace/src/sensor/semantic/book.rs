//! Which of the agent's local addresses are tagged in the kernel, and how many of its
//! connections hold each tag.
//!
//! The kernel knows a connection only by the replica's `RemoteAddr` of it, the agent's
//! local `ip:port`. Linux gives one local port to several connections at once when their
//! destinations differ (connect's port choice only needs the 4-tuple to be unique), so
//! two probes to two replicas can share a key: the first to finish must not untag the
//! other, and a probe must not share a key with a housekeeping connection (their answers
//! are counted differently). Each tag is counted by its holders; a holder asking for the
//! other role is told to connect again. Pure bookkeeping: [`super::peers`] applies the
//! kernel side.

use std::{collections::HashMap, net::SocketAddr, time::Instant};

use super::linger::Linger;
use crate::event::PeerRole;

/// What tagging an address asks of the kernel map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Take {
    /// A new tag: insert it.
    Insert,
    /// Another live connection holds the same tag: nothing to do.
    Shared,
    /// Another live connection holds the address under the other role.
    Conflict,
}

/// Live tags by local address, and abandoned ones lingering (each holding one reference).
#[derive(Debug, Default)]
pub(super) struct Book {
    live: HashMap<SocketAddr, (PeerRole, u32)>,
    linger: Linger,
}

impl Book {
    /// Lingering tags whose time is up at `now` are released; returns the addresses
    /// that no connection holds any more (to remove from the kernel).
    pub(super) fn sweep(&mut self, now: Instant) -> Vec<SocketAddr> {
        let due = self.linger.due(now);
        due.into_iter().filter(|&p| self.release(p)).collect()
    }

    /// One more connection on `peer` in `role`.
    pub(super) fn take(&mut self, peer: SocketAddr, role: PeerRole) -> Take {
        match self.live.get_mut(&peer) {
            Some((held, refs)) if *held == role => {
                *refs += 1;
                Take::Shared
            }
            Some(_) => Take::Conflict,
            None => {
                self.live.insert(peer, (role, 1));
                Take::Insert
            }
        }
    }

    /// One connection on `peer` is done; true when it was the last (remove the tag).
    pub(super) fn release(&mut self, peer: SocketAddr) -> bool {
        let Some((_, refs)) = self.live.get_mut(&peer) else {
            return false;
        };
        *refs -= 1;
        if *refs > 0 {
            return false;
        }
        self.live.remove(&peer);
        true
    }

    /// One connection on `peer` was given up before its answer: its reference stays
    /// until the linger ends.
    pub(super) fn abandon(&mut self, peer: SocketAddr, now: Instant) {
        if self.live.contains_key(&peer) {
            self.linger.abandoned(peer, now);
        }
    }

    #[cfg(test)]
    pub(super) fn live(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::linger::{CAP, LINGER};
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_shared_port_stays_tagged_until_its_last_connection_ends() {
        let mut b = Book::default();
        assert_eq!(b.take(addr(1), PeerRole::Probe), Take::Insert);
        // A second probe to another replica got the same local port.
        assert_eq!(b.take(addr(1), PeerRole::Probe), Take::Shared);
        assert!(
            !b.release(addr(1)),
            "the other probe still waits for its answer"
        );
        assert!(b.release(addr(1)));
        assert_eq!(b.live(), 0);
        assert!(!b.release(addr(1)), "releasing twice removes nothing");
    }

    #[test]
    fn the_other_role_on_a_live_port_is_refused() {
        let mut b = Book::default();
        assert_eq!(b.take(addr(1), PeerRole::Probe), Take::Insert);
        assert_eq!(b.take(addr(1), PeerRole::Housekeeping), Take::Conflict);
        assert!(b.release(addr(1)));
        assert_eq!(b.take(addr(1), PeerRole::Housekeeping), Take::Insert);
    }

    #[test]
    fn an_abandoned_connection_holds_its_tag_for_the_linger() {
        let t0 = Instant::now();
        let mut b = Book::default();
        b.take(addr(1), PeerRole::Probe);
        b.abandon(addr(1), t0);
        // The port is reused meanwhile, and that connection ends first.
        assert_eq!(b.take(addr(1), PeerRole::Probe), Take::Shared);
        assert!(!b.release(addr(1)));
        assert!(b.sweep(t0 + LINGER - Duration::from_millis(1)).is_empty());
        assert_eq!(b.sweep(t0 + LINGER), vec![addr(1)]);
        assert_eq!(b.live(), 0);
    }

    #[test]
    fn lingering_tags_are_bounded() {
        let t0 = Instant::now();
        let mut b = Book::default();
        for p in 0..=CAP as u16 {
            b.take(addr(100 + p), PeerRole::Probe);
            b.abandon(addr(100 + p), t0);
        }
        assert_eq!(b.sweep(t0), vec![addr(100)]);
        assert_eq!(b.live(), CAP);
    }
}
