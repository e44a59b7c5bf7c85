//! What Traefik 3.7 sends, byte for byte, for each case of the scenario: shared by the
//! tests and the demo so both hold the test bed to the same facts.
//!
//! The heads below are for keep-alive requests. When the request says
//! `Connection: close`, Go's server appends `Connection: close` as the last header line
//! (see [`closing`]); a classifier must accept both forms.

use crate::http::Response;

/// Traefik's own "no router matched" answer (Go's `http.NotFound` written by Traefik),
/// with the `Date` value masked.
pub const TRAEFIK_404_HEAD: &str = "HTTP/1.1 404 Not Found\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
X-Content-Type-Options: nosniff\r\n\
Date: <date>\r\n\
Content-Length: 19\r\n\r\n";

/// The backend's `http.NotFound` relayed by Traefik: same status and body, but Go's
/// reverse proxy writes the upstream's headers sorted by name.
pub const RELAYED_NOTFOUND_HEAD: &str = "HTTP/1.1 404 Not Found\r\n\
Content-Length: 19\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Date: <date>\r\n\
X-Content-Type-Options: nosniff\r\n\r\n";

pub const NOTFOUND_BODY: &[u8] = b"404 page not found\n";

/// Traefik's 503 for a load balancer without servers.
pub const NO_SERVER_HEAD: &str = "HTTP/1.1 503 Service Unavailable\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
X-Content-Type-Options: nosniff\r\n\
Date: <date>\r\n\
Content-Length: 20\r\n\r\n";
pub const NO_SERVER_BODY: &[u8] = b"no available server\n";

/// Traefik's 502 when the upstream refuses the connection.
pub const BAD_GATEWAY_HEAD: &str =
    "HTTP/1.1 502 Bad Gateway\r\nDate: <date>\r\nContent-Length: 11\r\n\r\n";
pub const BAD_GATEWAY_BODY: &[u8] = b"Bad Gateway";

/// Traefik's 504 when the upstream does not answer within responseHeaderTimeout.
pub const GATEWAY_TIMEOUT_HEAD: &str =
    "HTTP/1.1 504 Gateway Timeout\r\nDate: <date>\r\nContent-Length: 15\r\n\r\n";
pub const GATEWAY_TIMEOUT_BODY: &[u8] = b"Gateway Timeout";

/// The backend's answer on `/` for `host`.
pub fn backend_root_body(host: &str) -> Vec<u8> {
    format!("backend ok host={host}\n").into_bytes()
}

/// `head` as sent in answer to a request with `Connection: close`.
pub fn closing(head: &str) -> String {
    let base = head.strip_suffix("\r\n").unwrap_or(head);
    format!("{base}Connection: close\r\n\r\n")
}

/// `head`, in the form for a request that did (`close`) or did not close the connection.
pub fn head_for(head: &str, close: bool) -> String {
    if close {
        closing(head)
    } else {
        head.to_string()
    }
}

/// Is this response Traefik's router-miss 404, exactly (either connection form)?
pub fn is_traefik_router_miss(r: &Response) -> bool {
    let head = r.head_without_date();
    (head == TRAEFIK_404_HEAD || head == closing(TRAEFIK_404_HEAD)) && r.body == NOTFOUND_BODY
}
