//! `--method` with `--data-bin`: any method of any service, here a tonic
//! server's `test.Echo` (the integration harness's, not ours), with the
//! request message given as protobuf bytes, for all four RPC kinds.

use std::time::Duration;

use bytes::Bytes;
use grpc_loadtest::run::{self, Rpc, RunOptions};
use grpc_proxy::Driver;
use grpc_proxy_tests::Upstream;

fn options(up: &Upstream, method: &str, rpc: Rpc, data: &'static [u8]) -> RunOptions {
    RunOptions {
        target: up.addr(),
        rpc,
        driver: Driver::Legacy,
        connections: 1,
        streams: 4,
        messages: 5,
        calls: Some(100),
        warmup: Duration::ZERO,
        method: Some(method.into()),
        data: Some(Bytes::from_static(data)),
        ..RunOptions::default()
    }
}

#[test]
fn the_four_kinds_of_any_method_with_a_message_given_as_bytes() {
    let up = Upstream::start("tonic");
    // The message is whatever the service takes: this one echoes bytes.
    let message = b"\x0a\x05hello";

    let r = run::run(&options(&up, "/test.Echo/Unary", Rpc::Unary, message)).expect("unary");
    assert_eq!((r.calls_ok, r.calls_failed), (100, 0), "{:?}", r.errors);
    assert_eq!(up.events().calls(), 100, "each call reached the service");
    assert_eq!(r.payload_bytes, message.len());
    // Every response echoed the request: bytes received as sent.
    assert!((r.mb_per_sec_sent - r.mb_per_sec_received).abs() < 1e-9);

    let r = run::run(&options(
        &up,
        "/test.Echo/ServerStream",
        Rpc::ServerStream,
        message,
    ))
    .expect("server stream");
    assert_eq!(r.calls_failed, 0, "{:?}", r.errors);
    let first = r.first_message_latency.as_ref().expect("first messages");
    assert_eq!(first.count, 100);
    // The service sends 3 copies (its own default, not --messages).
    assert_eq!(r.message_latency.as_ref().expect("gaps").count, 100 * 2);

    let r = run::run(&options(
        &up,
        "/test.Echo/ClientStream",
        Rpc::ClientStream,
        message,
    ))
    .expect("client stream");
    assert_eq!((r.calls_ok, r.calls_failed), (100, 0), "{:?}", r.errors);

    let r = run::run(&options(&up, "/test.Echo/Bidi", Rpc::Bidi, message)).expect("bidi");
    assert_eq!((r.calls_ok, r.calls_failed), (100, 0), "{:?}", r.errors);
    assert_eq!(
        r.message_latency.as_ref().expect("round trips").count,
        100 * 5
    );

    // A method that does not exist is counted by its gRPC status.
    let r = run::run(&options(&up, "/test.Echo/Nope", Rpc::Unary, message)).expect("runs");
    assert_eq!(r.calls_ok, 0);
    assert_eq!(r.errors.get("UNIMPLEMENTED"), Some(&100), "{:?}", r.errors);

    // A path that is not one is an error before anything runs.
    let bad = run::run(&options(&up, "test.Echo/Unary", Rpc::Unary, message));
    assert!(bad.is_err_and(|e| e.to_string().contains("/package.Service/Method")));
}
