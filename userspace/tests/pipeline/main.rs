//! The post-sensor pipeline driven by canned events, asserting exact exported values.
//!
//! Responses come from `fixtures/`, bytes captured from a real Traefik 3.7.15 and a Go
//! backend (see `fixtures/README.md`); event sequences follow the syscalls Traefik makes
//! (checked with strace): read the client request, write the upstream request, read the
//! upstream response, write the client response, close.

#![expect(
    unused_crate_dependencies,
    reason = "this target sees every dependency of its package and uses a few; the library target is checked"
)]
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions unwrap too (clippy.toml covers only tests); a panic there fails the test"
)]

mod harness;
mod probes;
mod robustness;
mod routing;
mod semantic;
mod semantic_heads;
mod upstream;
mod websocket;
