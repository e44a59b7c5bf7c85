//! Splitting a captured prefix into messages: where each head ends, how long its body
//! is, and what the next syscall on the same stream starts with ([`Tail`]).

use super::head::{cut_bytes, Message, ParseError, MAX_BODY_PREFIX};
use super::request::parse_request_at;
use super::response::parse_response_at;

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
                // new status line right after the head means no body was sent. Only a
                // whole "HTTP/1." counts: a body starting with "H" is not a status line.
                Some(_) if bytes[body_start..].starts_with(b"HTTP/1.") => Some(0),
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
