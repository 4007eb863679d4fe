//! Suites of this directory run again with every proxy on the engine's own
//! HTTP/2 frame path (`[http2] frame_path = "own"`): the harness's `proxy`
//! sees this binary's name and sets it (see `grpc_proxy_tests::frame_path`).
//!
//! These are the suites the own path passes whole. The others (TLS,
//! retries, upstream keepalive, call limits, the silent-request timeout)
//! need parts
//! the own path does not have yet; `GRPC_PROXY_TEST_FRAME_PATH=own` runs any
//! suite on it to see where it stands.

#[path = "cancellation.rs"]
mod cancellation;
#[path = "concurrency.rs"]
mod concurrency;
#[path = "faults.rs"]
mod faults;
#[path = "large.rs"]
mod large;
#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "routing.rs"]
mod routing;
#[path = "rpc_kinds.rs"]
mod rpc_kinds;

#[test]
fn this_binary_runs_the_own_frame_path() {
    assert_eq!(
        grpc_proxy_tests::frame_path(),
        Some(grpc_proxy::config::FramePath::Own)
    );
}
