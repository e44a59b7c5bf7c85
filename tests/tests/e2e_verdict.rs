//! End to end, the routeless verdict (issue 14, item 1): three real Traefik replicas, the
//! second missing the router of one host, the agent probing them with no client traffic.
//!
//! - `/api/v1/replicas` names the broken replica `routeless` for the missing host once the
//!   confirmation window (3 s here) has passed, with its evidence: every probe round a
//!   router miss, both siblings routing the host, the router it lacks from its own API;
//! - before the window it is `suspect` (`confirming`), never routeless;
//! - its siblings are `ok` for that host, every replica is `ok` for the routed hosts, and
//!   a host that fails alike on every replica (a refused backend) is not a router miss;
//! - `routeskew status --url` prints the same as a table.
//!
//! Run as root after building the agent:
//! `cargo test -p routeskew-testbed --test e2e_verdict`.
#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions unwrap too (clippy.toml covers only tests); a panic there fails the test"
)]

use std::time::{Duration, Instant};

use routeskew::verdict::VerdictReport;
use routeskew_testbed::{e2e, http, Agent, AgentConfig, Testbed, TestbedConfig};

const CONFIRM: Duration = Duration::from_secs(3);

async fn verdicts(agent: &Agent) -> VerdictReport {
    let resp = http::get_local(agent.addr, "/api/v1/replicas")
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    serde_json::from_str(&resp.body_text()).unwrap()
}

fn state<'r>(r: &'r VerdictReport, replica: &str, host: &str) -> Option<&'r str> {
    r.replicas
        .iter()
        .find(|v| v.replica == replica && v.host == host)
        .map(|v| v.state.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_missing_a_router_is_confirmed_routeless_and_its_siblings_are_not() {
    let agent_bin = e2e::preconditions();
    let mut bed = Testbed::start(TestbedConfig {
        access_log: false,
        ..TestbedConfig::default()
    })
    .await
    .expect("starting the test bed");
    let sc = bed.scenario().clone();
    let names: Vec<String> = bed.replicas().iter().map(|r| r.name.clone()).collect();
    let broken = bed.broken().unwrap().name.clone();
    let mut agent = Agent::start(AgentConfig {
        binary: Some(agent_bin.clone()),
        extra_args: vec![
            "--probe-interval".into(),
            "1s".into(),
            "--probe-timeout".into(),
            "2s".into(),
            "--verdict-confirm".into(),
            format!("{}s", CONFIRM.as_secs()),
            "--verdict-min-ready".into(),
            "0s".into(),
        ],
        ..AgentConfig::for_testbed(&bed)
    })
    .await
    .expect("starting the agent");

    // Once its siblings' answers for the host are in too: suspect, confirming.
    let start = Instant::now();
    let mut first = None;
    while start.elapsed() < Duration::from_secs(10) {
        let r = verdicts(&agent).await;
        let mine = r
            .replicas
            .iter()
            .find(|v| v.replica == broken && v.host == sc.missing_host);
        if let Some(v) = mine {
            assert_ne!(v.state, "ok", "{r:#?}");
            if v.evidence.siblings == 2 {
                first = Some(r.clone());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = first.unwrap_or_else(|| panic!("no verdict in 10 s:\n{}", agent.log_tail()));
    let v = first
        .replicas
        .iter()
        .find(|v| v.replica == broken && v.host == sc.missing_host)
        .unwrap();
    assert_eq!(
        (v.state.as_str(), v.reason.as_deref()),
        ("suspect", Some("confirming")),
        "{first:#?}"
    );

    // Confirmed after the window.
    let mut report = verdicts(&agent).await;
    let deadline = Instant::now() + CONFIRM + Duration::from_secs(8);
    while state(&report, &broken, &sc.missing_host) != Some("routeless")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        report = verdicts(&agent).await;
    }
    let confirmed_after = start.elapsed();
    let v = report
        .replicas
        .iter()
        .find(|v| v.replica == broken && v.host == sc.missing_host)
        .unwrap();
    assert_eq!(v.state, "routeless", "{report:#?}\n{}", agent.log_tail());
    assert!(confirmed_after >= CONFIRM, "{confirmed_after:?}");
    eprintln!("routeless {confirmed_after:?} after the first verdict poll: {v:?}");
    assert_eq!((v.evidence.siblings, v.evidence.siblings_routing), (2, 2));
    assert!(v.evidence.router_miss_rounds >= 3, "{v:?}");
    let lacks = v.evidence.lacks_routers.as_ref().expect("inventory read");
    assert_eq!(lacks.len(), 1, "{lacks:?}");
    assert!(!v.evidence.sensor_blind);

    for r in &names {
        assert_eq!(state(&report, r, &sc.app_host), Some("ok"), "{r}");
        if *r != broken {
            assert_eq!(state(&report, r, &sc.missing_host), Some("ok"), "{r}");
        }
        // A backend that refuses connections: a 502 everywhere, no router miss.
        assert_eq!(state(&report, r, &sc.refused_host), Some("ok"), "{r}");
    }

    // The same, as `routeskew status` prints it.
    let out = std::process::Command::new(&agent_bin)
        .args(["status", "--url", &format!("http://{}", agent.addr)])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = table
        .lines()
        .find(|l| l.starts_with(&broken) && l.contains(&sc.missing_host))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("routeless") && line.contains("siblings routing 2/2"),
        "{line}"
    );
    eprintln!("{table}");

    e2e::stop(&mut agent, &mut bed);
}
