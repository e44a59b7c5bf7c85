//! Reading one response head: status, the header names in order, the few values the
//! classifier compares, and the status line alone when the rest was cut.

use super::fields::{
    complete_lines, header_slots, is_chunked, map_err, parse_content_length, version_of,
};
use super::head::{
    cut_bytes, cut_str, HeaderId, HeaderList, InlineBytes, Message, ParseError, ResponseHead,
    Version, MAX_BODY_PREFIX,
};

pub(super) fn parse_response_at(buf: &[u8]) -> Result<(Message, Option<usize>), ParseError> {
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
    Ok(empty_head(version, status, b"", true))
}

fn response_from(
    resp: &httparse::Response<'_, '_>,
    truncated: bool,
) -> Result<ResponseHead, ParseError> {
    let version = version_of(resp.version).ok_or(ParseError::Malformed)?;
    let status = resp.code.ok_or(ParseError::Malformed)?;
    let reason = resp.reason.unwrap_or_default();
    let mut out = empty_head(version, status, reason.as_bytes(), truncated);
    fill_headers(&mut out, resp.headers.iter().map(|h| (h.name, h.value)))?;
    Ok(out)
}

/// The head of a response another HTTP/1.1 client already parsed (the prober's): the
/// same fields the byte parser reads, from the client's status, headers in wire order and the start of the body, which is kept as the byte parser keeps it (up to
/// `Content-Length`, nothing when the length is not known).
pub fn response_from_parts<'a>(
    status: u16,
    reason: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) -> Result<ResponseHead, ParseError> {
    let mut out = empty_head(Version::Http11, status, reason.as_bytes(), false);
    fill_headers(&mut out, headers.into_iter())?;
    if let Some(n) = out.content_length {
        let want = n.min(MAX_BODY_PREFIX as u64) as usize;
        out.body_prefix = cut_bytes(&body[..want.min(body.len())]);
    }
    Ok(out)
}

fn empty_head(version: Version, status: u16, reason: &[u8], truncated: bool) -> ResponseHead {
    ResponseHead {
        version,
        status,
        reason: cut_str(reason),
        headers: HeaderList::new(),
        content_type: None,
        x_content_type_options: None,
        content_length: None,
        chunked: false,
        body_prefix: InlineBytes::new(),
        truncated,
    }
}

/// Header names in order and the few values the classifier compares.
fn fill_headers<'a>(
    out: &mut ResponseHead,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Result<(), ParseError> {
    for (name, value) in headers {
        let id = HeaderId::from_name(name);
        // The parser never hands over more than MAX_HEADERS; past that a client's list
        // is cut the same way.
        if out.headers.try_push(id).is_err() {
            out.truncated = true;
        }
        match id {
            HeaderId::ContentType if out.content_type.is_none() => {
                out.content_type = Some(cut_str(value));
            }
            HeaderId::XContentTypeOptions if out.x_content_type_options.is_none() => {
                out.x_content_type_options = Some(cut_str(value));
            }
            HeaderId::ContentLength => {
                out.content_length = parse_content_length(value, out.content_length)?;
            }
            HeaderId::TransferEncoding => out.chunked = is_chunked(value),
            _ => {}
        }
    }
    if out.chunked {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
        out.content_length = None;
    }
    Ok(())
}
