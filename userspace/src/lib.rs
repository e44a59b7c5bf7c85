//! routeskew: tells which Traefik replica answers with its own "no router matched" 404 or
//! fails WebSocket upgrades, from kernel observations of the replicas' sockets.
//!
//! Stages, in data-flow order: [`discovery`] → [`sensor`] → [`event`] → [`pipeline`]
//! (flows, with the HTTP/1 parser and the HTTP/2 decoder → classify → aggregate) →
//! [`metrics`], and [`verdict`] (which replica is routeless, from the prober's answers). Only `sensor` touches aya; everything after it is driven by plain
//! [`event::Event`] values and tested with canned events. [`hosts`] normalises host names
//! and bounds the hosts that get their own label; [`agent`] runs it all.

// Used only by the `routeskew` binary (src/main.rs), which a package shares with its library.
use anyhow as _;
use tracing_subscriber as _;

pub mod agent;
pub mod config;
pub mod discovery;
pub mod event;
#[cfg(test)]
mod fuzz_support;
pub mod hosts;
pub mod metrics;
pub mod pipeline;
pub mod probe;
pub mod sensor;
pub mod verdict;
