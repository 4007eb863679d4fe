//! The descriptor-leak test on the h2 frame path, in a process of its own
//! (see `h2_frame_path.rs`).

#[path = "fd_leak.rs"]
mod fd_leak;

#[test]
fn this_binary_runs_the_h2_frame_path() {
    assert_eq!(
        grpc_proxy_tests::frame_path(),
        Some(grpc_proxy::config::FramePath::H2)
    );
}
