//! The table of kernel cases: each row is a data path, a sensor setting, a helper
//! scenario and the exact events the sensor must report for it (and, for some rows,
//! counters to check afterwards). The [`cases!`] macro turns every row into its own
//! libtest test, named by the row, so a failing row says which one it is.

use anyhow::{Context, Result};
use routeskew::event::{Direction::Read, Direction::Write, UpstreamFailureReason};
use routeskew::sensor::SensorConfig;

use crate::data_paths::Capture::{self, Classic, Off, Raw, Sock};
use crate::events::{
    assert_events, expected,
    Side::Client as C,
    Side::Server as S,
    Want,
    Want::{Closed, Data, Failure},
    REQUEST, RESPONSE, SECOND_REQUEST, UPGRADE_REQUEST, UPGRADE_RESPONSE,
};
use crate::harness::{preflight, Bench};
use crate::SERIAL;

/// One exchange with every message reported: the client writes the request with
/// write(2), the server reads it and answers with std's recvfrom/sendto, the client reads
/// the answer with read(2); then both close.
const HTTP: &[Want] = &[
    Data(C, Write, REQUEST),
    Data(S, Read, REQUEST),
    Data(S, Write, RESPONSE),
    Data(C, Read, RESPONSE),
    Closed(C, false),
    Closed(S, false),
];

/// [`HTTP`] without the response the client reads: to the kernel that is an upstream's
/// answer, not reported unless asked for.
const HTTP_NO_UPSTREAM_RESPONSE: &[Want] = &[
    Data(C, Write, REQUEST),
    Data(S, Read, REQUEST),
    Data(S, Write, RESPONSE),
    Closed(C, false),
    Closed(S, false),
];

/// The side that wrote a request later reads one on the same connection.
const REQUEST_BACK: &[Want] = &[
    Data(C, Write, REQUEST),
    Data(S, Read, REQUEST),
    Data(S, Write, RESPONSE),
    Data(S, Write, REQUEST),
    Data(C, Read, REQUEST),
    Closed(C, false),
    Closed(S, false),
];

/// Two exchanges on one keep-alive connection, the second request read as one byte and
/// then the rest: reported whole.
const READ_AHEAD: &[Want] = &[
    Data(C, Write, REQUEST),
    Data(S, Read, REQUEST),
    Data(S, Write, RESPONSE),
    Data(C, Write, SECOND_REQUEST),
    Data(S, Read, SECOND_REQUEST),
    Data(S, Write, RESPONSE),
    Closed(C, false),
    Closed(S, false),
];

/// A 101 and then HTTP-looking frames both ways: the frames are absent, both sides close
/// upgraded.
const UPGRADE: &[Want] = &[
    Data(C, Write, UPGRADE_REQUEST),
    Data(S, Read, UPGRADE_REQUEST),
    Data(S, Write, UPGRADE_RESPONSE),
    Data(C, Read, UPGRADE_RESPONSE),
    Closed(C, true),
    Closed(S, true),
];

/// [`UPGRADE`] without the 101 the client reads (an upstream response).
const UPGRADE_NO_UPSTREAM_RESPONSE: &[Want] = &[
    Data(C, Write, UPGRADE_REQUEST),
    Data(S, Read, UPGRADE_REQUEST),
    Data(S, Write, UPGRADE_RESPONSE),
    Closed(C, true),
    Closed(S, true),
];

/// Connects that never get an answer, in the helper's own network namespace (see
/// `helper::scenario_no_answer`).
const CONNECT_FAILURES: &[Want] = &[
    // The application gave up (closed the connecting socket).
    Failure(UpstreamFailureReason::Timeout, 0, [203, 0, 113, 3]),
    // Written right after giving up, with no TCP state change in between: the give-up is
    // reported ahead of it only when the close(2) mark worked. Without it the close would
    // wait in the per-CPU slot for the next state change (the next connect) and come
    // after this.
    Data(C, Write, REQUEST),
    Data(S, Read, REQUEST),
    // The kernel gave up after its SYN retries.
    Failure(
        UpstreamFailureReason::Timeout,
        libc::ETIMEDOUT,
        [203, 0, 113, 4],
    ),
    // Neighbour resolution failed: ICMP host unreachable.
    Failure(
        UpstreamFailureReason::Unreachable,
        libc::EHOSTUNREACH,
        [203, 0, 113, 2],
    ),
    Closed(C, false),
    Closed(S, false),
];

