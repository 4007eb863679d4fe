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

/// The schema of the harness's `test.Echo`, as its users would write it.
const PROTO: &str = r#"
syntax = "proto3";
package test;
message Msg {
  string text = 1;
  int32 n = 2;
}
service Echo {
  rpc Unary(Msg) returns (Msg);
  rpc ServerStream(Msg) returns (stream Msg);
  rpc ClientStream(stream Msg) returns (Msg);
  rpc Bidi(stream Msg) returns (stream Msg);
}
"#;

/// `{"text": "hi", "n": 3}` as protobuf: field 1 "hi", field 2 = 3.
const HI3: &[u8] = &[0x0a, 0x02, b'h', b'i', 0x10, 0x03];

/// Loads `path` with the JSON request by `source`'s schema: the request
/// is the right bytes, the kind is the method's, and every call is OK.
fn load_with_schema(up: &Upstream, source: &grpc_loadtest::schema::Schema, path: &str, rpc: Rpc) {
    use grpc_loadtest::schema;
    let service = schema::service_of(path).expect("service");
    let pool = schema::pool(source, up.addr(), None, None, service).expect("schema");
    let call = schema::call(&pool, path, r#"{"text": "hi", "n": 3}"#).expect("call");
    assert_eq!(&call.request[..], HI3, "{source:?}");
    assert_eq!(call.rpc, rpc, "the kind comes from the schema");
    let before = up.events().calls();
    let mut o = options(up, path, call.rpc, b"");
    o.data = Some(call.request);
    let r = run::run(&o).expect("run");
    assert_eq!(
        (r.calls_ok, r.calls_failed),
        (100, 0),
        "{source:?}: {:?}",
        r.errors
    );
    assert_eq!(up.events().calls(), before + 100);
}

#[test]
fn json_requests_by_proto_file_descriptor_set_and_reflection() {
    use grpc_loadtest::schema::Schema;
    let dir = tempfile::tempdir().expect("dir");
    let proto = dir.path().join("echo.proto");
    std::fs::write(&proto, PROTO).expect("write proto");
    let set = protox::compile([&proto], [dir.path()]).expect("compile");
    let set_bytes = prost::Message::encode_to_vec(&set);
    let protoset = dir.path().join("echo.protoset");
    std::fs::write(&protoset, &set_bytes).expect("write protoset");

    let up = Upstream::start_with_reflection("tonic", set_bytes);
    let by_file = Schema::Proto {
        files: vec![proto.clone()],
        imports: vec![],
    };
    load_with_schema(&up, &by_file, "/test.Echo/Unary", Rpc::Unary);
    load_with_schema(&up, &by_file, "/test.Echo/Bidi", Rpc::Bidi);
    let by_set = Schema::Protoset(protoset);
    load_with_schema(&up, &by_set, "/test.Echo/Unary", Rpc::Unary);
    load_with_schema(&up, &by_set, "/test.Echo/ServerStream", Rpc::ServerStream);
    load_with_schema(&up, &Schema::Reflection, "/test.Echo/Unary", Rpc::Unary);
    load_with_schema(
        &up,
        &Schema::Reflection,
        "/test.Echo/ClientStream",
        Rpc::ClientStream,
    );

    // Mistakes are named: a JSON field the message lacks, a method the
    // service lacks, a server without reflection.
    use grpc_loadtest::schema;
    let pool = schema::pool(&by_file, up.addr(), None, None, "test.Echo").expect("schema");
    let bad = schema::call(&pool, "/test.Echo/Unary", r#"{"nope": 1}"#).expect_err("unknown field");
    assert!(bad.contains("test.Msg"), "{bad}");
    let bad = schema::call(&pool, "/test.Echo/Nope", "{}").expect_err("unknown method");
    assert!(bad.contains("no method"), "{bad}");
    let plain = Upstream::start("plain");
    let bad = schema::pool(&Schema::Reflection, plain.addr(), None, None, "test.Echo")
        .expect_err("no reflection");
    assert!(bad.starts_with("reflection:"), "{bad}");
}

#[test]
fn reflection_over_tls() {
    use grpc_loadtest::schema::{self, Schema};
    let dir = tempfile::tempdir().expect("dir");
    let proto = dir.path().join("echo.proto");
    std::fs::write(&proto, PROTO).expect("write proto");
    let set = protox::compile([&proto], [dir.path()]).expect("compile");
    let pki = grpc_proxy_tests::Pki::new();
    let up = Upstream::start_tls_with_reflection(
        "secure",
        &pki.server,
        prost::Message::encode_to_vec(&set),
    );
    let settings = grpc_proxy::config::UpstreamTls {
        ca: Some(pki.ca.cert.clone()),
        server_name: "localhost".into(),
        cert: None,
        key: None,
    };
    let tls = grpc_proxy::ClientTls::load(&settings, "localhost").expect("client TLS");
    let pool = schema::pool(
        &Schema::Reflection,
        up.addr(),
        None,
        Some(&tls),
        "test.Echo",
    )
    .expect("schema over TLS");
    let call = schema::call(&pool, "/test.Echo/Unary", r#"{"text": "hi", "n": 3}"#).expect("call");
    assert_eq!(&call.request[..], HI3);
    let mut o = options(&up, "/test.Echo/Unary", call.rpc, b"");
    o.data = Some(call.request);
    o.tls = Some(tls.clone());
    let r = run::run(&o).expect("run");
    assert_eq!((r.calls_ok, r.calls_failed), (100, 0), "{:?}", r.errors);
    // Without TLS, reflection fails with a reason, not a hang.
    let plain = schema::pool(&Schema::Reflection, up.addr(), None, None, "test.Echo")
        .expect_err("cleartext to a TLS server");
    assert!(plain.starts_with("reflection:"), "{plain}");
}
