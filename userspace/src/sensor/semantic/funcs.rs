//! The Go functions (and the module) the semantic sensor's plan names, shared by the plan
//! and its verification.

/// HTTP/1.x responses.
pub(super) const H1_WRITE_HEADER: &str = "net/http.(*response).WriteHeader";
/// HTTP/2 responses, `net/http`'s bundled server.
pub(super) const H2_BUNDLED: &str = "net/http.(*http2responseWriterState).writeHeader";
/// HTTP/2 responses, `golang.org/x/net/http2`'s server.
pub(super) const H2_XNET: &str = "golang.org/x/net/http2.(*responseWriterState).writeHeader";
/// Traefik's no-router handler (and its API's 404s).
pub(super) const NOT_FOUND: &str = "net/http.NotFound";
/// A backend's `101` relayed over the hijacked connection.
pub(super) const UPGRADE: &str = "net/http/httputil.(*ReverseProxy).handleUpgradeResponse";
/// The end of a relayed WebSocket session: the hijacked client connection's close.
pub(super) const CONN_CLOSE: &str = "net.(*conn).Close";
/// Called directly by an application that serves HTTP/2 with x/net.
pub(super) const XNET_CONFIGURE_SERVER: &str = "golang.org/x/net/http2.ConfigureServer";
pub(super) const XNET_MODULE: &str = "golang.org/x/net";