/// Checks a row makes after its events.
#[derive(Clone, Copy, Debug)]
enum Then {
    Nothing,
    /// One emitted record per syscall of [`HTTP`], nothing lost or undecodable.
    OneRecordPerSyscall,
    /// Nothing lost, no failed read, no full map, nothing undecodable.
    NothingLost,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
struct Case {
    path: Capture,
    /// The sensor's `upstream_responses`: also report responses a watched process reads.
    upstream_responses: bool,
    /// The sensor's `capture_len`; `None` for its default.
    capture_len: Option<u32>,
    /// The helper scenario (see `helper::helper_process`).
    scenario: &'static str,
    /// Run the helper in its own network namespace.
    own_netns: bool,
    want: &'static [Want],
    then: Then,
    /// Runs the kernel skipped (TCP tracepoints in softirqs interrupting a syscall
    /// program on the classic path) make a run prove nothing either way: such a run is
    /// repeated, up to three times. An event missing without a counted skip fails at once.
    retry_skipped_runs: bool,
}

impl Case {
    fn new(path: Capture, scenario: &'static str, want: &'static [Want]) -> Case {
        Case {
            path,
            upstream_responses: false,
            capture_len: None,
            scenario,
            own_netns: false,
            want,
            then: Then::Nothing,
            retry_skipped_runs: false,
        }
    }

    /// Every message both ways, as the pipeline saw them before upstream responses were
    /// left out by default.
    fn everything(self) -> Case {
        Case {
            upstream_responses: true,
            ..self
        }
    }

    fn capture_len(self, n: u32) -> Case {
        Case {
            capture_len: Some(n),
            ..self
        }
    }

    fn then(self, then: Then) -> Case {
        Case { then, ..self }
    }

    fn no_answer(self) -> Case {
        Case {
            own_netns: true,
            retry_skipped_runs: true,
            ..self
        }
    }

