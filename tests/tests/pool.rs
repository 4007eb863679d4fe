//! The upstream pool: more connections when an upstream's stream limit is
//! reached, and GOAWAY honoured. Upstreams are bare h2 servers, whose
//! connections and stream limits the tests control.

use std::net::SocketAddr;

use bytes::Bytes;
use grpc_proxy_tests::raw::{client, request};
use grpc_proxy_tests::silent::{Options, Silent};
use grpc_proxy_tests::{cluster, proxy, proxy_test, proxy_to};

/// A bare h2 client with h2's default window.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    client(addr, 65_535).await
}

/// Sends a call and returns the response headers (trailers-only answers).
async fn call(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    method: &str,
) -> Option<http::HeaderMap> {
    let mut ready = send.clone().ready().await.expect("ready");
    let (response, mut body) = ready
        .send_request(request(addr, method), false)
        .expect("send");
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .expect("data");
    if method == "Hang" {
        // Leave it open; the caller keeps nothing but the upstream's count.
        std::mem::forget(body);
        std::mem::forget(response);
        return None;
    }
    Some(response.await.expect("response").headers().clone())
}

/// A proxy to `upstream` that may open one connection to it at a time.
fn one_connection_per_endpoint(
    driver: grpc_proxy::Driver,
    upstream: &Silent,
) -> grpc_proxy::ProxyHandle {
    proxy(
        driver,
        &format!(
            "max_connections_per_endpoint = 1\n{}\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", upstream.addr())
        ),
    )
}

/// `n` unary calls on one connection, sent together before any answer.
async fn unary_calls_at_once(addr: SocketAddr, n: usize) -> Vec<h2::client::ResponseFuture> {
    let client = h2_client(addr).await;
    let mut responses = Vec::new();
    for _ in 0..n {
        let mut ready = client.clone().ready().await.expect("ready");
        let (response, mut body) = ready
            .send_request(request(addr, "Unary"), false)
            .expect("send");
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .expect("data");
        responses.push(response);
    }
    responses
}

