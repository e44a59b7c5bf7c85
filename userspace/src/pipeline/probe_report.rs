//! The probe-report conversion: the prober's own account of a probe (its HTTP client's
//! parsed answer), turned into the exchange the flow tracker would have produced from the
//! kernel's copy, so that one classifier judges both (the pipeline, for a probe the sensor
//! was blind to; the prober, for its verdict).

use crate::event::{Origin, ProbeCheck, ProbeReport};
use crate::hosts::normalize_host;
use crate::pipeline::flows::exchange::{ClientRequest, FlowEvent};
use crate::pipeline::http::{self, Method, ProbeRef};

/// The exchange a probe report describes, as the flow tracker would have produced it
/// from the kernel's copy, so that the same classifier judges it. There is no upstream
/// corroboration for it.
pub fn report_exchange(origin: Origin, report: &ProbeReport, ts_ns: u64) -> Option<FlowEvent> {
    let answer = report.response.as_ref()?;
    let response = http::response_from_parts(
        answer.status,
        &answer.reason,
        answer
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
        &answer.body_prefix,
    )
    .ok()?;
    Some(FlowEvent::Exchange {
        origin,
        request: ClientRequest {
            ts_ns,
            method: Method::Get,
            host: normalize_host(report.host.as_bytes()),
            target: 0,
            websocket: report.check == ProbeCheck::WebSocket,
            probe: true,
            probe_ref: ProbeRef::Check(report.id),
        },
        response,
        response_ts_ns: ts_ns,
        upstream_seen: false,
    })
}
