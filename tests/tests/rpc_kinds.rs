//! All four RPC kinds, metadata, trailers and errors, through the proxy,
//! with tonic at both ends.

use bytes::Bytes;
use futures_util::StreamExt;
use grpc_proxy_tests::echo::collect;
use grpc_proxy_tests::{proxy_test, proxy_to, Client, Upstream};
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::{Code, Request};

proxy_test! {
    async fn unary_echoes(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(client.echo("hello").await.expect("call"), Bytes::from("hello"));
        assert_eq!(client.echo(Bytes::new()).await.expect("empty message"), Bytes::new());
    }

    async fn server_streaming(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut request = Request::new(Bytes::from("tick"));
        request.metadata_mut().insert("x-count", MetadataValue::from_static("25"));
        let stream = client.server_stream(request).await.expect("call").into_inner();
        let messages = collect(stream).await.expect("stream ends OK");
        assert_eq!(messages.len(), 25);
        assert!(messages.iter().all(|m| m == "tick"));
    }

    async fn client_streaming(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let messages = (0..50).map(|i| Bytes::from(vec![b'x'; i]));
        let answer = client
            .client_stream(Request::new(tokio_stream::iter(messages)))
            .await
            .expect("call")
            .into_inner();
        let total: u64 = (0..50).sum();
        assert_eq!(&answer[..8], &total.to_be_bytes());
        assert_eq!(&answer[8..], &50u64.to_be_bytes());
    }

    async fn bidi_streaming(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let (tx, mut replies) = client.open_bidi(1).await;
        // Ping-pong: each reply arrives before the next request is sent, so
        // the proxy must forward each message as it comes, not at the end.
        for i in 0..100u32 {
            let m = Bytes::from(i.to_be_bytes().to_vec());
            tx.send(m.clone()).await.expect("send");
            let reply = replies.next().await.expect("a reply").expect("not an error");
            assert_eq!(reply, m);
        }
        drop(tx);
        assert!(replies.next().await.is_none(), "the stream ends with OK");
    }

    async fn metadata_both_ways_and_binary_values_intact(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut request = Request::new(Bytes::from("m"));
        request.metadata_mut().insert("x-echo-text", MetadataValue::from_static("some value"));
        let raw: &[u8] = &[0, 159, 146, 150, 255, 1];
        request.metadata_mut().insert_bin("x-echo-trace-bin", BinaryMetadataValue::from_bytes(raw));
        request.metadata_mut().insert("x-not-echoed", MetadataValue::from_static("v"));
        let response = client.unary("Unary", request).await.expect("call");
        let md = response.metadata();
        assert_eq!(md.get("x-echo-text").expect("text metadata"), "some value");
        let bin = md.get_bin("x-echo-trace-bin").expect("binary metadata");
        assert_eq!(bin.to_bytes().expect("valid base64"), Bytes::from_static(raw));
        assert_eq!(md.get("x-upstream").expect("response header"), "a");
        assert!(md.get("x-not-echoed").is_none());
    }

    async fn app_errors_pass_with_message_details_and_metadata(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut request = Request::new(Bytes::from("m"));
        request.metadata_mut().insert("x-fail-code", MetadataValue::from_static("9"));
        request.metadata_mut().insert("x-fail-message", MetadataValue::from_static("not now: 100% busy"));
        let status = client.unary("Unary", request).await.expect_err("the upstream fails it");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "not now: 100% busy");
        assert_eq!(status.details(), b"details");
        assert_eq!(status.metadata().get("x-error-meta").expect("error metadata"), "yes");
    }

    async fn values_with_space_at_either_end_pass_both_ways(driver) {
        // gRPC leaves spaces in grpc-message unencoded, and grpc-go, grpc-java
        // and tonic send them raw: "no such user: " is a valid status. RFC
        // 9113 8.2.1 calls white space at either end malformed; the proxy
        // takes it as these implementations do, on both legs.
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut request = Request::new(Bytes::from("m"));
        request.metadata_mut().insert("x-fail-code", MetadataValue::from_static("5"));
        request.metadata_mut().insert("x-fail-message", MetadataValue::from_static("no such user: "));
        request.metadata_mut().insert("x-note", MetadataValue::from_static(" padded\t"));
        let status = client.unary("Unary", request).await.expect_err("the upstream fails it");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(status.message(), "no such user: ");
        assert_eq!(up.events().last_values("x-note"), [" padded\t"]);
        // And back (tonic percent-encodes the spaces of its grpc-message,
        // so the response leg is shown by a header the upstream echoes).
        let mut request = Request::new(Bytes::from("m"));
        request.metadata_mut().insert("x-echo-note", MetadataValue::from_static(" padded\t"));
        let response = client.unary("Unary", request).await.expect("answered");
        assert_eq!(response.metadata().get("x-echo-note").expect("echoed"), " padded\t");
    }

    async fn trailers_only_error_on_a_stream(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut request = Request::new(Bytes::from("m"));
        request.metadata_mut().insert("x-fail-code", MetadataValue::from_static("5"));
        // tonic answers a failed server-streaming call before any message
        // with a trailers-only response; the client sees the status at once.
        match client.server_stream(request).await {
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound);
                assert_eq!(status.details(), b"details");
            }
            Ok(response) => {
                let status = collect(response.into_inner()).await.expect_err("an error");
                assert_eq!(status.code(), Code::NotFound);
            }
        }
    }

    async fn trailers_after_data_carry_status_and_metadata(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut request = Request::new(Bytes::from("m"));
        request.metadata_mut().insert("x-count", MetadataValue::from_static("5"));
        request.metadata_mut().insert("x-fail-after", MetadataValue::from_static("2"));
        let mut stream = client.server_stream(request).await.expect("headers").into_inner();
        assert_eq!(stream.next().await.expect("1").expect("ok"), "m");
        assert_eq!(stream.next().await.expect("2").expect("ok"), "m");
        let status = stream.next().await.expect("trailers").expect_err("an error in trailers");
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status.message(), "failed mid-stream");
        assert_eq!(status.metadata().get("x-error-meta").expect("trailer metadata"), "trailer");
    }
}
