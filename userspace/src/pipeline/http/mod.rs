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
//!
//! Rooms: [`head`] (what is kept of a request or response), [`parse`] (framing: where
//! messages start and end), `request`/`response` (reading one head), [`probe_tag`] (the
//! agent's own User-Agent). Host names are normalised by [`crate::hosts`].

mod fields;
#[cfg(test)]
mod fuzz_tests;
pub mod head;
pub mod parse;
pub mod probe_tag;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use head::{
    cut_bytes, cut_str, host_hash, target_hash, HeaderId, HeaderList, InlineBytes, InlineStr,
    Message, Method, ParseError, RequestHead, ResponseHead, Version, MAX_BODY_PREFIX, MAX_HEADERS,
    MAX_REASON_LEN, MAX_VALUE_LEN,
};
pub use parse::{
    looks_like_message_start, looks_like_request_start, looks_like_response_start, parse,
    parse_into, ParseOutcome, Parsed, Tail,
};
pub use probe_tag::{
    probe_check_user_agent, probe_housekeeping_user_agent, probe_ref_of, ProbeRef,
    PROBE_USER_AGENT_PREFIX,
};
pub use response::response_from_parts;
