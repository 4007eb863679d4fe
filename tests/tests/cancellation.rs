//! Cancellation both ways, and deadlines enforced by the proxy.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use grpc_proxy_tests::silent::Silent;
use grpc_proxy_tests::{cluster, proxy, proxy_test, proxy_to, Client, Upstream};
use tonic::{Code, Request};

proxy_test! {
    async fn a_client_that_cancels_cancels_the_upstream_call(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let call = tokio::spawn(async move { client.unary("Hang", Request::new(Bytes::from("x"))).await });
        up.events().wait_hanging(1).await;
        call.abort(); // drops the tonic call: RST_STREAM(CANCEL) to the proxy
        up.events().wait_cancelled(1).await;
    }

    async fn a_client_that_disconnects_cancels_every_upstream_call(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let client = Client::connect(proxy.local_addr()).await;
        let mut calls = Vec::new();
        for _ in 0..5 {
            let mut c = client.clone();
            calls.push(tokio::spawn(async move { c.unary("Hang", Request::new(Bytes::new())).await }));
        }
        up.events().wait_hanging(5).await;
        for c in &calls {
            c.abort();
        }
        drop(client); // the last handle: the connection closes
        up.events().wait_cancelled(5).await;
    }

    async fn an_upstream_that_dies_mid_call_ends_the_call_with_a_status(driver) {
        let mut up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let call = tokio::spawn(async move { client.unary("Hang", Request::new(Bytes::new())).await });
        up.events().wait_calls(1).await;
        up.stop();
        let status = call.await.expect("task").expect_err("the upstream went away");
        // A vanished connection is UNAVAILABLE; an upstream that manages to
        // reset the stream (CANCEL) as it shuts down is CANCELLED, as the
        // gRPC spec maps it. Either way the call ends with a status.
        assert!(matches!(status.code(), Code::Unavailable | Code::Cancelled), "{status:?}");
    }

    async fn grpc_timeout_is_forwarded_and_enforced_by_the_proxy(driver) {
        // An upstream that never answers nor times out, and a bare h2
        // client that runs no timer either (tonic's channel enforces
        // grpc-timeout itself, with CANCELLED): only the proxy can end
        // this call, and it must say DEADLINE_EXCEEDED and reset upstream.
        let mut silent = Silent::start().await;
        let proxy = proxy_to(driver, silent.addr());
        let tcp = tokio::net::TcpStream::connect(proxy.local_addr()).await.expect("connect");
        let (mut h2, connection) = h2::client::handshake(tcp).await.expect("handshake");
        tokio::spawn(connection);
        let request = http::Request::post(format!("http://{}/test.Echo/Hang", proxy.local_addr()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "200m")
            .body(())
            .expect("request");
        let (response, mut body) = h2.send_request(request, false).expect("send");
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 1, b'x']), true).expect("data");
        let response = response.await.expect("a response, not a reset");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "4", "trailers-only DEADLINE_EXCEEDED");
        let seen = silent.next_ended().await;
        assert_eq!(seen.grpc_timeout.as_deref(), Some("200m"), "forwarded unchanged");
        assert_eq!(seen.reset, Some(h2::Reason::CANCEL), "the proxy reset the upstream stream");
    }

    async fn a_client_deadline_reaches_a_tonic_upstream(driver) {
        // With tonic on both ends, whichever timer fires first ends the
        // call; the upstream's handler must be cancelled either way.
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut request = Request::new(Bytes::from("x"));
        request.set_timeout(Duration::from_millis(200));
        let status = client.unary("Hang", request).await.expect_err("deadline");
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        up.events().wait_cancelled(1).await;
    }

    async fn a_route_timeout_is_enforced_by_the_proxy_alone(driver) {
        let up = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            "{}\n[[routes]]\ncluster = \"a\"\ntimeout = \"150ms\"\n",
            cluster("a", up.addr())
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        // No client deadline: only the proxy can end this call.
        let status = client.unary("Hang", Request::new(Bytes::new())).await.expect_err("deadline");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().contains("proxy"), "{}", status.message());
        up.events().wait_cancelled(1).await;
    }

    async fn a_deadline_mid_stream_ends_with_trailers(driver) {
        let up = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            "{}\n[[routes]]\ncluster = \"a\"\ntimeout = \"2s\"\n",
            cluster("a", up.addr())
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        let (tx, mut replies) = client.open_bidi(1).await;
        tx.send(Bytes::from("one")).await.expect("send");
        assert_eq!(replies.next().await.expect("reply").expect("ok"), "one");
        // Keep the stream open; the route deadline ends it.
        let status = replies.next().await.expect("trailers").expect_err("deadline");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        drop(tx);
    }
}
