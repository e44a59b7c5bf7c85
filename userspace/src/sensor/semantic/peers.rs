//! The agent's own connections to replicas, published to the kernel (`SEM_PEERS`) so that
//! the semantic sensor can tell probe and housekeeping responses from passive traffic by
//! the request's `RemoteAddr`. The map is taken out of the object and shared with the
//! prober's tasks behind a mutex (one update per probe connection, none when another
//! live connection shares the address).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Instant,
};

use aya::{
    maps::{Array, HashMap, MapData, MapError},
    Ebpf,
};
use routeskew_common::{peer_key_of, sem_peer};

use super::book::{Book, Take};
use crate::{
    event::{PeerRole, PeerTags, Tagging},
    sensor::{map_err, names, SensorError},
};

/// Why an address was not tagged.
#[derive(Debug, thiserror::Error)]
enum TagError {
    #[error("the address is longer than the kernel reads")]
    TooLong,
    #[error("the map's lock was poisoned")]
    Poisoned,
    #[error(transparent)]
    Map(#[from] MapError),
}

/// `SEM_PEERS`, owned by the prober's side once probing starts.
pub struct KernelPeers {
    map: Mutex<HashMap<MapData, u64, u32>>,
    /// Who holds which tag ([`super::book`]); locked before `map` when both are.
    book: Mutex<Book>,
    /// Tags the kernel map refused (full, or an address too long to key).
    pub refused: AtomicU64,
    /// Connections that found their local address held under the other role.
    pub conflicts: AtomicU64,
}

/// Go's `RemoteAddr` spelling of a socket address: `net.JoinHostPort(ip.String(),
/// port)`, which is Rust's `SocketAddr` display for IPv4 and for IPv6 without a zone.
fn go_remote_addr(peer: SocketAddr) -> String {
    if let SocketAddr::V6(v6) = peer {
        if let Some(v4) = v6.ip().to_ipv4_mapped() {
            return format!("{v4}:{}", v6.port());
        }
    }
    peer.to_string()
}

fn key(peer: SocketAddr) -> Option<u64> {
    peer_key_of(go_remote_addr(peer).as_bytes())
}

impl KernelPeers {
    /// Takes `SEM_PEERS` out of `ebpf` and turns the kernel's lookup on.
    pub(in crate::sensor) fn take(ebpf: &mut Ebpf) -> Result<KernelPeers, SensorError> {
        let name = names::MAP_SEM_PEERS;
        let map = ebpf
            .take_map(name)
            .ok_or(SensorError::MapMissing { name })?;
        let map = HashMap::try_from(map).map_err(map_err(name))?;
        let on = names::MAP_SEM_PEERS_ON;
        let switch = ebpf
            .map_mut(on)
            .ok_or(SensorError::MapMissing { name: on })?;
        Array::<_, u32>::try_from(switch)
            .map_err(map_err(on))?
            .set(0, 1, 0)
            .map_err(map_err(on))?;
        Ok(KernelPeers {
            map: Mutex::new(map),
            book: Mutex::new(Book::default()),
            refused: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
        })
    }
}

impl PeerTags for KernelPeers {
    fn tag(&self, peer: SocketAddr, role: PeerRole) -> Tagging {
        let value = match role {
            PeerRole::Probe => sem_peer::PROBE,
            PeerRole::Housekeeping => sem_peer::HOUSEKEEPING,
        };
        let Ok(mut book) = self.book.lock() else {
            return self.refused(peer, &TagError::Poisoned);
        };
        self.sweep(&mut book);
        let Some(k) = key(peer) else {
            return self.refused(peer, &TagError::TooLong);
        };
        match book.take(peer, role) {
            Take::Shared => return Tagging::Tagged,
            Take::Conflict => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
                return Tagging::Conflict;
            }
            Take::Insert => {}
        }
        let inserted = match self.map.lock() {
            Ok(mut map) => map.insert(k, value, 0).map_err(TagError::from),
            Err(_) => Err(TagError::Poisoned),
        };
        match inserted {
            Ok(()) => Tagging::Tagged,
            Err(error) => {
                book.release(peer);
                self.refused(peer, &error)
            }
        }
    }

    fn untag(&self, peer: SocketAddr) {
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        self.sweep(&mut book);
        if book.release(peer) {
            self.remove(peer);
        }
    }

    fn untag_abandoned(&self, peer: SocketAddr) {
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        self.sweep(&mut book);
        book.abandon(peer, Instant::now());
    }
}

impl KernelPeers {
    fn refused(&self, peer: SocketAddr, error: &TagError) -> Tagging {
        if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(%peer, %error, "the kernel did not take an agent connection's address; its responses count as passive");
        }
        Tagging::Refused
    }

    /// Removes lingering tags whose time is up and that no live connection shares.
    fn sweep(&self, book: &mut Book) {
        for peer in book.sweep(Instant::now()) {
            self.remove(peer);
        }
    }

    fn remove(&self, peer: SocketAddr) {
        let (Some(k), Ok(mut map)) = (key(peer), self.map.lock()) else {
            return;
        };
        match map.remove(&k) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(error) => tracing::debug!(%peer, %error, "untagging an agent connection failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_spelled_as_go_does() {
        let v4: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(go_remote_addr(v4), "127.0.0.1:41234");
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(go_remote_addr(v6), "[::1]:80");
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:5".parse().unwrap();
        assert_eq!(go_remote_addr(mapped), "10.0.0.7:5");
    }
}
