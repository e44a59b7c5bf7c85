//! A minimal HTTP/1.1 client over raw tokio TCP: exact control over the request bytes
//! (the Host header picks the router, not the address) and the raw response head kept
//! for byte-level checks.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Header fields in wire order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Decoded body (chunked framing removed).
    pub body: Vec<u8>,
    /// The status line and header block exactly as received, including the final CRLF CRLF.
    pub head: Vec<u8>,
    /// The request carried `Connection: close` (servers then add it to the answer).
    pub request_closed: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_names(&self) -> Vec<&str> {
        self.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The raw head with the `Date` value replaced by `<date>`, for exact comparisons.
    pub fn head_without_date(&self) -> String {
        String::from_utf8_lossy(&self.head)
            .split("\r\n")
            .map(|line| match line.split_once(':') {
                Some((n, _)) if n.eq_ignore_ascii_case("date") => format!("{n}: <date>"),
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

/// A `GET` with the given Host.
pub fn get_request(host: &str, path: &str, close: bool) -> Vec<u8> {
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: routeskew-testbed\r\n");
    if close {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// One client connection that can carry several requests (keep-alive).
pub struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::time::timeout(DEFAULT_TIMEOUT, TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sends raw request bytes and reads one response.
    pub async fn round_trip(&mut self, request: &[u8]) -> Result<Response> {
        self.stream.write_all(request).await?;
        let head_request = request.starts_with(b"HEAD ");
        let mut resp = tokio::time::timeout(self.timeout, self.read_response(head_request))
            .await
            .context("timed out waiting for a response")??;
        let lower = request.to_ascii_lowercase();
        resp.request_closed = find(&lower, b"\r\nconnection: close\r\n").is_some();
        Ok(resp)
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Result<Response> {
        self.round_trip(&get_request(host, path, false)).await
    }

    async fn fill(&mut self) -> Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn read_response(&mut self, head_request: bool) -> Result<Response> {
        let head_len = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if self.fill().await? == 0 {
                bail!(
                    "connection closed before a complete response head ({} bytes read)",
                    self.buf.len()
                );
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_len).collect();
        let mut header_buf = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut header_buf);
        parsed.parse(&head).context("malformed response head")?;
        let status = parsed.code.context("response without status")?;
        let reason = parsed.reason.unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let find_header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };

        let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status)
        {
            Vec::new()
        } else if find_header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            self.read_chunked().await?
        } else if let Some(len) = find_header("content-length") {
            let len: usize = len.trim().parse().context("bad Content-Length")?;
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    bail!("connection closed inside a {len}-byte body");
                }
            }
            self.buf.drain(..len).collect()
        } else {
            while self.fill().await? > 0 {}
            std::mem::take(&mut self.buf)
        };
        Ok(Response {
            status,
            reason,
            headers,
            body,
            head,
            request_closed: false,
        })
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = find(&self.buf, b"\r\n") {
                    break p;
                }
                if self.fill().await? == 0 {
                    bail!("connection closed inside a chunk size line");
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            self.buf.drain(..line_end + 2);
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    let end = loop {
                        if let Some(p) = find(&self.buf, b"\r\n") {
                            break p;
                        }
                        if self.fill().await? == 0 {
                            bail!("connection closed inside chunked trailers");
                        }
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if self.fill().await? == 0 {
                    bail!("connection closed inside a chunk");
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection, closed afterwards.
pub async fn get_once(addr: SocketAddr, host: &str, path: &str) -> Result<Response> {
    let mut conn = HttpConn::connect(addr).await?;
    conn.round_trip(&get_request(host, path, true)).await
}

/// A GET against a plain local endpoint (the agent's `/metrics`, Traefik's API).
pub async fn get_local(addr: SocketAddr, path: &str) -> Result<Response> {
    get_once(addr, &addr.to_string(), path).await
}
