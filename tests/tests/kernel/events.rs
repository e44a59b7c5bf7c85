//! The messages the helper scenarios exchange, and the events the sensor must report for
//! them, written as rows of [`Want`] over the helper's client and server fds.

use std::net::SocketAddr;

use routeskew::event::{ConnId, Direction, EventKind, Origin, UpstreamFailureReason};

pub(crate) const REQUEST: &[u8] = b"GET /kernel-test HTTP/1.1\r\nHost: kernel.test\r\n\r\n";
pub(crate) const RESPONSE: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 19\r\n\r\n404 page not found\n";
/// The next request on a keep-alive connection.
pub(crate) const SECOND_REQUEST: &[u8] = b"GET /second HTTP/1.1\r\nHost: kernel.test\r\n\r\n";
pub(crate) const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: kernel.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
pub(crate) const UPGRADE_RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
/// Sent after the 101: starts like HTTP, so only the in-kernel upgrade mark keeps it out.
pub(crate) const FRAME_LIKE_REQUEST: &[u8] =
    b"GET /after-upgrade HTTP/1.1\r\nHost: kernel.test\r\n\r\n";
pub(crate) const FRAME_LIKE_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
pub(crate) const NOT_HTTP: [&[u8]; 5] = [
    b"hello, this is not http at all\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls client hello",
    b"GETX / HTTP/1.1\r\nHost: kernel.test\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: kernel.test\r\n\r\n",
    b"HTTP/2.0 200 OK\r\n\r\n",
];

pub(crate) type Events = Vec<(Origin, EventKind)>;

/// Which end of the helper's connection an event is about.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Side {
    Client,
    Server,
}

/// One expected event, relative to the helper run that produced it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Want {
    /// Bytes on one side; the copy is the message's first `capture_len` bytes.
    Data(Side, Direction, &'static [u8]),
    /// One side closed (`true`: after an upgrade).
    Closed(Side, bool),
    /// A failed connect to `ip:80`, with the errno the kernel reported.
    Failure(UpstreamFailureReason, i32, [u8; 4]),
}

/// What a helper run is known by: its origin and its connection's two fds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ids {
    pub(crate) origin: Origin,
    pub(crate) client: u32,
    pub(crate) server: u32,
}

/// The events `want` describes for the run `ids`, with data copied up to `capture_len`.
pub(crate) fn expected(want: &[Want], ids: Ids, capture_len: u32) -> Events {
    let fd = |side| match side {
        Side::Client => ids.client,
        Side::Server => ids.server,
    };
    want.iter()
        .map(|w| {
            let kind = match *w {
                Want::Data(side, direction, msg) => {
                    let copied = msg.len().min(capture_len as usize);
                    EventKind::Data {
                        conn: ConnId::Fd(fd(side)),
                        direction,
                        total_len: msg.len() as u64,
                        bytes: bytes::Bytes::copy_from_slice(&msg[..copied]),
                    }
                }
                Want::Closed(side, upgraded) => closed(fd(side), upgraded),
                Want::Failure(reason, errno, ip) => EventKind::UpstreamFailure {
                    reason,
                    errno,
                    peer: Some(SocketAddr::from((ip, 80))),
                },
            };
            (ids.origin, kind)
        })
        .collect()
}

pub(crate) fn data(fd: u32, direction: Direction, bytes: &[u8]) -> EventKind {
    EventKind::Data {
        conn: ConnId::Fd(fd),
        direction,
        total_len: bytes.len() as u64,
        bytes: bytes::Bytes::copy_from_slice(bytes),
    }
}

pub(crate) fn closed(fd: u32, upgraded: bool) -> EventKind {
    EventKind::Closed {
        conn: ConnId::Fd(fd),
        upgraded,
    }
}

pub(crate) fn show(events: &[(Origin, EventKind)]) -> String {
    events
        .iter()
        .map(|(o, k)| match k {
            EventKind::Data {
                conn,
                direction,
                total_len,
                bytes,
            } => format!(
                "  {o:?} Data {conn} {direction:?} total={total_len} {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
            ),
            other => format!("  {o:?} {other:?}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn assert_events(got: &[(Origin, EventKind)], want: &[(Origin, EventKind)]) {
    assert!(
        got == want,
        "events differ\n got:\n{}\nwant:\n{}",
        show(got),
        show(want)
    );
}
