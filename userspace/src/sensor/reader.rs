//! The ring-buffer reader: a thread of its own that waits for the kernel's wakeups or its
//! own timer, drains the ring, decodes each record ([`decode`](super::decode)) and sends
//! the events to the pipeline in batches.
//!
//! A thread, not a task on the agent's runtime: the run loop resolves binaries, scans
//! `/proc` and encodes scrapes, and none of that may delay the drain (issue 16, item 6).
//! It measures its own lag, the age of the oldest record of each drain.

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc::Sender, Notify},
};

use super::{decode, map_err, names::MAP_EVENTS, SensorError};
use crate::event::{monotonic_ns, Event};

/// Events the reader sends to the pipeline at once, at most.
pub const BATCH: usize = 1024;

/// What the reader thread counts, read by the run loop.
#[derive(Default)]
struct Counts {
    decode_errors: AtomicU64,
    /// Largest drain lag (ns) since it was last taken.
    max_lag_ns: AtomicU64,
}

/// The running reader thread and what it counts.
pub(super) struct Reader {
    thread: Option<JoinHandle<()>>,
    stop: Arc<Notify>,
    counts: Arc<Counts>,
}

impl Reader {
    /// Takes the ring buffer out of `ebpf` and starts the thread reading it.
    pub(super) fn spawn(
        ebpf: &mut Ebpf,
        events: Sender<Vec<Event>>,
        poll_interval: Duration,
    ) -> Result<Reader, SensorError> {
        let ring = ebpf
            .take_map(MAP_EVENTS)
            .ok_or(SensorError::MapMissing { name: MAP_EVENTS })?;
        let ring = RingBuf::try_from(ring).map_err(map_err(MAP_EVENTS))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SensorError::Reader)?;
        let ring = {
            let _enter = runtime.enter();
            // SAFETY: the RingBuf owns its map fd and always reports that same fd; it is
            // only closed when the AsyncFd (which owns the RingBuf) is dropped.
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| SensorError::Reader(io::Error::from(e)))?
        };
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(Notify::new());
        let span = tracing::info_span!("ring");
        let thread = std::thread::Builder::new()
            .name("routeskew-ring".into())
            .spawn({
                let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
                move || {
                    let _entered = span.enter();
                    runtime.block_on(async {
                        tokio::select! {
                            () = read_ring(ring, events, &counts, poll_interval) => {}
                            () = stop.notified() => {}
                        }
                    });
                }
            })
            .map_err(SensorError::Reader)?;
        Ok(Reader {
            thread: Some(thread),
            stop,
            counts,
        })
    }

    /// Records the reader could not decode so far.
    pub(super) fn decode_errors(&self) -> u64 {
        self.counts.decode_errors.load(Ordering::Relaxed)
    }

    /// The largest drain lag since the previous call (zero when nothing was drained).
    pub(super) fn take_max_lag(&self) -> Duration {
        Duration::from_nanos(self.counts.max_lag_ns.swap(0, Ordering::Relaxed))
    }

    /// Stops the thread (which drops the ring buffer with it) and waits for it.
    pub(super) fn stop(&mut self) {
        // A stored permit: the thread sees it even if it is not waiting right now.
        self.stop.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the ring-buffer reader thread panicked");
            }
        }
    }
}

async fn read_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    events: Sender<Vec<Event>>,
    counts: &Counts,
    poll_interval: Duration,
) {
    // The kernel submits records without waking the reader until a backlog builds up, so
    // a timer drains what arrived in between. Without a timer, readiness alone drives it
    // (the kernel then wakes the reader for every record).
    let mut timer = (!poll_interval.is_zero()).then(|| {
        let mut t = tokio::time::interval(poll_interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut decoder = decode::Decoder::default();
    loop {
        let woken = tokio::select! {
            guard = ring.readable_mut() => Some(guard),
            _ = async {
                match timer.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        match woken {
            Some(Ok(mut guard)) => {
                if !drain(guard.get_inner_mut(), &mut decoder, &events, counts).await {
                    return;
                }
                guard.clear_ready();
            }
            Some(Err(error)) => {
                tracing::error!(%error, "ring buffer poll failed; sensor reader stops");
                return;
            }
            None => {
                if !drain(ring.get_mut(), &mut decoder, &events, counts).await {
                    return;
                }
            }
        }
    }
}

/// Decodes and forwards every record waiting in the ring, in batches. False once the
/// receiver is gone.
async fn drain(
    ring: &mut RingBuf<MapData>,
    decoder: &mut decode::Decoder,
    events: &Sender<Vec<Event>>,
    counts: &Counts,
) -> bool {
    loop {
        // Allocates only once a record arrives. Records borrow the ring; a batch is
        // decoded (copied) before the send is awaited.
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let Some(record) = ring.next() else { break };
            match decoder.decode(&record) {
                Ok(event) => batch.push(event),
                Err(error) => {
                    counts.decode_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "undecodable ring buffer record");
                }
            }
        }
        // Records are submitted in time order per CPU: the batch's oldest stamp is close
        // to the oldest record's; a stamp from the future (another CPU's clock read) is
        // no lag at all.
        if let Some(oldest) = batch.iter().map(|e| e.ts_ns).min() {
            let lag = monotonic_ns().saturating_sub(oldest);
            counts.max_lag_ns.fetch_max(lag, Ordering::Relaxed);
        }
        let more = batch.len() == BATCH;
        if !batch.is_empty() && events.send(batch).await.is_err() {
            tracing::debug!("event receiver dropped; sensor reader stops");
            return false;
        }
        if !more {
            return true;
        }
    }
}
