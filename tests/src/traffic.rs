//! Client traffic: exact numbers of requests per replica and host, and round-robin over
//! replicas the way a Kubernetes Service spreads connections.

use std::net::SocketAddr;

use anyhow::{Context, Result};

use crate::http::{self, HttpConn, Response};
use crate::ws::{self, WsOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnMode {
    /// All requests on one connection, one after another.
    KeepAlive,
    /// Each request on its own connection (`Connection: close`).
    NewConnection,
}

/// Sends `n` GETs for `host` + `path` to one replica and returns every response.
pub async fn send_http(
    addr: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
    mode: ConnMode,
) -> Result<Vec<Response>> {
    let mut out = Vec::with_capacity(n);
    match mode {
        ConnMode::KeepAlive => {
            if n == 0 {
                return Ok(out);
            }
            let mut conn = HttpConn::connect(addr).await?;
            for i in 0..n {
                // The last request closes the connection so nothing lingers afterwards.
                let req = http::get_request(host, path, i + 1 == n);
                out.push(
                    conn.round_trip(&req)
                        .await
                        .with_context(|| format!("request {i} for {host}{path} via {addr}"))?,
                );
            }
        }
        ConnMode::NewConnection => {
            for i in 0..n {
                out.push(
                    http::get_once(addr, host, path)
                        .await
                        .with_context(|| format!("request {i} for {host}{path} via {addr}"))?,
                );
            }
        }
    }
    Ok(out)
}

/// Statuses only, for tallies.
pub async fn send_http_statuses(
    addr: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
    mode: ConnMode,
) -> Result<Vec<u16>> {
    Ok(send_http(addr, host, path, n, mode)
        .await?
        .into_iter()
        .map(|r| r.status)
        .collect())
}

/// `n` WebSocket upgrades, each on its own connection.
pub async fn send_ws(addr: SocketAddr, host: &str, path: &str, n: usize) -> Result<Vec<WsOutcome>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(
            ws::upgrade(addr, host, path)
                .await
                .with_context(|| format!("upgrade {i} for {host}{path} via {addr}"))?,
        );
    }
    Ok(out)
}

/// Spreads new connections over replicas in turn, like kube-proxy does for a Service
/// (statistically; here exactly, so per-replica counts are known).
#[derive(Debug, Clone)]
pub struct RoundRobin {
    addrs: Vec<SocketAddr>,
    next: usize,
}

impl RoundRobin {
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        RoundRobin { addrs, next: 0 }
    }

    /// Index and address of the replica the next connection goes to.
    pub fn pick(&mut self) -> (usize, SocketAddr) {
        let i = self.next % self.addrs.len();
        self.next = self.next.wrapping_add(1);
        (i, self.addrs[i])
    }

    /// One request on a new connection to the next replica; returns its index too.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<(usize, Response)> {
        let (i, addr) = self.pick();
        Ok((i, http::get_once(addr, host, path).await?))
    }

    /// One upgrade on a new connection to the next replica.
    pub async fn upgrade(&mut self, host: &str, path: &str) -> Result<(usize, WsOutcome)> {
        let (i, addr) = self.pick();
        Ok((i, ws::upgrade(addr, host, path).await?))
    }
}
