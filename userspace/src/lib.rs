//! routeskew: tells which Traefik replica answers with its own "no router matched" 404 or
//! fails WebSocket upgrades, from kernel observations of the replicas' sockets.
//!
//! Stages, in data-flow order: [`discovery`] → [`sensor`] → [`event`] → [`flows`] (with
//! [`http`] and [`h2`]) → [`classify`] → [`aggregate`] → [`metrics`]. Only `sensor` touches aya;
//! everything after it is driven by plain [`event::Event`] values and tested with canned
//! events. [`pipeline`] strings the post-sensor stages together and [`agent`] runs it all.

pub mod agent;
pub mod config;
pub mod discovery;
pub mod event;
pub mod hosts;
pub mod metrics;
pub mod pipeline;
pub mod probe;
pub mod sensor;
