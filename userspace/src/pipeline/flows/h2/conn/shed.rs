//! What a connection's waiting streams cost the memory budget, and shedding them: a new
//! stream the budget has no room for is refused, and streams that have waited longer
//! than the age limit go on the next tick. Either is counted in
//! `routeskew_pipeline_shed_total`; an answer that comes later finds no stream and is
//! counted as unmatched, as for any stream not followed.

use super::{H2Conn, Inner, Stream};
use crate::pipeline::budget::{growth_bytes, queue_bytes, Budget};
use crate::pipeline::flows::h2::H2Counters;
use crate::pipeline::http::ResponseHead;
use crate::pipeline::metrics::{MemoryPart, Shed};

/// Streams kept allocated for a connection with none waiting.
const IDLE_STREAM_CAPACITY: usize = 8;

impl Inner {
    /// Bytes the streams hold: the table by its capacity, and the 404 heads waiting for
    /// their bodies.
    fn stream_bytes(&self) -> usize {
        let heads = self.streams.iter().filter(|s| s.response.is_some()).count();
        queue_bytes::<Stream>(self.streams.capacity()) + queue_bytes::<ResponseHead>(heads)
    }

    /// Whether the budget has room for one more stream; counts the refusal when not.
    pub(super) fn room_for_stream(&self, counts: &H2Counters) -> bool {
        let growth = growth_bytes::<Stream>(self.streams.len(), self.streams.capacity());
        if growth == 0 || counts.budget.fits(growth) {
            return true;
        }
        counts.metrics.shed.inc(Shed::RequestRefused);
        false
    }

    /// Brings the budget's charge for the streams up to date.
    pub(super) fn recharge(&mut self, budget: &Budget) {
        let now = self.stream_bytes();
        budget.adjust(MemoryPart::Requests, self.charged, now);
        self.charged = now;
    }
}

impl H2Conn {
    /// Bytes of waiting streams charged to the budget (released with the connection).
    pub fn charged(&self) -> usize {
        self.inner.charged
    }

    /// Streams waiting for their responses.
    pub fn waiting(&self) -> usize {
        self.inner.streams.len()
    }

    /// After a record: gives back the capacity of a stream table that emptied, and
    /// brings the charge up to date.
    pub fn settle(&mut self, budget: &Budget) {
        let streams = &mut self.inner.streams;
        if streams.is_empty() && streams.capacity() > IDLE_STREAM_CAPACITY {
            streams.shrink_to(IDLE_STREAM_CAPACITY);
        }
        if streams.is_empty() {
            self.inner.oldest = u64::MAX;
        }
        self.inner.recharge(budget);
    }

    /// Sheds the streams opened before `cutoff` that still wait. Returns how many.
    pub fn shed_aged(&mut self, cutoff: u64, budget: &Budget) -> u64 {
        if cutoff <= self.inner.oldest {
            return 0;
        }
        let before = self.inner.streams.len();
        self.inner.streams.retain(|s| s.request.ts_ns >= cutoff);
        let shed = (before - self.inner.streams.len()) as u64;
        if self.inner.streams.is_empty() {
            // A connection whose streams all aged is stuck; keep nothing for it.
            self.inner.streams = Vec::new();
        }
        self.inner.oldest = self
            .inner
            .streams
            .iter()
            .map(|s| s.request.ts_ns)
            .min()
            .unwrap_or(u64::MAX);
        self.settle(budget);
        shed
    }
}
