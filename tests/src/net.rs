//! Loopback ports for the test bed's servers.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

use anyhow::{Context, Result};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that was free a moment ago, never the same twice in this process.
/// Traefik cannot take a listening socket from us, so the port is released and the
/// server binds it again; ephemeral ports are assigned round-robin by the kernel, so a
/// collision in that window is unlikely, and readiness checks would catch one.
pub fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("could not find an unused loopback port")
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A port that refuses every connection for as long as the returned socket lives: it is
/// bound (so no one else gets it) but never listening (so SYNs are answered with RST).
pub fn refusing_port() -> Result<(socket2::Socket, SocketAddr)> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&loopback(0).into())?;
    let addr = sock
        .local_addr()?
        .as_socket()
        .context("bound socket has no inet address")?;
    Ok((sock, addr))
}
