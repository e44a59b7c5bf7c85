//! The agent's own connections to replicas, published to the kernel (`SEM_PEERS`) so that
//! the semantic sensor can tell probe and housekeeping responses from passive traffic by
//! the request's `RemoteAddr`. The map is taken out of the object and shared with the
//! prober's tasks behind a mutex (one update per probe connection).

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

use super::linger::Linger;
use crate::{
    event::{PeerRole, PeerTags},
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
    /// Abandoned connections whose tag stays a while ([`super::linger`]).
    linger: Mutex<Linger>,
    /// Tags the kernel map refused (full, or an address too long to key).
    pub refused: AtomicU64,
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
            linger: Mutex::new(Linger::default()),
            refused: AtomicU64::new(0),
        })
    }
}

impl PeerTags for KernelPeers {
    fn tag(&self, peer: SocketAddr, role: PeerRole) -> bool {
        let value = match role {
            PeerRole::Probe => sem_peer::PROBE,
            PeerRole::Housekeeping => sem_peer::HOUSEKEEPING,
        };
        self.sweep(Some(peer));
        let result = match (key(peer), self.map.lock()) {
            (Some(k), Ok(mut map)) => map.insert(k, value, 0).map_err(TagError::from),
            (None, _) => Err(TagError::TooLong),
            (_, Err(_)) => Err(TagError::Poisoned),
        };
        match result {
            Ok(()) => true,
            Err(error) => {
                if self.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(%peer, %error, "the kernel did not take an agent connection's address; its responses count as passive");
                }
                false
            }
        }
    }

    fn untag(&self, peer: SocketAddr) {
        self.sweep(Some(peer));
        self.remove(peer);
    }

    fn untag_abandoned(&self, peer: SocketAddr) {
        self.sweep(None);
        if let Ok(mut l) = self.linger.lock() {
            l.abandoned(peer, Instant::now());
        } else {
            self.remove(peer);
        }
    }
}

impl KernelPeers {
    /// Removes lingering tags whose time is up; `live`'s own lingering entry no longer
    /// applies (it is tagged or untagged now).
    fn sweep(&self, live: Option<SocketAddr>) {
        let due = match self.linger.lock() {
            Ok(mut l) => {
                if let Some(p) = live {
                    l.forget(p);
                }
                l.due(Instant::now())
            }
            Err(_) => return,
        };
        for peer in due {
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
