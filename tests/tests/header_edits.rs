//! Header edits of a route, both ways: what the upstream sees of the
//! request head (keys removed, set, added, `:authority` rewritten, the
//! client's address forwarded), what the client sees of the response head,
//! trailers-only answers included; and the same edits from a Rust director.

use bytes::Bytes;
use grpc_proxy::routing::edits::{Edits, HeaderEdits};
use grpc_proxy::{Call, ProxyBuilder, Route};
use grpc_proxy_tests::{cluster, proxy, proxy_test, Client, Upstream};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

fn request(metadata: &[(&'static str, &'static str)]) -> Request<Bytes> {
    let mut request = Request::new(Bytes::from("m"));
    for (k, v) in metadata {
        request
            .metadata_mut()
            .append(*k, MetadataValue::from_static(v));
    }
    request
}

proxy_test! {
    async fn request_and_response_heads_are_edited_as_the_route_says(driver) {
        let a = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            r#"{}
            [[routes]]
            headers = [{{ name = "x-trust", present = true }}]
            request_headers = {{ forward_peer = "x-forwarded-for", trust_forwarded = true }}
            cluster = "a"
            [[routes]]
            request_headers = {{ remove = ["x-drop", "x-echo-gone"], set = {{ "x-echo-set" = "new", "x-echo-path" = "${{path}}" }}, add = {{ "x-echo-peer" = "${{peer.ip}}", "x-echo-cert" = "${{tls.sha256}}" }}, authority = "svc.internal", forward_peer = "x-forwarded-for" }}
            response_headers = {{ set = {{ "x-served-by" = "grpc-proxy" }}, remove = ["x-upstream"], add = {{ "x-echo-more" = "resp" }} }}
            cluster = "a"
            "#,
            cluster("a", a.addr())
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        let response = client
            .unary("Unary", request(&[
                ("x-drop", "secret"),
                ("x-echo-gone", "1"),
                ("x-echo-set", "old-1"),
                ("x-echo-set", "old-2"),
                ("x-forwarded-for", "203.0.113.9"),
                ("x-keep", "yes"),
            ]))
            .await
            .expect("call");
        let seen = a.events();
        assert_eq!(seen.last_values(":authority"), ["svc.internal"]);
        assert_eq!(seen.last_values("x-drop"), Vec::<String>::new());
        assert_eq!(seen.last_values("x-echo-gone"), Vec::<String>::new());
        assert_eq!(seen.last_values("x-echo-set"), ["new"], "set replaces every value");
        assert_eq!(seen.last_values("x-echo-path"), ["/test.Echo/Unary"]);
        assert_eq!(seen.last_values("x-echo-peer"), ["127.0.0.1"]);
        assert_eq!(seen.last_values("x-echo-cert"), Vec::<String>::new(), "no certificate: left out");
        assert_eq!(seen.last_values("x-forwarded-for"), ["127.0.0.1"], "an untrusted value is replaced");
        assert_eq!(seen.last_values("x-keep"), ["yes"]);
        assert_eq!(seen.last_values("content-type"), ["application/grpc"]);
        // The response head: the upstream's own x-upstream removed, the
        // proxy's values there, the echoed request edits too.
        let md = response.metadata();
        assert!(md.get("x-upstream").is_none());
        assert_eq!(md.get("x-served-by").and_then(|v| v.to_str().ok()), Some("grpc-proxy"));
        assert_eq!(md.get("x-echo-more").and_then(|v| v.to_str().ok()), Some("resp"));
        assert_eq!(md.get("x-echo-set").and_then(|v| v.to_str().ok()), Some("new"));

        // A trailers-only answer (the upstream fails the call at once) is
        // a response head too.
        let status = client
            .unary("Unary", request(&[("x-fail-code", "9"), ("x-fail-message", "no")]))
            .await
            .expect_err("fails");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "no");
        assert_eq!(status.metadata().get("x-served-by").and_then(|v| v.to_str().ok()), Some("grpc-proxy"));
        assert_eq!(status.metadata().get("x-error-meta").and_then(|v| v.to_str().ok()), Some("yes"));

        // A route that trusts the client appends to what it sent.
        client
            .unary("Unary", request(&[("x-trust", "1"), ("x-forwarded-for", "203.0.113.9")]))
            .await
            .expect("call");
        assert_eq!(seen.last_values("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    }

    async fn a_streaming_response_keeps_its_trailers_unedited(driver) {
        let a = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            "{}\n[[routes]]\nresponse_headers = {{ set = {{ \"x-served-by\" = \"p\" }} }}\ncluster = \"a\"\n",
            cluster("a", a.addr())
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut req = request(&[("x-count", "3"), ("x-fail-after", "2")]);
        *req.get_mut() = Bytes::from("s");
        let response = client.server_stream(req).await.expect("stream");
        assert_eq!(response.metadata().get("x-served-by").and_then(|v| v.to_str().ok()), Some("p"));
        let status = grpc_proxy_tests::echo::collect(response.into_inner()).await.expect_err("ends ABORTED");
        assert_eq!(status.code(), Code::Aborted);
        assert!(status.metadata().get("x-served-by").is_none(), "trailers are not the head");
        assert_eq!(status.metadata().get("x-error-meta").and_then(|v| v.to_str().ok()), Some("trailer"));
    }

    async fn a_rust_director_returns_edits_with_its_route(driver) {
        let a = Upstream::start("a");
        let mut builder = ProxyBuilder::new("127.0.0.1:0".parse().expect("addr"));
        let users = builder.cluster("a", [a.addr()]);
        let proxy = builder
            .driver(driver)
            .cores(grpc_proxy::CoreSelection::Count(1))
            .start(move |_core| {
                move |call: &Call<'_>| {
                    let user = call.header("x-user").unwrap_or("anonymous").to_owned();
                    let edits = Edits {
                        request: HeaderEdits::new()
                            .remove("x-user")
                            .and_then(|e| e.set("x-echo-caller", &user))
                            .expect("valid edits"),
                        response: HeaderEdits::new().set("x-routed", "rust").expect("valid edits"),
                    };
                    Route::to(users).with_edits(edits)
                }
            })
            .expect("proxy starts");
        let mut client = Client::connect(proxy.local_addr()).await;
        let response = client.unary("Unary", request(&[("x-user", "bob")])).await.expect("call");
        assert_eq!(a.events().last_values("x-user"), Vec::<String>::new());
        assert_eq!(a.events().last_values("x-echo-caller"), ["bob"]);
        assert_eq!(response.metadata().get("x-echo-caller").and_then(|v| v.to_str().ok()), Some("bob"));
        assert_eq!(response.metadata().get("x-routed").and_then(|v| v.to_str().ok()), Some("rust"));
    }
}

#[test]
fn edits_that_cannot_be_made_are_config_errors() {
    let base =
        "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\ncluster = \"a\"\n";
    for (edit, want) in [
        (
            "request_headers = { set = { \":path\" = \"/x\" } }",
            "pseudo-header",
        ),
        (
            "request_headers = { remove = [\"te\"] }",
            "cannot be edited",
        ),
        (
            "request_headers = { add = { \"x-a\" = \"${nope}\" } }",
            "no variable ${nope}",
        ),
        (
            "request_headers = { add = { \"x-a\" = \"${jwt.sub}\" } }",
            "no jwt condition",
        ),
        (
            "response_headers = { authority = \"x\" }",
            "only request_headers",
        ),
        (
            "request_headers = { trust_forwarded = true }",
            "needs forward_peer",
        ),
        (
            "request_headers = { set = { \"X-Up\" = \"1\" } }",
            "lower case",
        ),
        (
            "request_headers = { forward_peer = \"x-peer-bin\" }",
            "forward_peer: a -bin key",
        ),
    ] {
        let text = format!("{base}{edit}\n");
        let e = grpc_proxy::Config::parse(&text, "t.toml")
            .expect_err(edit)
            .to_string();
        assert!(e.contains("routes[0]") && e.contains(want), "{edit}: {e}");
    }
}
