//! The prober's HTTP/1.1 and WebSocket client. Every request opens its own connection
//! to one replica's address (never through a Service or a pool), so the kernel sees one
//! probe per connection and the Host header is exactly the probed host. TLS sends that
//! host as SNI and accepts any certificate: probes test routing, not certificates.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, HOST, USER_AGENT};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::check::{Answer, BODY_PREFIX};
use crate::event::{PeerRole, PeerTags, ProbeAnswer, Tagging};

/// Why a probe request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {source}")]
    Connect {
        #[source]
        source: std::io::Error,
    },
    #[error("tls: {source}")]
    Tls {
        #[source]
        source: std::io::Error,
    },
    #[error("http: {source}")]
    Http {
        #[source]
        source: hyper::Error,
    },
    #[error("websocket: {source}")]
    WebSocket {
        #[source]
        source: WsError,
    },
    #[error("invalid request: {source}")]
    Request {
        #[source]
        source: RequestError,
    },
}

/// A request that cannot be sent as asked (a host or User-Agent that is no valid header
/// value or server name).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    ServerName {
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error(transparent)]
    Header {
        source: hyper::header::InvalidHeaderValue,
    },
    #[error(transparent)]
    Build { source: hyper::http::Error },
    #[error(transparent)]
    WebSocket { source: WsError },
}

impl ClientError {
    /// A short, bounded reason for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Tls { .. } => "tls",
            Self::Http { .. } => "http",
            Self::WebSocket { .. } => "websocket",
            Self::Request { .. } => "request",
        }
    }

    fn http(source: hyper::Error) -> Self {
        Self::Http { source }
    }

    fn header(source: hyper::header::InvalidHeaderValue) -> Self {
        Self::Request {
            source: RequestError::Header { source },
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Pin<Box<dyn Io>>;

/// TLS settings shared by all probes.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    pub fn new() -> Result<Self, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        // The probes and the pipeline speak HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

/// Accepts any certificate but still checks that the server holds its key (the
/// handshake signatures), so a TLS endpoint is told apart from garbage.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One request's target: where to connect and what to say.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub addr: SocketAddr,
    /// TLS with this configuration when the endpoint speaks TLS.
    pub tls: Option<&'a Tls>,
    /// Host header and SNI.
    pub host: &'a str,
    pub path: &'a str,
    /// Who sends it: the User-Agent, and the sensor told the connection is the agent's.
    pub caller: &'a Caller,
}

/// Who sends a request: its User-Agent (the byte-capture sensor's probe tag), and the
/// semantic sensor's registry of the agent's own connections with this one's role.
#[derive(Clone)]
pub struct Caller {
    pub user_agent: String,
    pub role: PeerRole,
    pub tags: Option<Arc<dyn PeerTags>>,
}

/// The connection's local address stays tagged while this lives.
pub struct Tagged {
    tags: Arc<dyn PeerTags>,
    local: SocketAddr,
    /// The response head arrived: the replica wrote its answer.
    answered: bool,
}

/// Notes that the answer's head arrived on a tagged connection.
fn answered(tagged: &mut Option<Tagged>) {
    if let Some(t) = tagged {
        t.answered = true;
    }
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("user_agent", &self.user_agent)
            .field("role", &self.role)
            .field("tagged", &self.tags.is_some())
            .finish()
    }
}

impl Drop for Tagged {
    fn drop(&mut self) {
        if self.answered {
            self.tags.untag(self.local);
        } else {
            self.tags.untag_abandoned(self.local);
        }
    }
}

/// Connections made at most to find a local address free of the agent's other role.
const TAG_ATTEMPTS: usize = 4;

/// Tags the connection before anything is sent on it. `Err` when its local address is
/// held by another of the agent's connections in the other role (connect again).
fn tag(caller: &Caller, tcp: &TcpStream) -> Result<Option<Tagged>, ()> {
    let Some(tags) = caller.tags.as_ref() else {
        return Ok(None);
    };
    let Ok(local) = tcp.local_addr() else {
        return Ok(None);
    };
    match tags.tag(local, caller.role) {
        Tagging::Tagged => Ok(Some(Tagged {
            tags: Arc::clone(tags),
            local,
            answered: false,
        })),
        Tagging::Conflict => Err(()),
        Tagging::Refused => Ok(None),
    }
}

/// A connection to `addr`, tagged when the caller tags: a local address the agent holds
/// in the other role is given up and another connection made (a few times, then the
/// connection goes untagged and its answer counts as passive).
async fn tagged_tcp(r: &Request<'_>) -> Result<(TcpStream, Option<Tagged>), ClientError> {
    // Refused connections stay open until the end so that the next connect cannot be
    // given the same local port again.
    let mut held = Vec::new();
    loop {
        let attempt = held.len() + 1;
        let tcp = TcpStream::connect(r.addr)
            .await
            .map_err(|source| ClientError::Connect { source })?;
        let _ = tcp.set_nodelay(true);
        match tag(r.caller, &tcp) {
            Ok(tagged) => return Ok((tcp, tagged)),
            Err(()) if attempt < TAG_ATTEMPTS => {
                tracing::debug!(
                    attempt,
                    "local address held by another role; connecting again"
                );
                held.push(tcp);
            }
            Err(()) => {
                tracing::warn!(attempts = attempt, "no local address free of the agent's other role; this answer counts as passive");
                return Ok((tcp, None));
            }
        }
    }
}

