//! WebSocket upgrades through a chosen replica with a chosen Host.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsOutcome {
    /// HTTP status of the handshake answer (101 when upgraded).
    pub status: u16,
    /// The response body when the upgrade was refused (Traefik's 404 text, ...).
    pub body: Vec<u8>,
    /// Upgraded, one text message echoed back, and closed cleanly.
    pub echoed: bool,
}

impl WsOutcome {
    pub fn upgraded(&self) -> bool {
        self.status == 101
    }
}

/// Performs an upgrade to `ws://<host><path>` over a TCP connection to `addr`; when it
/// succeeds, exchanges one message and closes with a close handshake.
pub async fn upgrade(addr: SocketAddr, host: &str, path: &str) -> Result<WsOutcome> {
    tokio::time::timeout(TIMEOUT, upgrade_inner(addr, host, path))
        .await
        .with_context(|| format!("WebSocket upgrade to {host}{path} via {addr} timed out"))?
}

async fn upgrade_inner(addr: SocketAddr, host: &str, path: &str) -> Result<WsOutcome> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    // The URI's authority becomes the Host header; the bytes go to `addr` regardless.
    let request = format!("ws://{host}{path}").into_client_request()?;
    let (mut ws, response) = match tokio_tungstenite::client_async(request, stream).await {
        Ok(ok) => ok,
        Err(WsError::Http(resp)) => {
            return Ok(WsOutcome {
                status: resp.status().as_u16(),
                body: resp.body().clone().unwrap_or_default(),
                echoed: false,
            })
        }
        Err(e) => return Err(e).context("WebSocket handshake failed"),
    };
    let status = response.status().as_u16();
    let text = format!("hello {host} via {addr}");
    ws.send(Message::text(text.clone())).await?;
    let echoed = loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => break t.as_str() == text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected WebSocket message {other:?}"),
            Some(Err(e)) => return Err(e).context("reading the echo"),
            None => break false,
        }
    };
    ws.close(None).await?;
    // Drain until the server's close frame and EOF, so the connection ends cleanly on
    // both sides before the caller counts anything.
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(_) => {}
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => break,
            Err(e) => return Err(e).context("closing the WebSocket"),
        }
    }
    Ok(WsOutcome {
        status,
        body: Vec::new(),
        echoed,
    })
}
