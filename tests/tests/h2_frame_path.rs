//! Suites of this directory run again with every proxy on the h2 frame
//! path (`[http2] frame_path = "h2"`), which is no longer the default but
//! still selectable: the harness's `proxy` sees this binary's name and
//! sets it (see `grpc_proxy_tests::frame_path`).
//!
//! Every suite runs here. `fd_leak` counts the process's descriptors, so
//! it runs in a process of its own (`h2_frame_path_fd_leak`).
//! `GRPC_PROXY_TEST_FRAME_PATH=h2` runs any suite on it.

#[path = "cancellation.rs"]
mod cancellation;
#[path = "concurrency.rs"]
mod concurrency;
#[path = "faults.rs"]
mod faults;
#[path = "isolation.rs"]
mod isolation;
#[path = "large.rs"]
mod large;
#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "operations.rs"]
mod operations;
#[path = "pool.rs"]
mod pool;
#[path = "routing.rs"]
mod routing;
#[path = "rpc_kinds.rs"]
mod rpc_kinds;
#[path = "tls.rs"]
mod tls;

#[test]
fn this_binary_runs_the_h2_frame_path() {
    assert_eq!(
        grpc_proxy_tests::frame_path(),
        Some(grpc_proxy::config::FramePath::H2)
    );
}
