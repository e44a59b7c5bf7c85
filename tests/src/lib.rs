//! The routeskew test bed: real Traefik replicas, each in its own cgroup v2 directory,
//! in front of a real Go backend, with one replica missing routers; the agent started
//! against them; client traffic with exact per-replica counts; and a metrics parser to
//! read the agent's verdict back.
//!
//! Everything here needs root (cgroups, and the agent loads eBPF programs). Every process
//! and cgroup the test bed creates is removed by [`Testbed::stop`] or on drop, also when
//! a test panics.

// Used only by the binaries (demo, bench) and the integration tests, which a package shares
// with its library.
use aya as _;
use bytes as _;
use object as _;
use routeskew as _;
use tracing_subscriber as _;

pub mod accesslog;
pub mod agent;
pub mod backend;
pub mod cgroup;
pub mod e2e;
pub mod expect;
pub mod http;
pub mod metrics;
pub mod net;
pub mod paths;
pub mod plans;
pub mod process;
pub mod prometheus;
pub mod scenario;
pub mod seccomp;
pub mod tally;
mod testbed;
pub mod tls;
pub mod traefik;
pub mod traffic;
pub mod ws;

pub use agent::{Agent, AgentConfig};
pub use metrics::Metrics;
pub use scenario::{path, Scenario};
pub use testbed::{Replica, Testbed, TestbedConfig};
pub use traffic::{ConnMode, RoundRobin};
