//! HTTP/1.x head parsing of captured byte prefixes.
//!
//! The sensor hands us the first bytes (at most about 1 KiB) of one `read`/`write` on a
//! socket. Such a prefix may hold several pipelined messages, stop in the middle of a head,
//! or be anything at all (binary protocols, hostile clients). Parsing is best effort and never
//! panics: what could be read is returned, what could not is a typed [`ParseError`] that the
//! caller counts.
//!
//! Nothing here keeps a request path: a request target is reduced to a keyed hash that is
//! only good for matching a client request with the upstream request Traefik wrote for it.

use std::hash::{BuildHasher, Hasher};
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// More headers than this and the head is reported as [`ParseError::TooManyHeaders`].
pub const MAX_HEADERS: usize = 64;
/// How much of a response body is kept; the router-miss body is 19 bytes.
pub const MAX_BODY_PREFIX: usize = 64;
/// DNS names are at most 253 characters; anything longer is not a host we could label.
pub const MAX_HOST_LEN: usize = 253;
/// Longest reason phrase kept.
pub const MAX_REASON_LEN: usize = 32;
/// Longest header value kept; longer than any value the classifier compares with.
pub const MAX_VALUE_LEN: usize = 32;
/// Marker the active prober puts at the start of its User-Agent.
pub const PROBE_USER_AGENT_PREFIX: &[u8] = b"routeskew-probe/";

/// What the rest of a probe User-Agent says about the request. The agent's own requests
/// carry `routeskew-probe/<version> check/<16 hex digits>` (one probe check, matched
/// against the kernel's report of it) or `routeskew-probe/<version> housekeeping`
/// (endpoint and router-inventory requests, never counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProbeRef {
    /// No probe User-Agent, or one without a recognised tag (another agent's version).
    #[default]
    None,
    Check(u64),
    Housekeeping,
}

/// The User-Agent of a probe check.
pub fn probe_check_user_agent(version: &str, id: u64) -> String {
    format!("routeskew-probe/{version} check/{id:016x}")
}

/// The User-Agent of the agent's other requests to replicas.
pub fn probe_housekeeping_user_agent(version: &str) -> String {
    format!("routeskew-probe/{version} housekeeping")
}

/// Reads the tag of a User-Agent that starts with [`PROBE_USER_AGENT_PREFIX`].
pub fn probe_ref_of(user_agent: &[u8]) -> ProbeRef {
    let Some(rest) = user_agent.strip_prefix(PROBE_USER_AGENT_PREFIX) else {
        return ProbeRef::None;
    };
    let Some(pos) = rest.iter().position(|&b| b == b' ') else {
        return ProbeRef::None;
    };
    let tag = &rest[pos + 1..];
    if tag == b"housekeeping" {
        return ProbeRef::Housekeeping;
    }
    tag.strip_prefix(b"check/")
        .filter(|hex| hex.len() == 16)
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map_or(ProbeRef::None, ProbeRef::Check)
}

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

/// A normalised host name, stored inline when it is short (nearly always), so that parsing a
/// request and keeping it pending does not allocate.
#[derive(Clone)]
pub struct HostName(HostRepr);

/// Host names up to this long are kept inline; longer ones (up to [`MAX_HOST_LEN`]) go to
/// the heap.
const INLINE_HOST: usize = 62;

#[derive(Clone)]
enum HostRepr {
    Inline { len: u8, buf: [u8; INLINE_HOST] },
    Heap(Box<str>),
}

impl HostName {
    /// `s` lowercased; the caller has checked that it is ASCII.
    fn lowercase_ascii(s: &[u8]) -> Self {
        if s.len() <= INLINE_HOST {
            let mut buf = [0u8; INLINE_HOST];
            for (d, b) in buf.iter_mut().zip(s) {
                *d = b.to_ascii_lowercase();
            }
            HostName(HostRepr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            let lower: String = s
                .iter()
                .map(|b| char::from(b.to_ascii_lowercase()))
                .collect();
            HostName(HostRepr::Heap(lower.into_boxed_str()))
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Only built from a `&str` or from checked ASCII, cut at its own length.
            HostRepr::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or_default()
            }
            HostRepr::Heap(s) => s,
        }
    }

    /// The name's bytes, without the UTF-8 check [`as_str`](Self::as_str) makes: what
    /// comparisons and hashes on the per-event path use.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            HostRepr::Inline { len, buf } => &buf[..usize::from(*len)],
            HostRepr::Heap(s) => s.as_bytes(),
        }
    }
}

impl From<&str> for HostName {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE_HOST {
            let mut buf = [0u8; INLINE_HOST];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            HostName(HostRepr::Inline {
                len: s.len() as u8,
                buf,
            })
        } else {
            HostName(HostRepr::Heap(s.into()))
        }
    }
}

impl From<String> for HostName {
    fn from(s: String) -> Self {
        HostName::from(s.as_str())
    }
}

