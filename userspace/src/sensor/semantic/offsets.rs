//! The struct offsets of Go's `net/http` the semantic programs read, per Go release, from
//! the standard library's struct definitions (amd64: pointers, `int` and `uintptr` are 8
//! bytes, a string or interface 16, a slice 24, a `bool` 1; `context.CancelFunc`, maps and
//! channels are one pointer).
//!
//! Go 1.22 to 1.26 (`src/net/http` of go1.22.10, go1.23.9, go1.24.11, go1.25.5, go1.26.6;
//! the same field prefixes in each):
//!
//! ```text
//! server.go    type response struct {
//!                  conn *conn                        0
//!                  req *Request                      8   <- h1_req
//!                  reqBody io.ReadCloser            16
//!                  cancelCtx context.CancelFunc     32
//!                  wroteHeader bool                 40   <- h1_wrote_header
//! request.go   type Request struct {
//!                  Method string 0, URL *url.URL 16, Proto string 24, ProtoMajor int 40,
//!                  ProtoMinor int 48, Header Header 56, Body io.ReadCloser 64,
//!                  GetBody func() 80, ContentLength int64 88, TransferEncoding []string 96,
//!                  Close bool 120,
//!                  Host string                     128   <- req_host
//!                  Form 144, PostForm 152, MultipartForm 160, Trailer 168,
//!                  RemoteAddr string               176   <- req_remote_addr
//! server.go    type conn struct {   (response.conn   0   <- h1_conn)
//!                  server 0, cancelCtx 8, rwc net.Conn 16, remoteAddr 32,
//!                  tlsState 48, werr error 56, r *connReader 72,
//!                  bufr *bufio.Reader               80   <- conn_bufr
//! bufio.go     type Reader struct {
//!                  buf []byte                        0   <- bufr_buf
//!                  rd io.Reader 24, r int 40,
//!                  w int                            48   <- bufr_w
//! h2_bundle.go type http2responseWriterState struct {
//!                  stream *http2stream               0
//!                  req *Request                      8   <- h2_req
//!                  conn *http2serverConn 16, bw *bufio.Writer 24, handlerHeader Header 32,
//!                  snapHeader Header 40, trailers []string 48, status int 72,
//!                  wroteHeader bool                 80   <- h2_wrote_header
//! ```
//!
//! `golang.org/x/net/http2`'s `responseWriterState` (what Traefik 3.0–3.3 serve h2 with)
//! is keyed by the x/net module version, not by Go's: its `http2/server.go` has the same
//! fields as the bundle above, unchanged from v0.18.0 through v0.56.0 (v0.17.0 and older
//! have a `dirty bool` after `handlerDone`; newer tags were not read, so they are not in
//! the table).
//!
//! Every value is checked against the binary itself before use ([`super::verify`]).

use routeskew_common::GoHttpOffsets;

use super::SemanticError;

/// Which package's HTTP/2 server answers h2 in a binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Server {
    /// `net/http`'s bundled copy (`http2responseWriterState`).
    Bundled,
    /// `golang.org/x/net/http2` (`responseWriterState`; its layout is keyed by the
    /// binary's x/net module version).
    XNet,
}

/// Go minor versions (1.x) with a table entry.
pub const GO_MINORS: std::ops::RangeInclusive<u32> = 22..=26;

/// The Go 1.22–1.26 layout (see the module comment for the field lists).
const GO_1_22_TO_1_26: GoHttpOffsets = GoHttpOffsets {
    h1_req: 8,
    h1_wrote_header: 40,
    h2_req: 8,
    h2_wrote_header: 80,
    req_host: 128,
    req_remote_addr: 176,
    h1_conn: 0,
    conn_bufr: 80,
    bufr_buf: 0,
    bufr_w: 48,
};

/// x/net `http2.responseWriterState`: `req` and `wroteHeader`, for module versions
/// v0.18.0 ..= v0.56.0 (as `(minor, minor)` of `v0.<minor>.<patch>`).
const XNET_MINORS: std::ops::RangeInclusive<u64> = 18..=56;
const XNET_REQ: u32 = 8;
const XNET_WROTE_HEADER: u32 = 80;

/// The offsets for a binary built by `go_version` (e.g. `go1.24.7`) whose h2 server is
/// `h2` (`xnet_version`: the binary's `golang.org/x/net` dependency, needed for
/// [`H2Server::XNet`]).
pub fn offsets_for(
    go_version: &str,
    h2: H2Server,
    xnet_version: Option<&str>,
) -> Result<GoHttpOffsets, SemanticError> {
    let unsupported = || SemanticError::UnsupportedGoVersion {
        version: go_version.to_owned(),
    };
    let (major, minor) =
        crate::sensor::gobin::buildinfo::major_minor(go_version).ok_or_else(unsupported)?;
    if major != 1 || !GO_MINORS.contains(&minor) {
        return Err(unsupported());
    }
    let mut offsets = GO_1_22_TO_1_26;
    if h2 == H2Server::XNet {
        let version = xnet_version.ok_or(SemanticError::NoXNetVersion)?;
        if !xnet_minor(version).is_some_and(|m| XNET_MINORS.contains(&m)) {
            return Err(SemanticError::UnsupportedXNetVersion {
                version: version.to_owned(),
            });
        }
        offsets.h2_req = XNET_REQ;
        offsets.h2_wrote_header = XNET_WROTE_HEADER;
    }
    Ok(offsets)
}

/// `v0.26.0` → 26; pseudo-versions (`v0.0.0-2024…`) and v1+ → `None`.
fn xnet_minor(version: &str) -> Option<u64> {
    let mut parts = version.strip_prefix("v0.")?.splitn(2, '.');
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?;
    patch.bytes().all(|b| b.is_ascii_digit()).then_some(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_minor_has_an_entry() {
        for minor in GO_MINORS {
            let v = format!("go1.{minor}.3");
            let o = offsets_for(&v, H2Server::Bundled, None).unwrap();
            assert_eq!((o.h1_req, o.req_host), (8, 128), "{v}");
        }
    }

    #[test]
    fn unknown_versions_are_errors_not_guesses() {
        for v in ["go1.21.13", "go1.27.0", "go2.0", "devel go1.26-abc", "1.24"] {
            assert!(
                matches!(
                    offsets_for(v, H2Server::Bundled, None),
                    Err(SemanticError::UnsupportedGoVersion { .. })
                ),
                "{v}"
            );
        }
        for x in [
            "v0.17.0",
            "v0.57.0",
            "v0.0.0-20240101000000-abcdef",
            "v1.0.0",
        ] {
            assert!(
                matches!(
                    offsets_for("go1.22.4", H2Server::XNet, Some(x)),
                    Err(SemanticError::UnsupportedXNetVersion { .. })
                ),
                "{x}"
            );
        }
        assert!(matches!(
            offsets_for("go1.22.4", H2Server::XNet, None),
            Err(SemanticError::NoXNetVersion)
        ));
        let o = offsets_for("go1.22.4", H2Server::XNet, Some("v0.26.0")).unwrap();
        assert_eq!((o.h2_req, o.h2_wrote_header), (8, 80));
    }
}
