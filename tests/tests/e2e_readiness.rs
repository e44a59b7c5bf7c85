//! `/readyz` and the first counted request agree, on a machine busy with other work
//! (issue 16, item 11): the agent resolves the replica's 185 MB binary off its run loop
//! and stays not ready until the probes are on, so the very first TLS request sent after
//! `/readyz` turns 200 is counted, by the byte sensor (Go TLS uprobes) and by the
//! semantic sensor alike. Before, a round of the bench once counted none of its requests
//! although the agent was up.
//!
//! Run as root after building the agent:
//! `cargo test -p routeskew-testbed --test e2e_readiness`.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::{e2e, path, tls, Agent, AgentConfig, Testbed, TestbedConfig};

/// Busy threads, one more than there are CPUs, until dropped.
struct CpuLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start() -> Self {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_after_ready_is_counted_under_cpu_load() {
    let agent_bin = e2e::preconditions();
    let bed = Testbed::start(TestbedConfig {
        replicas: 1,
        broken_replica: None,
        tls: true,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let host = bed.scenario().app_host.clone();
    let addr = bed.replicas()[0]
        .websecure_addr
        .expect("websecure entrypoint");
    let load = CpuLoad::start();
    for (mode, args) in [("bytes", e2e::byte_capture()), ("semantic", Vec::new())] {
        // Agent::start returns as soon as /readyz answers 200 (polled every 200 ms).
        let mut agent = Agent::start(AgentConfig {
            binary: Some(agent_bin.clone()),
            extra_args: args,
            ..AgentConfig::for_testbed(&bed)
        })
        .await
        .expect("starting the agent");
        let h = host.clone();
        let statuses =
            tokio::task::spawn_blocking(move || tls::curl_https(addr, &h, &[path::ROOT]))
                .await
                .expect("curl thread")
                .expect("curl");
        assert_eq!(statuses, vec![200], "{mode}");
        let counted =
            |m: &Metrics| m.sum("routeskew_http_responses_total", &[("host", host.as_str())]);
        let m = agent
            .scrape_until(Duration::from_secs(10), |m| counted(m) >= 1.0)
            .await
            .expect("scrape");
        assert_eq!(
            counted(&m),
            1.0,
            "{mode}: the first request after /readyz was not counted exactly once; agent log:\n{}",
            agent.log_tail()
        );
        agent.stop();
    }
    drop(load);
}
