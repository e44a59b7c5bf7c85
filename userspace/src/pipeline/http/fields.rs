//! Header-value and framing helpers shared by the request and response readers.

use std::mem::MaybeUninit;

use super::head::{ParseError, Version, MAX_HEADERS};

/// Cut `buf` after its last complete line and terminate the head there, so that httparse
/// can read the lines of a truncated head.
pub(super) fn complete_lines(buf: &[u8]) -> Option<Vec<u8>> {
    let last_lf = buf.iter().rposition(|&b| b == b'\n')?;
    let mut v = Vec::with_capacity(last_lf + 3);
    v.extend_from_slice(&buf[..=last_lf]);
    v.extend_from_slice(b"\r\n");
    Some(v)
}

/// Header slots for httparse, left uninitialised: it initialises the ones it fills, and
/// initialising all of them first would cost more than parsing a short head.
pub(super) fn header_slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

pub(super) fn map_err(e: httparse::Error) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
        _ => ParseError::Malformed,
    }
}

pub(super) fn parse_content_length(
    value: &[u8],
    current: Option<u64>,
) -> Result<Option<u64>, ParseError> {
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

pub(super) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

pub(super) fn is_chunked(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .next_back()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

pub(super) fn version_of(minor: Option<u8>) -> Option<Version> {
    match minor {
        Some(0) => Some(Version::Http10),
        Some(1) => Some(Version::Http11),
        _ => None,
    }
}