impl std::ops::Deref for HostName {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for HostName {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for HostName {}

impl std::hash::Hash for HostName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialEq<str> for HostName {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for HostName {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::fmt::Debug for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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

/// A request's Host, normalised so that it can be compared with configured host names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Missing,
    /// Present but not a plausible host name (too long, control characters, non-ASCII,
    /// repeated with different values, …). Never echoed anywhere.
    Invalid,
    Name(HostName),
}

impl Host {
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(n) => Some(n.as_str()),
            _ => None,
        }
    }
}

/// Normalise a Host header value (or configured host name): lowercase, port and trailing
/// dot stripped. Anything that is not a DNS name or an IP literal is [`Host::Invalid`].
pub fn normalize_host(raw: &[u8]) -> Host {
    let raw = raw.trim_ascii();
    if raw.is_empty() {
        return Host::Missing;
    }
    if raw.len() > MAX_HOST_LEN + 8 {
        return Host::Invalid;
    }
    let host = if raw[0] == b'[' {
        // IPv6 literal, `[::1]` or `[::1]:8080`.
        let Some(close) = raw.iter().position(|&b| b == b']') else {
            return Host::Invalid;
        };
        let (lit, rest) = raw.split_at(close + 1);
        if !valid_port_suffix(rest) || lit.len() < 3 {
            return Host::Invalid;
        }
        if !lit[1..lit.len() - 1]
            .iter()
            .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        {
            return Host::Invalid;
        }
        lit
    } else {
        let (name, rest) = match raw.iter().position(|&b| b == b':') {
            Some(i) => raw.split_at(i),
            None => (raw, &[][..]),
        };
        if !valid_port_suffix(rest) {
            return Host::Invalid;
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        if name.is_empty() || name.len() > MAX_HOST_LEN {
            return Host::Invalid;
        }
        // One pass: letters, digits, `-`, `_` and dots, no leading dot, no empty label.
        let mut after_dot = true;
        for &b in name {
            match HOST_BYTE[usize::from(b)] {
                HostByte::Dot if after_dot => return Host::Invalid,
                HostByte::Dot => after_dot = true,
                HostByte::Label => after_dot = false,
                HostByte::Bad => return Host::Invalid,
            }
        }
        name
    };
    // Only ASCII survives the checks above.
    Host::Name(HostName::lowercase_ascii(host))
}

#[derive(Clone, Copy)]
enum HostByte {
    Bad,
    Dot,
    Label,
}

/// What each byte may be in a host name: a table lookup instead of a chain of tests.
static HOST_BYTE: [HostByte; 256] = {
    let mut t = [HostByte::Bad; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            t[b] = HostByte::Label;
        }
        b += 1;
    }
    t[b'.' as usize] = HostByte::Dot;
    t
};

fn valid_port_suffix(rest: &[u8]) -> bool {
    match rest {
        [] => true,
        [b':', digits @ ..] => {
            !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
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
    /// The User-Agent starts with [`PROBE_USER_AGENT_PREFIX`].
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

/// Request header names the parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestHeader {
    Host,
    XForwardedHost,
    Upgrade,
    Connection,
    UserAgent,
    ContentLength,
    TransferEncoding,
    Other,
}

impl RequestHeader {
    fn from_name(name: &str) -> Self {
        let (want, id) = match name.len() {
            4 => ("host", Self::Host),
            7 => ("upgrade", Self::Upgrade),
            10 if name.as_bytes()[0].eq_ignore_ascii_case(&b'c') => {
                ("connection", Self::Connection)
            }
            10 => ("user-agent", Self::UserAgent),
            14 => ("content-length", Self::ContentLength),
            16 => ("x-forwarded-host", Self::XForwardedHost),
            17 => ("transfer-encoding", Self::TransferEncoding),
            _ => return Self::Other,
        };
        if name.eq_ignore_ascii_case(want) {
            id
        } else {
            Self::Other
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
    fn bodyless(&self) -> bool {
        (100..200).contains(&self.status) || self.status == 204 || self.status == 304
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(RequestHead),
    Response(ResponseHead),
}

/// What follows the last parsed message, i.e. how to read the next syscall on the same
/// connection in the same direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The syscall ended exactly after a message: the next one starts a message.
    Complete,
    /// This many body bytes arrive in later syscalls before the next message.
    Body(u64),
    /// Chunked body: its end is not known.
    Chunked,
    /// Body delimited by connection close (response without length).
    UntilClose,
    /// The syscall ended inside a head; its remaining lines arrive next.
    HeadIncomplete,
    /// The capture stopped before the syscall's end; what followed is unknown.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub messages: Vec<Message>,
    pub tail: Tail,
    /// Set when bytes after at least one good message could not be parsed.
    pub error: Option<ParseError>,
    /// With [`Tail::HeadIncomplete`]: where the incomplete (last) message starts, so that
    /// the caller can join it with the next syscall.
    pub incomplete_at: Option<usize>,
    /// Whether that incomplete message is the last of `messages` (false when it was too
    /// short to yield anything).
    pub incomplete_parsed: bool,
}

/// Does this look like the start of an HTTP/1.x response?
pub fn looks_like_response_start(b: &[u8]) -> bool {
    let n = b.len().min(7);
    n > 0 && b[..n] == b"HTTP/1."[..n]
}

/// Does this look like the start of an HTTP/1.x request (`TOKEN SP`)? WebSocket frames can
/// never start like this: an ASCII letter as first byte is a frame with a reserved opcode.
pub fn looks_like_request_start(b: &[u8]) -> bool {
    match b.iter().position(|&c| c == b' ') {
        Some(sp) => (1..=16).contains(&sp) && b[..sp].iter().all(|c| c.is_ascii_uppercase()),
        None => !b.is_empty() && b.len() <= 16 && b.iter().all(|c| c.is_ascii_uppercase()),
    }
}

pub fn looks_like_message_start(b: &[u8]) -> bool {
    looks_like_response_start(b) || looks_like_request_start(b)
}

/// Parse a captured prefix `bytes` of a syscall that transferred `total_len` bytes.
pub fn parse(bytes: &[u8], total_len: u64) -> Result<Parsed, ParseError> {
    let mut messages = Vec::new();
    let o = parse_into(bytes, total_len, &mut messages)?;
    Ok(Parsed {
        messages,
        tail: o.tail,
        error: o.error,
        incomplete_at: o.incomplete_at,
        incomplete_parsed: o.incomplete_parsed,
    })
}

/// [`Parsed`] without its messages: what [`parse_into`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOutcome {
    pub tail: Tail,
    pub error: Option<ParseError>,
    pub incomplete_at: Option<usize>,
    pub incomplete_parsed: bool,
}

/// [`parse`], appending the messages to `messages` so that a caller parsing one capture after
/// another reuses one buffer instead of allocating a vector each time. On error nothing was
/// appended.
pub fn parse_into(
    bytes: &[u8],
    total_len: u64,
    messages: &mut Vec<Message>,
) -> Result<ParseOutcome, ParseError> {
    let start = messages.len();
    let r = parse_inner(bytes, total_len, messages);
    if r.is_err() {
        messages.truncate(start);
    }
    r
}

fn parse_inner(
    bytes: &[u8],
    total_len: u64,
    messages: &mut Vec<Message>,
) -> Result<ParseOutcome, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let captured = bytes.len();
    let total = total_len.max(captured as u64);
    let responses = looks_like_response_start(bytes);
    if !responses && !looks_like_request_start(bytes) {
        return Err(ParseError::NotHttp);
    }
    let first = messages.len();
    let mut incomplete_at = None;
    let mut pos = 0usize;
    let tail = loop {
        let rest = &bytes[pos..];
        let at_end_of_capture = |p: usize| {
            if p < captured {
                None
            } else if captured as u64 == total {
                Some(Tail::Complete)
            } else {
                Some(Tail::Unknown)
            }
        };
        let step = if responses {
            parse_response_at(rest)
        } else {
            parse_request_at(rest)
        };
        let (msg, head_len) = match step {
            Ok(x) => x,
            Err(e) if messages.len() == first => return Err(e),
            // The next message was cut within its first bytes: not garbage, just short.
            Err(ParseError::TooShort) => {
                let split = captured as u64 == total;
                return Ok(ParseOutcome {
                    tail: if split {
                        Tail::HeadIncomplete
                    } else {
                        Tail::Unknown
                    },
                    error: None,
                    incomplete_at: split.then_some(pos),
                    incomplete_parsed: false,
                });
            }
            Err(_) => {
                return Ok(ParseOutcome {
                    tail: Tail::Unknown,
                    error: Some(ParseError::TrailingGarbage),
                    incomplete_at: None,
                    incomplete_parsed: false,
                })
            }
        };
        let Some(head_len) = head_len else {
            messages.push(msg);
            if captured as u64 == total {
                incomplete_at = Some(pos);
                break Tail::HeadIncomplete;
            }
            break Tail::Unknown;
        };
        let body_start = pos + head_len;
        let body_len = match &msg {
            Message::Request(r) if r.chunked => None,
            Message::Request(r) => Some(r.content_length.unwrap_or(0)),
            Message::Response(r) if r.bodyless() => Some(0),
            Message::Response(r) if r.chunked => None,
            Message::Response(r) => match r.content_length {
                // A response to HEAD carries the length of the body it does not send. The
                // parser does not know the request, so it trusts what the bytes show: a
                // new status line right after the head means no body was sent.
                Some(_) if looks_like_response_start(&bytes[body_start..]) => Some(0),
                Some(n) => Some(n),
                None => {
                    messages.push(msg);
                    break Tail::UntilClose;
                }
            },
        };
        let mut msg = msg;
        if let Message::Response(r) = &mut msg {
            let want = body_len.unwrap_or(0).min(MAX_BODY_PREFIX as u64) as usize;
            let avail = captured - body_start;
            r.body_prefix = cut_bytes(&bytes[body_start..body_start + want.min(avail)]);
        }
        let switched = matches!(&msg, Message::Response(r) if r.status == 101);
        messages.push(msg);
        if switched {
            // After 101 the connection speaks another protocol (WebSocket frames).
            break if captured as u64 == total && body_start == captured {
                Tail::Complete
            } else {
                Tail::Unknown
            };
        }
        let Some(body_len) = body_len else {
            break Tail::Chunked;
        };
        let body_end = body_start as u64 + body_len;
        if body_end > total {
            break Tail::Body(body_end - total);
        }
        if body_end >= captured as u64 {
            break if body_end == total {
                Tail::Complete
            } else {
                Tail::Unknown
            };
        }
        // body_end < captured, so it fits in usize.
        pos = body_end as usize;
        if let Some(t) = at_end_of_capture(pos) {
            break t;
        }
    };
    Ok(ParseOutcome {
        tail,
        error: None,
        incomplete_parsed: incomplete_at.is_some(),
        incomplete_at,
    })
}

/// Cut `buf` after its last complete line and terminate the head there, so that httparse
/// can read the lines of a truncated head.
fn complete_lines(buf: &[u8]) -> Option<Vec<u8>> {
    let last_lf = buf.iter().rposition(|&b| b == b'\n')?;
    let mut v = Vec::with_capacity(last_lf + 3);
    v.extend_from_slice(&buf[..=last_lf]);
    v.extend_from_slice(b"\r\n");
    Some(v)
}

/// Header slots for httparse, left uninitialised: it initialises the ones it fills, and
/// initialising all of them first would cost more than parsing a short head.
fn header_slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

fn map_err(e: httparse::Error) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
        _ => ParseError::Malformed,
    }
}

fn parse_content_length(value: &[u8], current: Option<u64>) -> Result<Option<u64>, ParseError> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Malformed);
    }
    let n = std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(ParseError::Malformed)?;
    match current {
        Some(c) if c != n => Err(ParseError::Malformed),
        _ => Ok(Some(n)),
    }
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn is_chunked(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .next_back()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn version_of(minor: Option<u8>) -> Option<Version> {
    match minor {
        Some(0) => Some(Version::Http10),
        Some(1) => Some(Version::Http11),
        _ => None,
    }
}

/// Host of an absolute-form target (`http://host/path`), which takes precedence over the
/// Host header (RFC 9112 §3.2.2).
fn absolute_form_host(target: &[u8]) -> Option<&[u8]> {
    let lower = |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
    let rest = if lower(b"http://") {
        &target[7..]
    } else if lower(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Parse one request head at the start of `buf`. Returns the head and, when the head ended
/// inside `buf`, its length.
fn parse_request_at(buf: &[u8]) -> Result<(Message, Option<usize>), ParseError> {
    let mut headers = header_slots();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => {
            Ok((Message::Request(request_from(&req, false)), Some(n)))
        }
        Ok(httparse::Status::Partial) => {
            let patched = complete_lines(buf);
            let mut headers = header_slots();
            let mut req = httparse::Request::new(&mut []);
            match patched
                .as_deref()
                .map(|p| req.parse_with_uninit_headers(p, &mut headers))
            {
                Some(Ok(httparse::Status::Complete(_))) => {
                    Ok((Message::Request(request_from(&req, true)), None))
                }
                // No complete line at all, or the last complete line is unusable: fall back
                // to the request line alone.
                Some(Ok(httparse::Status::Partial)) | None => {
                    request_line_only(buf, true).map(|r| (Message::Request(r), None))
                }
                Some(Err(e)) => Err(map_err(e)),
            }
        }
        Err(
            e @ (httparse::Error::HeaderName
            | httparse::Error::HeaderValue
            | httparse::Error::NewLine),
        ) if buf.contains(&b'\n') => {
            // The request line was fine but a header was not (control characters in a Host,
            // say). The server will answer it (400), so keep it in the pipeline with an
            // invalid Host instead of losing the pairing; the caller counts the malformed
            // head through `RequestHead::host`.
            let _ = e;
            let mut r = request_line_only(buf, false)?;
            r.host = Host::Invalid;
            let head_end = find_head_end(buf);
            r.truncated = head_end.is_none();
            Ok((Message::Request(r), head_end))
        }
        Err(e) => Err(map_err(e)),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// A request whose line was all that could be read (cut by the capture, or followed by
/// malformed headers).
fn request_line_only(buf: &[u8], truncated: bool) -> Result<RequestHead, ParseError> {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return Err(ParseError::Malformed);
    }
    let Some(target) = parts.next().filter(|t| !t.is_empty()) else {
        return Err(ParseError::TooShort);
    };
    if target.iter().any(|b| b.is_ascii_control()) {
        return Err(ParseError::Malformed);
    }
    let version = match parts.next() {
        Some(b"HTTP/1.1") => Some(Version::Http11),
        Some(b"HTTP/1.0") => Some(Version::Http10),
        Some(v) if truncated && b"HTTP/1.1".starts_with(v) => None,
        None => None,
        Some(_) => return Err(ParseError::Malformed),
    };
    Ok(RequestHead {
        method: Method::from_token(method),
        version,
        host: absolute_form_host(target).map_or(Host::Missing, normalize_host),
        forwarded_host: Host::Missing,
        target: target_hash(method, target),
        websocket: false,
        probe: false,
        probe_ref: ProbeRef::None,
        content_length: None,
        chunked: false,
        truncated,
    })
}

fn request_from(req: &httparse::Request<'_, '_>, truncated: bool) -> RequestHead {
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let mut host: Option<Host> = absolute_form_host(target.as_bytes()).map(normalize_host);
    let from_uri = host.is_some();
    let mut forwarded_host = Host::Missing;
    // The raw value `host` is the normalisation of, if any.
    let mut host_raw: Option<&[u8]> = None;
    let mut upgrade_ws = false;
    let mut connection_upgrade = false;
    let mut probe = false;
    let mut probe_ref = ProbeRef::None;
    let mut content_length = None;
    let mut chunked = false;
    let mut bad_framing = false;
    for h in req.headers.iter() {
        match RequestHeader::from_name(h.name) {
            RequestHeader::Host => {
                if from_uri {
                    continue;
                }
                let v = normalize_host(h.value);
                // Several Host headers are a smuggling attempt unless they all agree.
                let agrees = host.as_ref().is_none_or(|prev| *prev == v);
                host_raw = agrees.then_some(h.value);
                host = Some(if agrees { v } else { Host::Invalid });
            }
            RequestHeader::XForwardedHost => {
                // A list when several proxies were crossed: the first is the client's.
                let first = h.value.split(|&b| b == b',').next().unwrap_or_default();
                // Traefik repeats the Host it forwards: reuse its normalisation.
                forwarded_host = match (host_raw, &host) {
                    (Some(raw), Some(h)) if raw == first => h.clone(),
                    _ => normalize_host(first),
                };
            }
            RequestHeader::Upgrade => upgrade_ws |= has_token(h.value, "websocket"),
            RequestHeader::Connection => connection_upgrade |= has_token(h.value, "upgrade"),
            RequestHeader::UserAgent => {
                probe = h.value.starts_with(PROBE_USER_AGENT_PREFIX);
                probe_ref = probe_ref_of(h.value);
            }
            RequestHeader::ContentLength => match parse_content_length(h.value, content_length) {
                Ok(n) => content_length = n,
                Err(_) => bad_framing = true,
            },
            RequestHeader::TransferEncoding => chunked = is_chunked(h.value),
            RequestHeader::Other => {}
        }
    }
    if bad_framing {
        // The server rejects such a request without reading a body.
        content_length = None;
    }
    RequestHead {
        method: Method::from_token(method.as_bytes()),
        version: version_of(req.version),
        host: host.unwrap_or(Host::Missing),
        forwarded_host,
        target: target_hash(method.as_bytes(), target.as_bytes()),
        websocket: upgrade_ws && connection_upgrade,
        probe,
        probe_ref,
        content_length,
        chunked,
        truncated,
    }
}

fn parse_response_at(buf: &[u8]) -> Result<(Message, Option<usize>), ParseError> {
    let mut headers = header_slots();
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => {
            Ok((Message::Response(response_from(&resp, false)?), Some(n)))
        }
        Ok(httparse::Status::Partial) => {
            let patched = complete_lines(buf);
            let mut headers = header_slots();
            let mut resp = httparse::Response::new(&mut []);
            match patched.as_deref().map(|p| {
                httparse::ParserConfig::default().parse_response_with_uninit_headers(
                    &mut resp,
                    p,
                    &mut headers,
                )
            }) {
                Some(Ok(httparse::Status::Complete(_))) => {
                    Ok((Message::Response(response_from(&resp, true)?), None))
                }
                Some(Ok(httparse::Status::Partial)) | None => {
                    status_line_only(buf).map(|r| (Message::Response(r), None))
                }
                Some(Err(e)) => Err(map_err(e)),
            }
        }
        Err(e) => Err(map_err(e)),
    }
}

/// A response of which only (part of) the status line was captured.
fn status_line_only(buf: &[u8]) -> Result<ResponseHead, ParseError> {
    if buf.len() < 12 {
        return Err(ParseError::TooShort);
    }
    let version = match &buf[..9] {
        b"HTTP/1.1 " => Version::Http11,
        b"HTTP/1.0 " => Version::Http10,
        _ => return Err(ParseError::Malformed),
    };
    let code = &buf[9..12];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Malformed);
    }
    let status = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    Ok(ResponseHead {
        version,
        status,
        reason: InlineStr::new(),
        headers: HeaderList::new(),
        content_type: None,
        x_content_type_options: None,
        content_length: None,
        chunked: false,
        body_prefix: InlineBytes::new(),
        truncated: true,
    })
}

