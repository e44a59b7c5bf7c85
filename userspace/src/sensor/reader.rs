//! The ring-buffer reader: a tokio task that waits for the kernel's wakeups or its own
//! timer, drains the ring, decodes each record ([`decode`](super::decode)) and sends the
//! events to the pipeline in batches.

use std::{
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    runtime::Handle,
    sync::mpsc::Sender,
    task::JoinHandle,
};

use super::{decode, map_err, names::MAP_EVENTS, SensorError};
use crate::event::Event;

/// Events the reader sends to the pipeline at once, at most.
pub const BATCH: usize = 1024;

/// The running reader task and what it counts.
pub(super) struct Reader {
    task: JoinHandle<()>,
    decode_errors: Arc<AtomicU64>,
}

impl Reader {
    /// Takes the ring buffer out of `ebpf` and spawns the task reading it on `runtime`.
    pub(super) fn spawn(
        ebpf: &mut Ebpf,
        runtime: &Handle,
        events: Sender<Vec<Event>>,
        poll_interval: Duration,
    ) -> Result<Reader, SensorError> {
        let ring = ebpf
            .take_map(MAP_EVENTS)
            .ok_or(SensorError::MapMissing { name: MAP_EVENTS })?;
        let ring = RingBuf::try_from(ring).map_err(map_err(MAP_EVENTS))?;
        let ring = {
            let _enter = runtime.enter();
            // SAFETY: the RingBuf owns its map fd and always reports that same fd; it is
            // only closed when the AsyncFd (which owns the RingBuf) is dropped.
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| SensorError::Reader(io::Error::from(e)))?
        };
        let decode_errors = Arc::new(AtomicU64::new(0));
        let task = runtime.spawn(read_ring(
            ring,
            events,
            Arc::clone(&decode_errors),
            poll_interval,
        ));
        Ok(Reader {
            task,
            decode_errors,
        })
    }

    /// Records the reader could not decode so far.
    pub(super) fn decode_errors(&self) -> u64 {
        self.decode_errors.load(Ordering::Relaxed)
    }

    /// Stops the task (which drops the ring buffer with it).
    pub(super) fn stop(&self) {
        self.task.abort();
    }
}

async fn read_ring(
    mut ring: AsyncFd<RingBuf<MapData>>,
    events: Sender<Vec<Event>>,
    decode_errors: Arc<AtomicU64>,
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
                if !drain(guard.get_inner_mut(), &mut decoder, &events, &decode_errors).await {
                    return;
                }
                guard.clear_ready();
            }
            Some(Err(error)) => {
                tracing::error!(%error, "ring buffer poll failed; sensor reader stops");
                return;
            }
            None => {
                if !drain(ring.get_mut(), &mut decoder, &events, &decode_errors).await {
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
    decode_errors: &AtomicU64,
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
                    decode_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "undecodable ring buffer record");
                }
            }
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
