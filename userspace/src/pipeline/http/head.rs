//! The heads the parser yields (and the h2 decoder builds): what is kept of a request
//! or a response, inline so that parsing and keeping it pending does not allocate.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use super::probe_tag::ProbeRef;
use crate::hosts::Host;

/// More headers than this and the head is reported as [`ParseError::TooManyHeaders`].
pub const MAX_HEADERS: usize = 64;
/// How much of a response body is kept; the router-miss body is 19 bytes.
pub const MAX_BODY_PREFIX: usize = 64;
/// Longest reason phrase kept.
pub const MAX_REASON_LEN: usize = 32;
/// Longest header value kept; longer than any value the classifier compares with.
pub const MAX_VALUE_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    #[error("nothing captured")]
    Empty,
    #[error("data does not start with an HTTP/1.x message")]
    NotHttp,
    #[error("start line or headers are malformed")]
    Malformed,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("capture too short to hold a start line")]
    TooShort,
    #[error("bytes after a complete message are not HTTP")]
    TrailingGarbage,
}

impl ParseError {
    pub const ALL: [ParseError; 6] = [
        Self::Empty,
        Self::NotHttp,
        Self::Malformed,
        Self::TooManyHeaders,
        Self::TooShort,
        Self::TrailingGarbage,
    ];

    /// Label value for the parse-error counter.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::NotHttp => "not_http",
            Self::Malformed => "malformed",
            Self::TooManyHeaders => "too_many_headers",
            Self::TooShort => "too_short",
            Self::TrailingGarbage => "trailing_garbage",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Http10,
    Http11,
    /// Decoded from HTTP/2 frames (`h2`): no reason phrase, lowercase header names.
    H2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Connect,
    Trace,
    Other,
}

impl Method {
    pub(crate) fn from_token(token: &[u8]) -> Self {
        match token {
            b"GET" => Self::Get,
            b"HEAD" => Self::Head,
            b"POST" => Self::Post,
            b"PUT" => Self::Put,
            b"DELETE" => Self::Delete,
            b"OPTIONS" => Self::Options,
            b"PATCH" => Self::Patch,
            b"CONNECT" => Self::Connect,
            b"TRACE" => Self::Trace,
            _ => Self::Other,
        }
    }
}

/// Short header values and the reason phrase a response keeps, inline: no allocation per
/// parsed response.
pub type InlineStr<const N: usize> = arrayvec::ArrayString<N>;

/// The captured start of a response body, inline.
pub type InlineBytes<const N: usize> = arrayvec::ArrayVec<u8, N>;

/// Response header names in wire order, inline (at most [`MAX_HEADERS`], which is all the
/// parser accepts).
pub type HeaderList = arrayvec::ArrayVec<HeaderId, MAX_HEADERS>;

/// The longest prefix of `value` that fits in `N` bytes and is UTF-8 (header values are
/// bytes; a non-UTF-8 tail is dropped, which no comparison with the ASCII signatures can
/// miss).
pub fn cut_str<const N: usize>(value: &[u8]) -> InlineStr<N> {
    let mut v = &value[..value.len().min(N)];
    // Header values are nearly always ASCII, which is cheaper to check than UTF-8.
    if !v.is_ascii() {
        if let Err(e) = std::str::from_utf8(v) {
            v = &v[..e.valid_up_to()];
        }
    }
    let mut out = InlineStr::new();
    // Cannot fail: `v` is valid UTF-8 of at most N bytes.
    let _ = out.try_push_str(std::str::from_utf8(v).unwrap_or_default());
    out
}

/// The first `N` bytes of `b`.
pub fn cut_bytes<const N: usize>(b: &[u8]) -> InlineBytes<N> {
    let mut out = InlineBytes::new();
    // Cannot fail: at most N bytes.
    let _ = out.try_extend_from_slice(&b[..b.len().min(N)]);
    out
}

