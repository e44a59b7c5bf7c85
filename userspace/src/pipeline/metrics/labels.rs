//! The label values of the pipeline's counter families: one table per family, used both
//! to create its series at zero and to resolve the handles the stages increment.

use super::LabelValue;
use crate::pipeline::http::ParseError;

/// A fieldless enum whose variants are a label's values, in the order given.
macro_rules! label_values {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($key:literal) {
            $($(#[$vmeta:meta])* $variant:ident => $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl LabelValue for $name {
            const KEY: &'static str = $key;
            const ALL: &'static [Self] = &[$(Self::$variant,)+];

            fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_values! {
    /// Sensor events by kind (`routeskew_pipeline_events_total`).
    pub enum InputKind("kind") {
        Data => "data",
        Closed => "closed",
        UpstreamFailure => "upstream_failure",
    }
}

label_values! {
    /// Which side of Traefik a message was on.
    pub enum Leg("leg") {
        /// Between a client and Traefik.
        Client => "client",
        /// Between Traefik and an upstream.
        Upstream => "upstream",
    }
}

label_values! {
    /// Why a tracked connection was dropped.
    pub enum Eviction("reason") {
        /// `max_connections` reached: the least recently active one goes.
        Capacity => "capacity",
        /// No event for the idle timeout.
        Idle => "idle",
        /// The memory budget had no room for a new connection.
        Budget => "budget",
    }
}

label_values! {
    /// Why a data event was not parsed as a new message.
    pub enum Skip("reason") {
        /// WebSocket frames on an upgraded connection.
        AfterUpgrade => "after_upgrade",
        /// The body or head of an earlier syscall continues.
        Continuation => "continuation",
        /// A record of an HTTP/2 direction that had lost sync.
        H2Desync => "h2_desync",
    }
}

label_values! {
    /// Inconsistencies between kernel events on a connection.
    pub enum Anomaly("kind") {
        /// A new HTTP message on an upgraded connection without a Close in between: the
        /// fd (or `*tls.Conn`) was reused and the Close was lost.
        ReusedWithoutClose => "reused_without_close",
        /// Close of a connection the tracker did not know (never carried a parsed
        /// message, evicted or expired).
        UntrackedClose => "untracked_close",
        /// The kernel reported an upgraded connection whose 101 the tracker never saw.
        UnseenUpgrade => "unseen_upgrade",
        /// A 1xx other than 101, followed by the real response.
        InterimResponse => "interim_response",
        /// An upstream request not logged because too many processes have a log.
        UpstreamLogFull => "upstream_log_full",
    }
}

label_values! {
    /// Why an observation was not counted.
    pub enum DropReason("reason") {
        /// Its process/cgroup is not a known replica.
        UnknownOrigin => "unknown_origin",
    }
}

label_values! {
    /// Why HTTP/2 streams could not be classified.
    pub enum Unclassified("reason") {
        /// A capture gap covered a frame header or part of a header block.
        HeaderGap => "header_gap",
        /// The HPACK decoder rejected a header block.
        Hpack => "hpack",
        /// Frames in an order or shape HTTP/2 forbids (garbage, or a misread stream).
        Frame => "frame",
        /// A header block larger than [`crate::pipeline::flows::h2::conn::MAX_BLOCK`].
        BlockTooLarge => "block_too_large",
        /// More than [`crate::pipeline::flows::h2::conn::MAX_STREAMS`] streams waiting on
        /// one connection.
        StreamLimit => "stream_limit",
        /// The connection's state was evicted to make room for another one.
        ConnLimit => "connection_limit",
        /// All h2 connections together buffered more than the global limit.
        BufferLimit => "buffer_limit",
    }
}

/// The parser's error kinds (`routeskew_pipeline_parse_errors_total`).
impl LabelValue for ParseError {
    const KEY: &'static str = "kind";
    const ALL: &'static [Self] = &ParseError::ALL;

    fn as_str(self) -> &'static str {
        self.kind()
    }

    fn index(self) -> usize {
        self as usize
    }
}

label_values! {
    /// What a request head copied by the semantic sensor turned out to be.
    pub enum HeadResult("result") {
        /// A WebSocket upgrade request: its answer is counted as an upgrade outcome.
        WebSocket => "websocket",
        /// Any other request.
        NotUpgrade => "not_upgrade",
        /// The copy ended before the head did, and its complete lines held no upgrade.
        Truncated => "truncated",
        /// Another request's head (its Host differs from the one counted).
        OtherRequest => "other_request",
        /// Not an HTTP/1.x request head.
        Unparsed => "unparsed",
    }
}

label_values! {
    /// What the pipeline's accounted memory holds (`routeskew_pipeline_memory_bytes`),
    /// all of it charged against one budget (see [`crate::pipeline::budget`]).
    pub enum MemoryPart("part") {
        /// Followed connections, HTTP/1 and HTTP/2 (HPACK tables included).
        Connections => "connections",
        /// Requests waiting for their responses: HTTP/1 queues and HTTP/2 streams.
        Requests => "requests",
        /// Heads kept across syscalls and HTTP/2 frames and header blocks in progress.
        Buffers => "buffers",
        /// Series of the replicas and hosts being counted.
        Series => "series",
    }
}

label_values! {
    /// State dropped to stay within the memory budget or its age limit
    /// (`routeskew_pipeline_shed_total`): one count per connection or request.
    pub enum Shed("what") {
        /// A followed HTTP/1 connection evicted to make room (least recently active).
        Connection => "connection",
        /// A followed HTTP/2 connection evicted to make room (least recently active).
        H2Connection => "h2_connection",
        /// A waiting request refused: the budget had no room for it. Its connection's
        /// older waiting requests go with it, so that later responses still pair with
        /// the right requests.
        RequestRefused => "request_refused",
        /// A request that waited longer than the maximum age (behind a streaming
        /// response, or never answered).
        RequestAged => "request_aged",
        /// A waiting request whose connection was evicted or expired.
        RequestEvicted => "request_evicted",
    }
}
