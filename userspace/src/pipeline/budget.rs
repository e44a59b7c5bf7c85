//! One memory budget for the pipeline's state: followed connections (HTTP/1 and HTTP/2,
//! HPACK tables included), requests waiting for their responses, buffers of heads and
//! frames in progress, and the series of the replicas and hosts being counted.
//!
//! Each stage charges what it holds to [`Budget`] when it grows and releases it when it
//! shrinks; the charges are the `routeskew_pipeline_memory_bytes{part}` gauges
//! themselves, so what is exported is what is enforced. Growth that does not fit is shed
//! where it happens (a new connection evicts the least recently active one, a new waiting
//! request is refused) and counted in `routeskew_pipeline_shed_total{what}`. Requests that
//! wait longer than [`DEFAULT_MAX_REQUEST_AGE`] (behind a response that never ends) are
//! shed on the next tick.
//!
//! The charges are estimates made of the types' sizes: a hash table slot is charged
//! twice (tables double when they grow), a queue by its capacity, an HPACK decoder as
//! full at Go's default table size. `tests/memory_budget.rs` compares them with the
//! heap the allocator reports.

use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

use crate::pipeline::metrics::{GaugeFamily, LabelValue, MemoryPart};

/// The default budget: well under the DaemonSet's 256 MiB limit, which also holds the
/// binary, the runtime, the ring buffer's pages and the API caches.
pub const DEFAULT_BUDGET: u64 = 64 << 20;
/// The default maximum age of a request waiting for its response (Traefik's own
/// default idle timeout is 180 s; the flow tracker's is 300 s).
pub const DEFAULT_MAX_REQUEST_AGE: Duration = Duration::from_secs(300);

/// Handle on the accounted memory; clones share the gauges.
#[derive(Clone, Debug)]
pub struct Budget {
    limit: u64,
    parts: GaugeFamily<MemoryPart>,
}

/// Unlimited, for stages built without one (tests).
impl Default for Budget {
    fn default() -> Self {
        Budget::unlimited()
    }
}

impl Budget {
    /// A budget of `limit` bytes that charges `parts` (the exported gauges) and shows its
    /// limit in `limit_gauge`.
    pub fn new(limit: u64, parts: GaugeFamily<MemoryPart>, limit_gauge: &Gauge) -> Self {
        limit_gauge.set(i64::try_from(limit).unwrap_or(i64::MAX));
        Budget { limit, parts }
    }

    /// A budget no test state reaches, with gauges of its own.
    pub fn unlimited() -> Self {
        Budget {
            limit: u64::MAX,
            parts: GaugeFamily::default(),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged, all parts together.
    pub fn used(&self) -> u64 {
        MemoryPart::ALL.iter().map(|p| self.charged(*p)).sum()
    }

    /// Bytes charged to one part.
    pub fn charged(&self, part: MemoryPart) -> u64 {
        u64::try_from(self.parts.gauge(part).get()).unwrap_or(0)
    }

    /// Whether `more` bytes fit beside what is charged.
    pub fn fits(&self, more: usize) -> bool {
        self.used().saturating_add(more as u64) <= self.limit
    }

    pub fn charge(&self, part: MemoryPart, n: usize) {
        if n > 0 {
            self.parts
                .gauge(part)
                .inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn release(&self, part: MemoryPart, n: usize) {
        if n > 0 {
            self.parts
                .gauge(part)
                .dec_by(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// A charge of `part` that was `old` bytes and is now `new`.
    pub fn adjust(&self, part: MemoryPart, old: usize, new: usize) {
        if new > old {
            self.charge(part, new - old);
        } else {
            self.release(part, old - new);
        }
    }

    /// Sets a part's charge outright (a stage that recounts its state now and then).
    pub fn set(&self, part: MemoryPart, n: usize) {
        self.parts
            .gauge(part)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// Bytes a queue of `capacity` elements of `T` holds.
pub fn queue_bytes<T>(capacity: usize) -> usize {
    capacity.saturating_mul(std::mem::size_of::<T>())
}

/// The capacity a `VecDeque`/`Vec` grows to from `capacity` when full: what one more
/// element costs in the worst case.
pub fn growth_bytes<T>(len: usize, capacity: usize) -> usize {
    if len < capacity {
        0
    } else {
        queue_bytes::<T>(capacity.max(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_add_up_and_the_limit_is_kept() {
        let gauge = Gauge::default();
        let b = Budget::new(1000, GaugeFamily::default(), &gauge);
        assert_eq!(gauge.get(), 1000);
        b.charge(MemoryPart::Connections, 600);
        b.charge(MemoryPart::Requests, 300);
        assert_eq!(b.used(), 900);
        assert!(b.fits(100));
        assert!(!b.fits(101));
        b.adjust(MemoryPart::Requests, 300, 100);
        assert_eq!(b.charged(MemoryPart::Requests), 100);
        b.release(MemoryPart::Connections, 600);
        b.set(MemoryPart::Series, 50);
        assert_eq!(b.used(), 150);
        // Clones charge the same gauges.
        b.clone().charge(MemoryPart::Buffers, 1);
        assert_eq!(b.used(), 151);
    }

    #[test]
    fn a_full_queue_costs_its_doubling() {
        assert_eq!(growth_bytes::<u64>(3, 4), 0);
        assert_eq!(growth_bytes::<u64>(4, 4), 32);
        assert_eq!(growth_bytes::<u64>(0, 0), 16);
    }
}