fn response_from(
    resp: &httparse::Response<'_, '_>,
    truncated: bool,
) -> Result<ResponseHead, ParseError> {
    let version = version_of(resp.version).ok_or(ParseError::Malformed)?;
    let status = resp.code.ok_or(ParseError::Malformed)?;
    let reason = resp.reason.unwrap_or_default();
    let mut out = ResponseHead {
        version,
        status,
        reason: cut_str(reason.as_bytes()),
        headers: HeaderList::new(),
        content_type: None,
        x_content_type_options: None,
        content_length: None,
        chunked: false,
        body_prefix: InlineBytes::new(),
        truncated,
    };
    for h in resp.headers.iter() {
        let id = HeaderId::from_name(h.name);
        // The parser never hands over more than MAX_HEADERS.
        let _ = out.headers.try_push(id);
        match id {
            HeaderId::ContentType if out.content_type.is_none() => {
                out.content_type = Some(cut_str(h.value));
            }
            HeaderId::XContentTypeOptions if out.x_content_type_options.is_none() => {
                out.x_content_type_options = Some(cut_str(h.value));
            }
            HeaderId::ContentLength => {
                out.content_length = parse_content_length(h.value, out.content_length)?;
            }
            HeaderId::TransferEncoding => out.chunked = is_chunked(h.value),
            _ => {}
        }
    }
    if out.chunked {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
        out.content_length = None;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn parse_all(b: &[u8]) -> Parsed {
        parse(b, b.len() as u64).unwrap()
    }

    fn one_response(b: &[u8]) -> ResponseHead {
        let p = parse_all(b);
        assert_eq!(p.messages.len(), 1, "{p:?}");
        match p.messages.into_iter().next().unwrap() {
            Message::Response(r) => r,
            m => panic!("not a response: {m:?}"),
        }
    }

    fn one_request(b: &[u8]) -> RequestHead {
        let p = parse_all(b);
        assert_eq!(p.messages.len(), 1, "{p:?}");
        match p.messages.into_iter().next().unwrap() {
            Message::Request(r) => r,
            m => panic!("not a request: {m:?}"),
        }
    }

    use HeaderId::*;

    #[test]
    fn traefik_router_miss_fixture() {
        let r = one_response(&fixture("traefik_router_miss_404_keepalive.bin"));
        assert_eq!(r.status, 404);
        assert_eq!(r.version, Version::Http11);
        assert_eq!(r.reason.as_str(), "Not Found");
        assert_eq!(
            r.headers.as_slice(),
            [ContentType, XContentTypeOptions, Date, ContentLength]
        );
        assert_eq!(r.content_type.as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(r.x_content_type_options.as_deref(), Some("nosniff"));
        assert_eq!(r.content_length, Some(19));
        assert_eq!(r.body_prefix.as_slice(), b"404 page not found\n");
        assert!(!r.truncated);
    }

    #[test]
    fn relayed_404s_have_sorted_headers() {
        let r = one_response(&fixture("traefik_relayed_go_notfound_404.bin"));
        assert_eq!(
            r.headers.as_slice(),
            [
                ContentLength,
                ContentType,
                Date,
                XContentTypeOptions,
                Connection
            ]
        );
        let r = one_response(&fixture("traefik_relayed_backend_404.bin"));
        assert_eq!(
            r.headers.as_slice(),
            [ContentLength, ContentType, Date, Connection]
        );
        assert_eq!(r.body_prefix.as_slice(), br#"{"error":"no such item"}"#);
    }

    #[test]
    fn chunked_response_stops_at_body() {
        let b = fixture("traefik_relayed_chunked_200.bin");
        let p = parse_all(&b);
        assert_eq!(p.tail, Tail::Chunked);
        let Message::Response(r) = &p.messages[0] else {
            panic!()
        };
        assert!(r.chunked);
        assert_eq!(r.content_length, None);
        assert!(r.body_prefix.is_empty());
    }

    #[test]
    fn upgrade_request_and_101() {
        let req = one_request(&fixture("traefik_ws_upgrade_101.req.bin"));
        assert!(req.websocket);
        assert_eq!(req.host, Host::Name("app.example.test".into()));
        assert!(!req.probe);
        let b = fixture("traefik_ws_upgrade_101.bin");
        // Captured at the client: the 101 head followed by the first frame; the parser must
        // not take the frame for a body.
        let p = parse(&b, b.len() as u64).unwrap();
        let Message::Response(r) = &p.messages[0] else {
            panic!()
        };
        assert_eq!(r.status, 101);
        assert_eq!(p.messages.len(), 1);
    }

    #[test]
    fn upstream_request_written_by_traefik() {
        let r = one_request(&fixture("traefik_upstream_request.bin"));
        assert_eq!(r.host, Host::Name("rec.example.test".into()));
        assert_eq!(r.forwarded_host, Host::Name("rec.example.test".into()));
        assert!(r.probe);
        // Same method and path as the client's request: same hash.
        let client = one_request(&fixture("traefik_rec_200.req.bin"));
        assert_eq!(client.target, r.target);
        assert_ne!(client.target, target_hash(b"GET", b"/api/items?id=8"));
    }

    #[test]
    fn http10_and_head_variants() {
        let r = one_response(&fixture("traefik_router_miss_404_http10.bin"));
        assert_eq!(r.version, Version::Http10);
        let r = one_response(&fixture("traefik_router_miss_404_head.bin"));
        assert_eq!(r.content_length, Some(19));
        assert!(r.body_prefix.is_empty());
        let req = one_request(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(req.version, Some(Version::Http10));
        assert_eq!(req.host, Host::Missing);
    }

    #[test]
    fn pipelined_responses_from_traefik() {
        let p = parse_all(&fixture("traefik_pipelined_miss_then_ok.bin"));
        let statuses: Vec<u16> = p
            .messages
            .iter()
            .map(|m| match m {
                Message::Response(r) => r.status,
                Message::Request(_) => 0,
            })
            .collect();
        assert_eq!(statuses, vec![404, 200]);
        assert_eq!(p.tail, Tail::Complete);
    }

    #[test]
    fn pipelined_requests_skip_bodies() {
        let b = b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: b.test\r\n\r\nGET /c HTTP/1.1\r\nHost: c.test\r\n\r\n";
        let p = parse_all(b);
        let hosts: Vec<_> = p
            .messages
            .iter()
            .map(|m| match m {
                Message::Request(r) => r.host.name().unwrap().to_string(),
                Message::Response(_) => String::new(),
            })
            .collect();
        assert_eq!(hosts, ["a.test", "b.test", "c.test"]);
        assert_eq!(p.tail, Tail::Complete);
    }

    #[test]
    fn body_running_past_capture() {
        let b = b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nhello";
        // The syscall moved 60 bytes of body beyond what was captured.
        let p = parse(b, b.len() as u64 + 60).unwrap();
        assert_eq!(p.tail, Tail::Body(100 - 5 - 60));
        let p = parse(b, b.len() as u64 + 95).unwrap();
        assert_eq!(p.tail, Tail::Complete);
        let p = parse(b, b.len() as u64 + 200).unwrap();
        assert_eq!(p.tail, Tail::Unknown);
    }

    #[test]
    fn stops_at_chunked_request_body() {
        let b = b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: b.test\r\n\r\n";
        let p = parse_all(b);
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.tail, Tail::Chunked);
    }

    #[test]
    fn truncated_heads_keep_complete_lines() {
        let full = b"GET /ws HTTP/1.1\r\nHost: app.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nUser-Agent: routeskew-probe/1\r\n\r\n";
        for cut_at in 1..full.len() - 1 {
            let b = &full[..cut_at];
            // Cut by the capture: the syscall moved the whole head.
            match parse(b, full.len() as u64) {
                Ok(p) => {
                    let Message::Request(r) = &p.messages[0] else {
                        panic!()
                    };
                    assert!(r.truncated, "cut at {cut_at}");
                    assert_eq!(p.tail, Tail::Unknown);
                    let host_line_end = 18 + "Host: app.example.test\r\n".len();
                    if cut_at >= host_line_end {
                        assert_eq!(r.host.name(), Some("app.example.test"), "cut at {cut_at}");
                    } else {
                        assert_eq!(r.host, Host::Missing, "cut at {cut_at}");
                    }
                    let ws_line_end = full
                        .windows(21)
                        .position(|w| w == b"Connection: Upgrade\r\n")
                        .unwrap()
                        + 21;
                    assert_eq!(r.websocket, cut_at >= ws_line_end, "cut at {cut_at}");
                }
                Err(e) => {
                    assert!(cut_at < 5, "cut at {cut_at}: {e}");
                    assert_eq!(e, ParseError::TooShort);
                }
            }
            // Ended by the syscall: the rest of the head comes in the next one.
            if let Ok(p) = parse(b, b.len() as u64) {
                assert_eq!(p.tail, Tail::HeadIncomplete);
                assert_eq!(p.incomplete_at, Some(0));
                assert!(p.incomplete_parsed);
            }
        }
        let resp = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Cont";
        let r = one_response(resp);
        assert!(r.truncated);
        assert_eq!(r.headers.as_slice(), [ContentType]);
        let r = one_response(b"HTTP/1.1 404 No");
        assert_eq!(r.status, 404);
        assert!(r.truncated);
        assert_eq!(parse(b"HTTP/1.1 40", 11), Err(ParseError::TooShort));
    }

    #[test]
    fn garbage_and_binary() {
        assert_eq!(parse(b"", 0), Err(ParseError::Empty));
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00", 7),
            Err(ParseError::NotHttp)
        );
        assert_eq!(
            parse(&[0x81, 0x02, b'h', b'i'], 4),
            Err(ParseError::NotHttp)
        );
        assert_eq!(parse(b"hello world\r\n", 13), Err(ParseError::NotHttp));
        assert_eq!(
            parse(b"GET\x00/ HTTP/1.1\r\n\r\n", 18),
            Err(ParseError::NotHttp)
        );
        assert_eq!(
            parse(b"HTTP/1.1 abc OK\r\n\r\n", 19),
            Err(ParseError::Malformed)
        );
        assert_eq!(
            parse(b"HTTP/1.9 200 OK\r\n\r\n", 19),
            Err(ParseError::Malformed)
        );
        let many: Vec<u8> = std::iter::once(b"HTTP/1.1 200 OK\r\n".to_vec())
            .chain((0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n").into_bytes()))
            .chain(std::iter::once(b"\r\n".to_vec()))
            .flatten()
            .collect();
        assert_eq!(
            parse(&many, many.len() as u64),
            Err(ParseError::TooManyHeaders)
        );
        // Deterministic pseudo-random junk must never panic.
        let mut x: u32 = 0x1234_5678;
        for len in 0..600 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse(&junk, len as u64 + 3);
            let mut prefixed = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
            prefixed.extend_from_slice(&junk);
            let _ = parse(&prefixed, prefixed.len() as u64);
            let mut prefixed = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n".to_vec();
            prefixed.extend_from_slice(&junk);
            let _ = parse(&prefixed, prefixed.len() as u64);
        }
    }

    #[test]
    fn next_message_cut_in_its_first_bytes() {
        let b = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGE";
        let p = parse(b, b.len() as u64).unwrap();
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.error, None);
        assert_eq!(p.tail, Tail::HeadIncomplete);
        assert_eq!(p.incomplete_at, Some(b.len() - 2));
        assert!(!p.incomplete_parsed);
        let p = parse(b, b.len() as u64 + 100).unwrap();
        assert_eq!((p.tail, p.error), (Tail::Unknown, None));
    }

    #[test]
    fn trailing_garbage_after_a_message() {
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 2xx\r\n\r\n";
        let p = parse_all(b);
        assert_eq!(p.messages.len(), 1);
        assert_eq!(p.error, Some(ParseError::TrailingGarbage));
    }

    #[test]
    fn host_normalisation() {
        let h = |s: &[u8]| normalize_host(s);
        assert_eq!(
            h(b"App.Example.TEST"),
            Host::Name("app.example.test".into())
        );
        assert_eq!(
            h(b"app.example.test:8443"),
            Host::Name("app.example.test".into())
        );
        assert_eq!(
            h(b"app.example.test.:80"),
            Host::Name("app.example.test".into())
        );
        assert_eq!(h(b"[::1]:8080"), Host::Name("[::1]".into()));
        assert_eq!(h(b"10.0.0.1"), Host::Name("10.0.0.1".into()));
        assert_eq!(h(b"  "), Host::Missing);
        for bad in [
            &b"a:b"[..],
            b"a.test:",
            b"a.test:123456",
            b"a..test",
            b".",
            b"[zz]",
            b"[::1",
            b"a/b",
            b"a test",
            "caf\u{e9}.test".as_bytes(),
            "xn--caf-dma.test\u{202e}".as_bytes(),
            b"a\x01b",
        ] {
            assert_eq!(h(bad), Host::Invalid, "{bad:?}");
        }
        let long = vec![b'a'; MAX_HOST_LEN + 1];
        assert_eq!(h(&long), Host::Invalid);
        let ok = vec![b'a'; MAX_HOST_LEN];
        assert!(matches!(h(&ok), Host::Name(_)));
    }

    /// The normalisation as first written (allocating, several passes): the one-pass
    /// version must agree with it on everything.
    fn reference_normalize_host(raw: &[u8]) -> Option<Option<String>> {
        let raw = raw.trim_ascii();
        if raw.is_empty() {
            return None;
        }
        if raw.len() > MAX_HOST_LEN + 8 {
            return Some(None);
        }
        let host = if raw[0] == b'[' {
            let Some(close) = raw.iter().position(|&b| b == b']') else {
                return Some(None);
            };
            let (lit, rest) = raw.split_at(close + 1);
            if !valid_port_suffix(rest) || lit.len() < 3 {
                return Some(None);
            }
            if !lit[1..lit.len() - 1]
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
            {
                return Some(None);
            }
            lit
        } else {
            let (name, rest) = match raw.iter().position(|&b| b == b':') {
                Some(i) => raw.split_at(i),
                None => (raw, &[][..]),
            };
            if !valid_port_suffix(rest) {
                return Some(None);
            }
            let name = name.strip_suffix(b".").unwrap_or(name);
            if name.is_empty()
                || name.len() > MAX_HOST_LEN
                || name.starts_with(b".")
                || name.windows(2).any(|w| w == b"..")
                || !name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return Some(None);
            }
            name
        };
        Some(std::str::from_utf8(host).ok().map(str::to_ascii_lowercase))
    }

    #[test]
    fn host_normalisation_matches_reference() {
        let alphabet: &[u8] = b"aZ09.-_:[]f: \t\x01\xc3\xa9/";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut inputs: Vec<Vec<u8>> = vec![
            b"a..".to_vec(),
            b"..".to_vec(),
            b"A.B.".to_vec(),
            b"[::1]:80".to_vec(),
            vec![b'A'; 70],
            vec![b'a'; MAX_HOST_LEN + 1],
        ];
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            inputs.push(
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
            );
        }
        for raw in inputs {
            let want = reference_normalize_host(&raw);
            let got = match normalize_host(&raw) {
                Host::Missing => None,
                Host::Invalid => Some(None),
                Host::Name(n) => Some(Some(n.as_str().to_string())),
            };
            assert_eq!(got, want, "{raw:?}");
        }
    }

    #[test]
    fn forwarded_host_reuses_the_host_only_when_it_is_its_normalisation() {
        let r = one_request(
            b"GET / HTTP/1.1\r\nHost: A.test:80\r\nX-Forwarded-Host: A.test:80\r\n\r\n",
        );
        assert_eq!(r.host, Host::Name("a.test".into()));
        assert_eq!(r.forwarded_host, Host::Name("a.test".into()));
        // Conflicting Host headers make the Host invalid, not the forwarded one.
        let r = one_request(
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nX-Forwarded-Host: b.test\r\n\r\n",
        );
        assert_eq!(r.host, Host::Invalid);
        assert_eq!(r.forwarded_host, Host::Name("b.test".into()));
        let r = one_request(
            b"GET / HTTP/1.1\r\nX-Forwarded-Host: c.test, d.test\r\nHost: a.test\r\n\r\n",
        );
        assert_eq!(r.forwarded_host, Host::Name("c.test".into()));
        // Long names go to the heap and still compare by value.
        let long = format!("{}.test", "x".repeat(100));
        let r = one_request(format!("GET / HTTP/1.1\r\nHost: {long}\r\n\r\n").as_bytes());
        assert_eq!(r.host.name(), Some(long.as_str()));
        assert_eq!(r.host, Host::Name(long.as_str().into()));
    }

    #[test]
    fn inline_values_cut_at_character_boundaries() {
        let v = cut_str::<4>("ab\u{e9}".as_bytes());
        assert_eq!(v.as_str(), "ab\u{e9}");
        // A multi-byte character across the limit is dropped, not split.
        let v = cut_str::<3>("ab\u{e9}".as_bytes());
        assert_eq!(v.as_str(), "ab");
        let v = cut_str::<8>(b"ok\xff\xfe");
        assert_eq!(v.as_str(), "ok");
        let b = cut_bytes::<4>(b"404 page");
        assert_eq!(b.as_slice(), b"404 ");
    }

    #[test]
    fn hostile_host_headers_in_requests() {
        // Control character: httparse rejects the header; the request still counts, with an
        // invalid host, so that the server's 400 pairs with it.
        let r = one_request(b"GET / HTTP/1.1\r\nHost: a\x01b.test\r\n\r\n");
        assert_eq!(r.host, Host::Invalid);
        assert!(!r.truncated);
        let r = one_request(
            "GET / HTTP/1.1\r\nHost: \u{441}\u{430}\u{439}\u{442}.test\r\n\r\n".as_bytes(),
        );
        assert_eq!(r.host, Host::Invalid);
        let long = format!("GET / HTTP/1.1\r\nHost: {}.test\r\n\r\n", "a".repeat(600));
        assert_eq!(one_request(long.as_bytes()).host, Host::Invalid);
        let r = one_request(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n");
        assert_eq!(r.host, Host::Invalid);
        let r = one_request(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: A.test:80\r\n\r\n");
        assert_eq!(r.host, Host::Name("a.test".into()));
        let r = one_request(b"GET http://b.test:81/x HTTP/1.1\r\nHost: a.test\r\n\r\n");
        assert_eq!(r.host, Host::Name("b.test".into()));
    }

    #[test]
    fn websocket_needs_both_headers() {
        let r = one_request(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
        assert!(!r.websocket);
        let r = one_request(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n\r\n");
        assert!(r.websocket);
        let r = one_request(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
        );
        assert!(!r.websocket);
    }

    #[test]
    fn probe_tags_round_trip() {
        let ua = probe_check_user_agent("0.1.0", 0x00ab_cdef_0123_4567);
        assert_eq!(
            probe_ref_of(ua.as_bytes()),
            ProbeRef::Check(0x00ab_cdef_0123_4567)
        );
        let head = format!("GET / HTTP/1.1\r\nHost: a.test\r\nUser-Agent: {ua}\r\n\r\n");
        let r = one_request(head.as_bytes());
        assert!(r.probe);
        assert_eq!(r.probe_ref, ProbeRef::Check(0x00ab_cdef_0123_4567));
        let ua = probe_housekeeping_user_agent("0.1.0");
        assert_eq!(probe_ref_of(ua.as_bytes()), ProbeRef::Housekeeping);
        for other in [
            &b"routeskew-probe/0.1"[..],
            b"routeskew-probe/0.1 check/12",
            b"routeskew-probe/0.1 check/zzzzzzzzzzzzzzzz",
            b"curl/8 check/0000000000000001",
        ] {
            assert_eq!(probe_ref_of(other), ProbeRef::None, "{other:?}");
        }
    }

    #[test]
    fn probe_marker_is_a_prefix() {
        assert!(one_request(b"GET / HTTP/1.1\r\nUser-Agent: routeskew-probe/0.1\r\n\r\n").probe);
        assert!(
            !one_request(b"GET / HTTP/1.1\r\nUser-Agent: curl routeskew-probe/0.1\r\n\r\n").probe
        );
    }

    #[test]
    fn target_hash_depends_on_method_and_path() {
        let a = one_request(b"GET /a HTTP/1.1\r\n\r\n").target;
        assert_eq!(a, one_request(b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n").target);
        assert_ne!(a, one_request(b"HEAD /a HTTP/1.1\r\n\r\n").target);
        assert_ne!(a, one_request(b"GET /b HTTP/1.1\r\n\r\n").target);
    }

    #[test]
    fn bodyless_statuses_and_head_responses() {
        let b = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_all(b).messages.len(), 2);
        let b = b"HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_all(b).messages.len(), 2);
        let b = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse(b, b.len() as u64), Err(ParseError::Malformed));
    }
}