async fn connect(r: &Request<'_>) -> Result<(Stream, Option<Tagged>), ClientError> {
    let (tcp, tagged) = tagged_tcp(r).await?;
    let Some(tls) = r.tls else {
        return Ok((Box::pin(tcp), tagged));
    };
    // The host without a port; an IP literal gives no SNI, as browsers do.
    let name = host_without_port(r.host);
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|source| ClientError::Request {
            source: RequestError::ServerName { source },
        })?;
    let stream = tls
        .connector
        .connect(server_name, tcp)
        .await
        .map_err(|source| ClientError::Tls { source })?;
    Ok((Box::pin(stream), tagged))
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// `GET path` with the given Host; reads at most `body_cap` bytes of the body.
pub async fn get(r: &Request<'_>, body_cap: usize) -> Result<Answer, ClientError> {
    let (stream, mut tagged) = connect(r).await?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(ClientError::http)?;
    let req = hyper::Request::get(r.path)
        .header(
            HOST,
            HeaderValue::from_str(r.host).map_err(ClientError::header)?,
        )
        .header(
            USER_AGENT,
            HeaderValue::from_str(&r.caller.user_agent).map_err(ClientError::header)?,
        )
        .body(Empty::<Bytes>::new())
        .map_err(|source| ClientError::Request {
            source: RequestError::Build { source },
        })?;
    let exchange = async move {
        let resp = sender.send_request(req).await.map_err(ClientError::http)?;
        answered(&mut tagged);
        let (parts, mut body) = resp.into_parts();
        let mut buf = BytesMut::new();
        while buf.len() < body_cap {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = body_cap - buf.len();
                        buf.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(e)) => return Err(ClientError::http(e)),
                None => break,
            }
        }
        let status = parts.status.as_u16();
        let next_page = parts
            .headers
            .get("x-next-page")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = buf.freeze();
        Ok(Answer {
            status,
            response: ProbeAnswer {
                status,
                reason: reason_phrase(&parts),
                body_prefix: body.slice(..body.len().min(BODY_PREFIX)),
                headers: parts.headers,
            },
            body,
            next_page,
        })
    };
    tokio::pin!(exchange);
    tokio::pin!(conn);
    // The connection task must be driven while the response is read; once it ends (the
    // server closed), whatever it received is already in the body channel.
    tokio::select! {
        biased;
        r = &mut exchange => r,
        _ = &mut conn => exchange.await,
    }
}

/// The reason phrase the server sent: hyper keeps it only when it is not the canonical
/// one for the status.
fn reason_phrase(parts: &hyper::http::response::Parts) -> String {
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(r) => String::from_utf8_lossy(r.as_bytes()).into_owned(),
        None => canonical_reason(parts.status),
    }
}

/// The WebSocket client (tungstenite) keeps no reason phrase: the canonical one.
fn canonical_reason(status: hyper::StatusCode) -> String {
    status.canonical_reason().unwrap_or("").to_string()
}

/// A WebSocket upgrade to `path`; on 101 the connection is closed cleanly right away.
pub async fn websocket(r: &Request<'_>) -> Result<Answer, ClientError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let (stream, mut tagged) = connect(r).await?;
    let scheme = if r.tls.is_some() { "wss" } else { "ws" };
    let uri = format!("{scheme}://{}{}", r.host, r.path);
    let mut req = uri
        .into_client_request()
        .map_err(|source| ClientError::Request {
            source: RequestError::WebSocket { source },
        })?;
    req.headers_mut().insert(
        USER_AGENT,
        HeaderValue::from_str(&r.caller.user_agent).map_err(ClientError::header)?,
    );
    let handshake = tokio_tungstenite::client_async(req, stream).await;
    if matches!(handshake, Ok(_) | Err(WsError::Http(_))) {
        answered(&mut tagged);
    }
    match handshake {
        Ok((mut ws, resp)) => {
            let status = resp.status().as_u16();
            let response = ProbeAnswer {
                status,
                reason: canonical_reason(resp.status()),
                headers: resp.headers().clone(),
                body_prefix: Bytes::new(),
            };
            let _ = ws.close(None).await;
            let _ = ws.flush().await;
            Ok(Answer {
                status,
                response,
                body: Bytes::new(),
                next_page: None,
            })
        }
        Err(WsError::Http(resp)) => {
            let (parts, body) = resp.into_parts();
            let status = parts.status.as_u16();
            let body = Bytes::from(body.unwrap_or_default());
            Ok(Answer {
                status,
                response: ProbeAnswer {
                    status,
                    reason: canonical_reason(parts.status),
                    headers: parts.headers,
                    body_prefix: body.slice(..body.len().min(BODY_PREFIX)),
                },
                body,
                next_page: None,
            })
        }
        Err(source) => Err(ClientError::WebSocket { source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names() {
        assert_eq!(host_without_port("a.test"), "a.test");
        assert_eq!(host_without_port("a.test:8443"), "a.test");
        assert_eq!(host_without_port("[::1]:443"), "::1");
        assert_eq!(host_without_port("127.0.0.1:9000"), "127.0.0.1");
    }
}
