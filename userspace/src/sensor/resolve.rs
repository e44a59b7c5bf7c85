//! Binary resolution off the run loop: reading a replica's executable (185 MB for a
//! Traefik release, longer under CPU load or on a hostile file) runs on a thread of its
//! own with a time limit, so that neither the ring-buffer drain nor the pipeline waits
//! for it. The run loop asks again on its next pass and attaches once the answer is in;
//! until then the binary is *pending*, and the agent is not ready (issue 16, items 2, 6
//! and 11).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

/// How long one binary's resolution may take before it is given up (and counted as
/// failed). A Traefik release resolves in well under a second on an idle machine.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a resolution has no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("resolving the binary took longer than {0:?}; given up")]
    TimedOut(Duration),
    #[error("could not start the resolution thread: {0}")]
    Spawn(Arc<std::io::Error>),
    #[error("the resolution thread panicked")]
    Panicked,
}

struct Running<T> {
    answer: mpsc::Receiver<T>,
    started: Instant,
}

/// Resolutions in flight, one per binary (`K` names it), each on its own thread.
pub struct Resolutions<K, T> {
    running: BTreeMap<K, Running<T>>,
    /// Woken when an answer arrives (the run loop then applies the scan again).
    done: Arc<Notify>,
    timeout: Duration,
}

impl<K: Ord + Copy, T: Send + 'static> Resolutions<K, T> {
    pub fn new(done: Arc<Notify>, timeout: Duration) -> Self {
        Resolutions {
            running: BTreeMap::new(),
            done,
            timeout,
        }
    }

    /// The answer for `id` once it is in (`Some`, taken out: ask once), `None` while
    /// it runs. The first call starts `resolve` on `exe` on a thread of its own.
    pub fn poll(
        &mut self,
        id: K,
        exe: &std::path::Path,
        resolve: impl FnOnce(PathBuf) -> T + Send + 'static,
    ) -> Option<Result<T, ResolveError>> {
        let Some(running) = self.running.get(&id) else {
            let (tx, rx) = mpsc::sync_channel(1);
            let done = Arc::clone(&self.done);
            let exe = exe.to_path_buf();
            let span = tracing::info_span!("resolve", exe = %exe.display());
            let spawned = std::thread::Builder::new()
                .name("routeskew-resolve".into())
                .spawn(move || {
                    let _entered = span.enter();
                    // The receiver may be gone (binary no longer in use, timed out).
                    let _ = tx.send(resolve(exe));
                    done.notify_one();
                });
            return match spawned {
                Ok(_) => {
                    self.running.insert(
                        id,
                        Running {
                            answer: rx,
                            started: Instant::now(),
                        },
                    );
                    None
                }
                Err(e) => Some(Err(ResolveError::Spawn(Arc::new(e)))),
            };
        };
        let answer = match running.answer.try_recv() {
            Ok(answer) => Ok(answer),
            Err(mpsc::TryRecvError::Empty) if running.started.elapsed() < self.timeout => {
                return None
            }
            // The thread keeps running to its end; its answer is dropped.
            Err(mpsc::TryRecvError::Empty) => Err(ResolveError::TimedOut(self.timeout)),
            Err(mpsc::TryRecvError::Disconnected) => Err(ResolveError::Panicked),
        };
        self.running.remove(&id);
        Some(answer)
    }

    /// Forgets resolutions of binaries not in `in_use` (their answers are dropped).
    pub fn retain(&mut self, in_use: impl Fn(&K) -> bool) {
        self.running.retain(|id, _| in_use(id));
    }

    /// Binaries being resolved now.
    #[cfg(test)]
    fn pending(&self) -> impl Iterator<Item = &K> {
        self.running.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(r: &mut Resolutions<u64, u32>, n: u64) -> Result<u32, ResolveError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(a) = r.poll(n, "/x".as_ref(), |_| unreachable!("started already")) {
                return a;
            }
            assert!(Instant::now() < deadline, "no answer");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn answers_arrive_off_thread_and_wake_the_loop() {
        let done = Arc::new(Notify::new());
        let mut r = Resolutions::new(Arc::clone(&done), Duration::from_secs(10));
        let gate = Arc::new(std::sync::Barrier::new(2));
        let g = Arc::clone(&gate);
        let started = r.poll(1, "/bin/x".as_ref(), move |exe| {
            g.wait();
            u32::try_from(exe.as_os_str().len()).unwrap_or(0)
        });
        assert!(started.is_none(), "the first poll only starts it");
        assert_eq!(r.pending().count(), 1);
        assert!(r.poll(1, "/bin/x".as_ref(), |_| 0).is_none());
        gate.wait();
        assert_eq!(wait(&mut r, 1).unwrap(), 6);
        assert_eq!(r.pending().count(), 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), done.notified())
                .await
                .expect("the loop is woken (a stored permit)");
        });
    }

    #[test]
    fn a_resolution_that_never_ends_times_out_and_one_that_panics_is_an_error() {
        let mut r = Resolutions::new(Arc::new(Notify::new()), Duration::from_millis(50));
        let (hold, held) = mpsc::channel::<()>();
        assert!(r
            .poll(1, "/x".as_ref(), move |_| {
                let _ = held.recv();
                1
            })
            .is_none());
        assert!(matches!(wait(&mut r, 1), Err(ResolveError::TimedOut(_))));
        drop(hold);
        // Unwinding (and printing the panic) may take longer than the short limit above.
        let mut r = Resolutions::new(Arc::new(Notify::new()), Duration::from_secs(10));
        assert!(r
            .poll(2, "/x".as_ref(), |_| -> u32 { panic!("crafted binary") })
            .is_none());
        assert!(matches!(wait(&mut r, 2), Err(ResolveError::Panicked)));
    }

    #[test]
    fn binaries_out_of_use_are_forgotten() {
        let mut r = Resolutions::new(Arc::new(Notify::new()), Duration::from_secs(10));
        let (_hold, held) = mpsc::channel::<()>();
        assert!(r
            .poll(1, "/x".as_ref(), move |_| {
                let _ = held.recv();
                1
            })
            .is_none());
        assert!(r.poll(2, "/x".as_ref(), |_| 2).is_none());
        r.retain(|&i| i == 2);
        assert_eq!(r.pending().copied().collect::<Vec<_>>(), vec![2]);
    }
}
