//! The agent under its own seccomp profile (issue 16, item 9): `deploy/seccomp/routeskew.json`,
//! which the `least-privilege` overlay gives the DaemonSet, installed before exec as a
//! container runtime would. With ptrace, process_vm_readv/writev, open_by_handle_at, mount
//! and the rest denied, the agent still loads its programs, attaches every hook (byte
//! capture, the Go TLS uprobes, the semantic uprobes) and counts a real Traefik replica's
//! TLS requests exactly, in both sensor modes.
//!
//! Run as root after building the agent:
//! `cargo test -p routeskew-testbed --test e2e_seccomp`.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]

use std::time::Duration;

use routeskew_testbed::metrics::Metrics;
use routeskew_testbed::{e2e, path, seccomp, tls, Agent, AgentConfig, Testbed, TestbedConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_attaches_and_counts_under_its_seccomp_profile() {
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
    for (mode, args) in [("bytes", e2e::byte_capture()), ("semantic", Vec::new())] {
        let mut agent = Agent::start(AgentConfig {
            binary: Some(agent_bin.clone()),
            extra_args: args,
            seccomp_profile: Some(seccomp::profile_path()),
            ..AgentConfig::for_testbed(&bed)
        })
        .await
        .unwrap_or_else(|e| panic!("{mode}: the agent did not start under the profile: {e:#}"));
        assert_eq!(
            seccomp::mode_of(agent.pid()).unwrap(),
            2,
            "{mode}: no seccomp filter on the agent"
        );
        let h = host.clone();
        let statuses = tokio::task::spawn_blocking(move || {
            tls::curl_https(addr, &h, &[path::ROOT, path::ROOT, path::ROOT])
        })
        .await
        .expect("curl thread")
        .expect("curl");
        assert_eq!(statuses, vec![200, 200, 200], "{mode}");
        let counted =
            |m: &Metrics| m.sum("routeskew_http_responses_total", &[("host", host.as_str())]);
        let m = agent
            .scrape_until(Duration::from_secs(10), |m| counted(m) >= 3.0)
            .await
            .expect("scrape");
        let log = agent.log_tail();
        assert_eq!(
            counted(&m),
            3.0,
            "{mode}: counted under the profile; agent log:\n{log}"
        );
        let attached = if mode == "bytes" {
            "TLS uprobes attached"
        } else {
            "semantic uprobes attached"
        };
        assert!(
            log.contains(attached),
            "{mode}: no '{attached}'; agent log:\n{log}"
        );
        assert!(
            !log.contains("Operation not permitted"),
            "{mode}: something the agent does was denied; agent log:\n{log}"
        );
        agent.stop();
    }
}