proxy_test! {
    async fn more_connections_open_when_an_upstream_limits_streams(driver) {
        // The upstream allows 2 streams per connection; 6 calls that never
        // end need 3 connections, and the proxy must open them rather than
        // queue calls behind the limit.
        let upstream = Silent::with(Options { max_concurrent_streams: Some(2), ..Options::default() }).await;
        let proxy = proxy_to(driver, upstream.addr());
        let addr = proxy.local_addr();
        let mut client = h2_client(addr).await;
        for _ in 0..6 {
            call(&mut client, addr, "Hang").await;
        }
        upstream.wait_requests(6).await;
        assert_eq!(upstream.connections(), 3);
    }

    async fn goaway_moves_new_calls_to_a_fresh_connection(driver) {
        // The upstream sends GOAWAY on each connection once it has its first
        // request, then still answers that request.
        let upstream = Silent::with(Options { goaway_after: Some(1), ..Options::default() }).await;
        let proxy = proxy_to(driver, upstream.addr());
        let addr = proxy.local_addr();
        let mut client = h2_client(addr).await;
        for expected in 1..=3 {
            let headers = call(&mut client, addr, "Unary").await.expect("answered");
            assert_eq!(headers["grpc-status"], "0", "the call in flight during GOAWAY finishes");
            assert_eq!(headers["x-connection"], expected.to_string().as_str(), "call {expected} on a fresh connection");
        }
        // Each connection got a GOAWAY; they are counted as the proxy sees
        // them (a refused new stream, or the connection's end).
        let goaways = || {
            proxy
                .metrics()
                .render()
                .lines()
                .find_map(|l| l.strip_prefix("grpc_proxy_upstream_goaways_total{cluster=\"a\"} "))
                .and_then(|v| v.parse::<u64>().ok())
                .expect("a GOAWAY count")
        };
        while goaways() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(goaways(), 3);
    }

    async fn calls_waiting_on_a_connection_that_goes_away_move_to_a_fresh_one(driver) {
        // The upstream takes one stream per connection, sends GOAWAY once
        // it has its first request and answers that one after 300 ms; the
        // proxy may open one connection to it at a time. Two calls come
        // together: the second waits for the first one's stream when the
        // GOAWAY comes. It was never sent, so it must go on a fresh
        // connection, not wait for the old one to close and fail with it.
        let upstream = Silent::with(Options {
            max_concurrent_streams: Some(1),
            goaway_after: Some(1),
            delay: Some(std::time::Duration::from_millis(300)),
            ..Options::default()
        })
        .await;
        let proxy = one_connection_per_endpoint(driver, &upstream);
        let addr = proxy.local_addr();
        let responses = unary_calls_at_once(addr, 2).await;
        let mut connections = Vec::new();
        for response in responses {
            let response = tokio::time::timeout(std::time::Duration::from_secs(10), response)
                .await
                .expect("answered within 10 s")
                .expect("response");
            let headers = response.headers();
            assert_eq!(headers["grpc-status"], "0", "{headers:?}");
            connections.push(headers["x-connection"].to_str().expect("text").to_owned());
        }
        assert_eq!(connections, ["1", "2"], "the second call on a fresh connection");
    }

    async fn a_stream_the_upstream_resets_makes_room_for_the_next_waiting_call(driver) {
        // The upstream takes one stream per connection and resets every
        // request (INTERNAL_ERROR); the proxy may open one connection to
        // it. Two calls come together: the second waits for the first
        // one's stream. The reset frees it: the second call must get it
        // (and be reset in turn), not wait for good behind a stream that
        // is gone, with every later call queued behind it.
        let upstream = Silent::with(Options {
            max_concurrent_streams: Some(1),
            reset_all: Some(h2::Reason::INTERNAL_ERROR),
            ..Options::default()
        })
        .await;
        let proxy = one_connection_per_endpoint(driver, &upstream);
        let addr = proxy.local_addr();
        let responses = unary_calls_at_once(addr, 3).await;
        for (i, response) in responses.into_iter().enumerate() {
            let response = tokio::time::timeout(std::time::Duration::from_secs(10), response)
                .await
                .unwrap_or_else(|_| panic!("call {i} answered within 10 s"))
                .expect("response");
            let headers = response.headers();
            assert_eq!(headers["grpc-status"], "13", "call {i}: the upstream's reset: {headers:?}");
        }
        assert_eq!(upstream.requests(), 3, "each call reached the upstream");
    }

    async fn flow_control_bounds_what_a_fast_upstream_can_push(driver) {
        // The upstream wants to send 16 MiB; the client reads nothing. With
        // end-to-end flow control the proxy takes from the upstream only
        // what its own window (1 MiB) holds plus what the client's window
        // (64 KiB, h2's default) lets it pass on, however long we wait.
        // Buffering proxies would swallow all 16 MiB in milliseconds.
        let upstream = Silent::with(Options::default()).await;
        let proxy = proxy_to(driver, upstream.addr());
        let addr = proxy.local_addr();
        let client = h2_client(addr).await;
        let mut ready = client.clone().ready().await.expect("ready");
        let (response, mut body) = ready.send_request(request(addr, "Flood"), false).expect("send");
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("data");
        let response = response.await.expect("headers come through");
        assert_eq!(response.status(), 200);
        // Give a buffering proxy ample time to take far more than the bound.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let sent = upstream.flood_sent();
        let bound = (1 << 20) + (64 << 10) + (64 << 10);
        assert!(sent <= bound, "the upstream pushed {sent} bytes past a client that reads nothing (bound {bound})");
        assert!(sent >= 64 << 10, "the upstream could send at least a window: {sent}");
        // Reading drains it: the client's window reopens and more flows.
        let mut body = response.into_body();
        let mut read = 0;
        while read < 4 << 20 {
            let chunk = body.data().await.expect("more data").expect("ok");
            read += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        assert!(upstream.flood_sent() >= 4 << 20);
    }
}