    fn sensor_config(&self) -> Result<SensorConfig> {
        let defaults = SensorConfig::default();
        Ok(SensorConfig {
            object: Some(preflight()?),
            upstream_responses: self.upstream_responses,
            data_hooks: self.path.hooks(),
            capture_len: self.capture_len.unwrap_or(defaults.capture_len),
            ..defaults
        })
    }
}

/// Runs one row: the sensor on the row's path watching a fresh cgroup, the helper
/// scenario inside it, and the events compared with the row's.
async fn run(tag: &str, case: Case) -> Result<()> {
    let cfg = case.sensor_config()?;
    let capture_len = cfg.capture_len;
    let mut bench = Bench::start(tag, cfg).await?;
    let attempts = if case.retry_skipped_runs { 3 } else { 1 };
    for attempt in 1..=attempts {
        let misses = bench.misses();
        let exchange = bench.exchange(case.scenario, case.own_netns).await?;
        let want = expected(case.want, exchange.ids(), capture_len);
        let skipped = bench.misses() - misses;
        if exchange.got == want || skipped == 0 || attempt == attempts {
            if exchange.got != want {
                // What the kernel counted, so that a difference can be explained.
                eprintln!(
                    "skipped runs: {skipped}; counters: {:?}",
                    bench.sensor.totals()
                );
            }
            assert_events(&exchange.got, &want);
            return check_after(&bench, case);
        }
        eprintln!(
            "attempt {attempt}: the kernel skipped {skipped} program runs (counted in \
             routeskew_sensor_program_misses_total), events differ; running again"
        );
    }
    unreachable!("the last attempt returns")
}

/// The row's checks after its events.
fn check_after(bench: &Bench, case: Case) -> Result<()> {
    let totals = || -> Result<_> {
        let totals = bench
            .sensor
            .totals()
            .context("reading the sensor's totals")?;
        assert!(
            totals
                .iter()
                .all(|t| t.lost == 0 && t.map_full == 0 && t.read_failures == 0),
            "{totals:?}"
        );
        assert_eq!(bench.sensor.decode_errors(), 0);
        Ok(totals)
    };
    match case.then {
        Then::Nothing => {}
        Then::NothingLost => {
            totals()?;
        }
        Then::OneRecordPerSyscall => {
            // Counters keep one slot per syscall on every path.
            let totals = totals()?;
            let emitted = |name: &str| {
                totals
                    .iter()
                    .find(|t| t.program == name)
                    .map_or(0, |t| t.emitted)
            };
            assert_eq!(emitted("sys_exit_write"), 1);
            assert_eq!(emitted("sys_exit_read"), 1);
            assert_eq!(emitted("sys_exit_recvfrom"), 1);
            assert_eq!(emitted("sys_exit_sendto"), 1);
            // The socket path reports the end of a captured socket from
            // inet_sock_set_state.
            let closes = match case.path {
                Sock => "inet_sock_set_state",
                Raw | Classic => "sys_enter_close",
                Off => unreachable!("the cases run on a data path"),
            };
            assert_eq!(emitted(closes), 2);
        }
    }
    Ok(())
}

/// One `#[tokio::test]` per row, named by the row.
macro_rules! cases {
    ($($(#[doc = $doc:literal])* $name:ident: $case:expr;)*) => {$(
        $(#[doc = $doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<()> {
            let _serial = SERIAL.lock().await;
            run(stringify!($name), $case).await
        }
    )*};
}

cases! {
    /// Every message of one exchange, on each data path (client side read(2)/write(2),
    /// server side recvfrom/sendto), and one record per syscall in the counters.
    captures_request_response_and_close:
        Case::new(Sock, "http", HTTP).everything().then(Then::OneRecordPerSyscall);
    raw_sys_exit_captures_request_response_and_close:
        Case::new(Raw, "http", HTTP).everything().then(Then::OneRecordPerSyscall);
    classic_fallback_captures_request_response_and_close:
        Case::new(Classic, "http", HTTP).everything().then(Then::OneRecordPerSyscall);

    /// By default a response a watched process *reads* (an upstream's answer) is not
    /// reported; requests both ways and responses it writes are.
    upstream_responses_are_not_reported_by_default:
        Case::new(Sock, "http", HTTP_NO_UPSTREAM_RESPONSE);
    raw_sys_exit_leaves_out_upstream_responses:
        Case::new(Raw, "http", HTTP_NO_UPSTREAM_RESPONSE);
    classic_fallback_leaves_out_upstream_responses:
        Case::new(Classic, "http", HTTP_NO_UPSTREAM_RESPONSE);

    /// A request read on a connection the kernel took for an upstream one (it wrote a
    /// request first) is still reported, on every data path.
    request_read_on_an_upstream_connection_is_reported:
        Case::new(Sock, "request_back", REQUEST_BACK);
    raw_sys_exit_reports_a_request_read_on_an_upstream_connection:
        Case::new(Raw, "request_back", REQUEST_BACK);
    classic_fallback_reports_a_request_read_on_an_upstream_connection:
        Case::new(Classic, "request_back", REQUEST_BACK);

    /// Go's background read on a keep-alive connection: while a handler runs, the server
    /// reads one byte; when the client's next request arrives in that window, that byte
    /// is its first and the next read returns the rest (`ET /second ...`). The request is
    /// still reported whole, on every data path.
    a_request_split_by_a_one_byte_read_is_reported_whole:
        Case::new(Sock, "read_ahead", READ_AHEAD).then(Then::NothingLost);
    raw_sys_exit_reports_a_request_split_by_a_one_byte_read_whole:
        Case::new(Raw, "read_ahead", READ_AHEAD).then(Then::NothingLost);
    classic_fallback_reports_a_request_split_by_a_one_byte_read_whole:
        Case::new(Classic, "read_ahead", READ_AHEAD).then(Then::NothingLost);

    /// A 1-byte read on a connection that never carried HTTP keeps nothing: the read
    /// after it (`ET /kernel-test ...`) is not taken for a request. Only the control
    /// exchange on a second connection is reported.
    a_one_byte_read_on_a_fresh_connection_reports_nothing:
        Case::new(Sock, "one_byte_fresh", HTTP).everything();

    /// Non-HTTP bytes both ways produce nothing: only the HTTP exchange on the second
    /// connection (the control) is reported.
    non_http_bytes_produce_nothing: Case::new(Sock, "non_http", HTTP).everything();

    /// After a 101 the frame-like request and response are absent: the side that wrote
    /// the 101 and the side that read it are both marked upgraded in the kernel, also
    /// when the 101 it read was not reported (`upstream_responses` off).
    upgraded_connection_frames_are_not_copied: Case::new(Sock, "upgrade", UPGRADE).everything();
    unreported_upstream_101_still_stops_copying:
        Case::new(Sock, "upgrade", UPGRADE_NO_UPSTREAM_RESPONSE);
    raw_sys_exit_stops_copying_after_an_upgrade:
        Case::new(Raw, "upgrade", UPGRADE_NO_UPSTREAM_RESPONSE);
    classic_fallback_stops_copying_after_an_upgrade:
        Case::new(Classic, "upgrade", UPGRADE_NO_UPSTREAM_RESPONSE);

    /// With a prefix too short to hold a status code, a 101 is still recognised (from a
    /// separate read of the head) and the connection's frames are not copied.
    short_capture_still_sees_upgrades:
        Case::new(Sock, "upgrade", UPGRADE_NO_UPSTREAM_RESPONSE).capture_len(8);

    /// Connects that never get an answer, inside the helper's own network namespace: a
    /// veth whose far end answers nothing swallows the SYNs, and a missing neighbour makes
    /// the kernel send itself ICMP host unreachable.
    ///
    /// The application giving up is told from the kernel giving up by whether the
    /// socket's owner is inside close(2): read from its saved registers where the kernel
    /// has BTF, from a mark set at `sys_enter_close` and cleared at `sys_exit_close` on
    /// the classic path.
    connect_timeouts_and_unreachable_are_classified:
        Case::new(Sock, "no_answer", CONNECT_FAILURES).no_answer();
    raw_sys_exit_classifies_connect_failures:
        Case::new(Raw, "no_answer", CONNECT_FAILURES).no_answer();
    classic_fallback_classifies_connect_failures:
        Case::new(Classic, "no_answer", CONNECT_FAILURES).no_answer();
}