/// Process-wide key, so that target hashes cannot be precomputed by a client trying to make
/// a router miss look corroborated.
/// Seeded once per process: the hashes only pair messages within one agent, and
/// foldhash is a fraction of SipHash's cost on these short keys.
fn hash_state() -> &'static foldhash::quality::RandomState {
    static STATE: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    STATE.get_or_init(foldhash::quality::RandomState::default)
}

/// Keyed hash of `method SP request-target` (what was captured of it). Stable within the
/// process only.
pub fn target_hash(method: &[u8], target: &[u8]) -> u64 {
    let mut h = hash_state().build_hasher();
    h.write(method);
    h.write_u8(b' ');
    h.write(target);
    h.finish()
}

/// Keyed hash of a normalised host, for compact storage in correlation logs.
pub fn host_hash(host: &Host) -> u64 {
    let mut h = hash_state().build_hasher();
    match host {
        Host::Missing => h.write_u8(0),
        Host::Invalid => h.write_u8(1),
        Host::Name(n) => {
            h.write_u8(2);
            h.write(n.as_bytes());
        }
    }
    h.finish()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub version: Option<Version>,
    pub host: Host,
    /// `X-Forwarded-Host`, which Traefik sets on the requests it writes upstream; lets an
    /// upstream request be matched to its client request when the Host was rewritten.
    pub forwarded_host: Host,
    /// [`target_hash`] of method and request target.
    pub target: u64,
    /// `Upgrade: websocket` together with `Connection: upgrade`.
    pub websocket: bool,
    /// The User-Agent starts with [`PROBE_USER_AGENT_PREFIX`](super::PROBE_USER_AGENT_PREFIX).
    pub probe: bool,
    /// The tag of a probe User-Agent.
    pub probe_ref: ProbeRef,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// The head did not end inside the capture; only complete lines were used.
    pub truncated: bool,
}

/// Response header names the classifier cares about; every other name is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderId {
    ContentType,
    XContentTypeOptions,
    Date,
    ContentLength,
    Connection,
    TransferEncoding,
    Upgrade,
    Other,
}

impl HeaderId {
    pub(crate) fn from_name(name: &str) -> Self {
        // Dispatch on the length first: one comparison per header instead of seven.
        let (want, id) = match name.len() {
            4 => ("date", HeaderId::Date),
            7 => ("upgrade", HeaderId::Upgrade),
            10 => ("connection", HeaderId::Connection),
            12 => ("content-type", HeaderId::ContentType),
            14 => ("content-length", HeaderId::ContentLength),
            17 => ("transfer-encoding", HeaderId::TransferEncoding),
            22 => ("x-content-type-options", HeaderId::XContentTypeOptions),
            _ => return HeaderId::Other,
        };
        if name.eq_ignore_ascii_case(want) {
            id
        } else {
            HeaderId::Other
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub version: Version,
    pub status: u16,
    /// Reason phrase, cut to a few bytes; empty when missing or not text.
    pub reason: InlineStr<MAX_REASON_LEN>,
    /// Header names in wire order.
    pub headers: HeaderList,
    /// Value of the first `Content-Type`, cut to a few bytes.
    pub content_type: Option<InlineStr<MAX_VALUE_LEN>>,
    /// Value of the first `X-Content-Type-Options`, cut to a few bytes.
    pub x_content_type_options: Option<InlineStr<MAX_VALUE_LEN>>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// The captured start of the body (at most [`MAX_BODY_PREFIX`] bytes, never past
    /// `Content-Length`).
    pub body_prefix: InlineBytes<MAX_BODY_PREFIX>,
    pub truncated: bool,
}

impl ResponseHead {
    /// 1xx other than 101: an interim response, followed by the real one.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Responses that never carry a body, whatever their headers say (RFC 9112 §6.3).
    pub(super) fn bodyless(&self) -> bool {
        (100..200).contains(&self.status) || self.status == 204 || self.status == 304
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(RequestHead),
    Response(ResponseHead),
}
