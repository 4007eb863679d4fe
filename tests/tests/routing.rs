//! The director: config routes by method, service, prefix and metadata, a
//! custom Rust director, rejections, and unknown methods.

use grpc_proxy::{Call, Code as ProxyCode, ProxyBuilder, Route, Status as ProxyStatus};
use grpc_proxy_tests::raw::{client as h2_client, read_body, request};
use grpc_proxy_tests::{cluster, proxy, proxy_test, proxy_to, Client, Upstream};
use tonic::Code;

async fn upstream_of(
    client: &mut Client,
    method: &str,
    metadata: &[(&'static str, &'static str)],
) -> Result<String, tonic::Status> {
    client.upstream_of(method, metadata).await
}

proxy_test! {
    async fn a_request_that_is_not_grpc_is_told_why_in_a_body(driver) {
        let upstream = Upstream::start("a");
        let proxy = proxy_to(driver, upstream.addr());
        let addr = proxy.local_addr();
        let mut h2 = h2_client(addr, 65_535).await;
        for method in ["GET", "POST", "HEAD"] {
            let plain = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}/"))
                .body(())
                .expect("request");
            h2 = h2.ready().await.expect("ready");
            let (response, _) = h2.send_request(plain, true).expect("send");
            let mut response = response.await.expect("response");
            assert_eq!(response.status(), 415, "{method}");
            let header = |name: &str| {
                response.headers().get(name).map(|v| v.to_str().expect("text").to_owned())
            };
            assert_eq!(header("content-type").as_deref(), Some("text/plain; charset=utf-8"));
            let length: usize = header("content-length").expect("a length").parse().expect("a number");
            let body = read_body(response.body_mut()).await;
            if method == "HEAD" {
                assert!(body.is_empty(), "a HEAD answer has no body");
            } else {
                assert_eq!(body.len(), length, "{method}");
                let text = String::from_utf8(body).expect("text");
                assert!(text.contains("application/grpc"), "says why: {text}");
            }
        }
        // The connection still carries gRPC calls.
        h2 = h2.ready().await.expect("ready");
        let (response, mut body) = h2.send_request(request(addr, "Unary"), false).expect("send");
        body.send_data(grpc_proxy_tests::raw::frame(b"hi"), true).expect("data");
        let mut response = response.await.expect("response");
        assert_eq!(response.status(), 200);
        assert!(!read_body(response.body_mut()).await.is_empty(), "the echo's reply");
        let trailers = response.body_mut().trailers().await.expect("trailers").expect("some");
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    }

    async fn routes_by_method_and_by_header_to_two_upstreams(driver) {
        let (a, b) = (Upstream::start("a"), Upstream::start("b"));
        let proxy = proxy(driver, &format!(
            "{}{}
            [[routes]]
            headers = [{{ name = \"x-tenant\", value = \"blue\" }}]
            cluster = \"b\"
            [[routes]]
            method = \"/test.Echo/Unary\"
            cluster = \"a\"
            [[routes]]
            path_prefix = \"/test.\"
            cluster = \"b\"
            ",
            cluster("a", a.addr()),
            cluster("b", b.addr())
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(upstream_of(&mut client, "Unary", &[]).await.expect("routed"), "a");
        assert_eq!(upstream_of(&mut client, "Unary", &[("x-tenant", "blue")]).await.expect("routed"), "b");
        // Same method, other tenant: the method route.
        assert_eq!(upstream_of(&mut client, "Unary", &[("x-tenant", "red")]).await.expect("routed"), "a");
        // Another method of the service goes by prefix to b, which has no
        // such method: b's own UNIMPLEMENTED comes back, proving b got it.
        let status = upstream_of(&mut client, "Nope", &[]).await.expect_err("b has no Nope");
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(status.message().contains("test.Echo has no method"), "{}", status.message());
        assert_eq!(a.events().calls(), 2);
        assert_eq!(b.events().calls(), 2);
    }

    async fn token_allow_list_and_permission_denied(driver) {
        let a = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            "{}
            [[routes]]
            service = \"test.Echo\"
            headers = [{{ name = \"authorization\", values = [\"Bearer good\", \"Bearer also-good\"] }}]
            cluster = \"a\"
            [[routes]]
            service = \"test.Echo\"
            reject = {{ code = \"PERMISSION_DENIED\", message = \"token not allowed\" }}
            ",
            cluster("a", a.addr())
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(upstream_of(&mut client, "Unary", &[("authorization", "Bearer also-good")]).await.expect("allowed"), "a");
        for bad in [&[("authorization", "Bearer bad")][..], &[]] {
            let status = upstream_of(&mut client, "Unary", bad).await.expect_err("refused");
            assert_eq!(status.code(), Code::PermissionDenied);
            assert_eq!(status.message(), "token not allowed");
        }
        assert_eq!(a.events().calls(), 1, "refused calls never reach the upstream");
    }

    async fn unknown_methods_are_unimplemented_without_a_default_route(driver) {
        let a = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            "{}\n[[routes]]\nmethod = \"/test.Echo/Unary\"\ncluster = \"a\"\n",
            cluster("a", a.addr())
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        let status = upstream_of(&mut client, "Bidi", &[]).await.expect_err("no route");
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(status.message().contains("/test.Echo/Bidi"), "{}", status.message());
        assert_eq!(a.events().calls(), 0);
    }

    async fn a_custom_rust_director(driver) {
        let (a, b) = (Upstream::start("a"), Upstream::start("b"));
        let settings = grpc_proxy::config::Settings::default();
        let mut builder = ProxyBuilder::new("127.0.0.1:0".parse().expect("addr"))
            .cores(grpc_proxy::CoreSelection::Count(1))
            .driver(driver)
            .settings(settings);
        let ca = builder.cluster("a", [a.addr()]);
        let cb = builder.cluster("b", [b.addr()]);
        let proxy = builder
            .start(move |_core| {
                // Per-core state without locks: a counter in a Cell.
                let seen = std::cell::Cell::new(0u32);
                move |call: &Call<'_>| {
                    seen.set(seen.get() + 1);
                    match (call.service(), call.header("x-shard")) {
                        ("test.Echo", Some("even")) => Route::to(cb),
                        ("test.Echo", _) if seen.get() < 1000 => Route::to(ca),
                        _ => Route::Reject(ProxyStatus::new(ProxyCode::Unauthenticated, "go away")),
                    }
                }
            })
            .expect("starts");
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(upstream_of(&mut client, "Unary", &[]).await.expect("routed"), "a");
        assert_eq!(upstream_of(&mut client, "Unary", &[("x-shard", "even")]).await.expect("routed"), "b");
    }
}
