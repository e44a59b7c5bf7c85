//! The flow tracker's limits and options.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub ws_early_close: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_pending_per_conn: usize,
    /// A request waiting longer than this for its response (behind a response that never
    /// ends, say) is shed and counted.
    pub max_request_age: Duration,
    /// The sensor reports upstream responses: pair them with upstream requests and count
    /// the upstream leg's unmatched responses and unanswered requests. Off (the sensor's
    /// default), upstream requests are corroboration records only.
    pub upstream_responses: bool,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            ws_early_close: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_connections: 65_536,
            max_pending_per_conn: 64,
            max_request_age: crate::pipeline::budget::DEFAULT_MAX_REQUEST_AGE,
            upstream_responses: false,
        }
    }
}
