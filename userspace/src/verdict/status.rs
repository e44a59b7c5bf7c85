//! `routeskew status`: a running agent's verdicts, fetched from its `/api/v1/replicas`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::HOST;

use super::VerdictReport;

/// Largest document read (a few thousand replicas and hosts).
const MAX_BODY: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{url} is not an http://host:port URL (the agent serves plain HTTP)")]
    Url { url: String },
    #[error("could not reach the agent at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the agent at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("HTTP exchange with the agent failed: {source}")]
    Http { source: hyper::Error },
    #[error("the agent answered {status}; is it a routeskew agent recent enough to serve /api/v1/replicas?")]
    Status { status: u16 },
    #[error("the agent's answer could not be read: {reason}")]
    Body { reason: String },
    #[error("the agent's answer is not a verdict document: {source}")]
    Json { source: serde_json::Error },
}

/// `host:port` of an `http://host:port[/]` URL.
fn authority(url: &str) -> Result<&str, StatusError> {
    let bad = || StatusError::Url {
        url: url.to_string(),
    };
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let auth = rest.trim_end_matches('/');
    if auth.is_empty() || auth.contains('/') || !auth.contains(':') {
        return Err(bad());
    }
    Ok(auth)
}

/// The verdicts served at `url`, and the document as served.
pub async fn fetch(url: &str, timeout: Duration) -> Result<(VerdictReport, Bytes), StatusError> {
    let addr = authority(url)?.to_string();
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|source| StatusError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|source| StatusError::Http { source })?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/api/v1/replicas")
            .header(HOST, addr.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|e| StatusError::Body {
                reason: e.to_string(),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| StatusError::Http { source })?;
        if !resp.status().is_success() {
            return Err(StatusError::Status {
                status: resp.status().as_u16(),
            });
        }
        Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| StatusError::Body {
                reason: e.to_string(),
            })
    };
    let body = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| StatusError::Timeout {
            addr: addr.clone(),
            timeout,
        })??;
    let report = serde_json::from_slice(&body).map_err(|source| StatusError::Json { source })?;
    Ok((report, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_authorities_are_accepted() {
        assert_eq!(
            authority("http://127.0.0.1:9477").unwrap(),
            "127.0.0.1:9477"
        );
        assert_eq!(authority("http://node-1:9477/").unwrap(), "node-1:9477");
        for bad in [
            "https://x:1",
            "127.0.0.1:9477",
            "http://x",
            "http://x:1/metrics",
            "http://",
        ] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn garbage_and_errors_are_reported_not_panicked_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for answer in [
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                s.write_all(answer.as_bytes()).await.unwrap();
            });
            let err = fetch(&url, Duration::from_secs(5)).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    StatusError::Json { .. } | StatusError::Status { status: 404 }
                ),
                "{err}"
            );
        }
        // A listener that never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let err = fetch(&url, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, StatusError::Timeout { .. }), "{err}");
    }
}
