//! Verified bearer tokens: a route's `jwt` condition with keys from a
//! JWKS file, each way a token can be bad refused with the right code and
//! nothing sent upstream, claims passed upstream as configured, and a key
//! rotation taken up by a reload while calls run.

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use grpc_proxy::{Config, ProxyBuilder, ProxyHandle};
use grpc_proxy_tests::admin::{must_sample, request as admin, sample};
use grpc_proxy_tests::tokens::{self, claims, hs256, jwks_file, unsigned, SigningKey, ISSUER};
use grpc_proxy_tests::{cluster, proxy_test, Client, Driver, Upstream};
use serde_json::json;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

/// The keys every test signs with; an RSA key takes a moment to make.
struct Keys {
    rsa: SigningKey,
    ec: SigningKey,
    ed: SigningKey,
    /// Not in any JWKS, published under `ec`'s kid by a forger.
    stranger: SigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: SigningKey::rsa("rsa-1"),
        ec: SigningKey::ec("ec-1"),
        ed: SigningKey::ed("ed-1"),
        stranger: SigningKey::ec("ec-1"),
    })
}

fn config(upstream: &Upstream, jwks: &Path) -> Config {
    let text = format!(
        r#"listen = "127.0.0.1:0"
cores = 1
{}
[[routes]]
service = "test.Echo"
jwt = {{ issuer = "{ISSUER}", audiences = ["api", "api-2"], jwks = "{}", claims = [{{ name = "scope", contains = "echo" }}] }}
request_headers = {{ remove = ["authorization"], set = {{ "x-echo-user" = "${{jwt.sub}}" }} }}
cluster = "a"
"#,
        cluster("a", upstream.addr()),
        jwks.display()
    );
    Config::parse(&text, "jwt.toml").expect("valid config")
}

fn start(driver: Driver, config: &Config) -> ProxyHandle {
    let (builder, routes) = ProxyBuilder::from_config(config).expect("builder");
    builder.driver(driver).start(routes).expect("proxy starts")
}

/// A unary call with this `authorization` (none for `None`); the
/// `x-echo-user` the upstream saw, or the status.
async fn call(client: &mut Client, authorization: Option<&str>) -> Result<String, tonic::Status> {
    let mut request = Request::new(Bytes::from("m"));
    if let Some(value) = authorization {
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(value).expect("ASCII token"),
        );
    }
    let response = client.unary("Unary", request).await?;
    Ok(response
        .metadata()
        .get("x-echo-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_owned())
}

fn scoped(sub: &str) -> serde_json::Value {
    let mut c = claims(sub);
    c["scope"] = json!("read echo");
    c
}

proxy_test! {
    async fn a_good_token_of_each_algorithm_is_routed_and_its_claims_go_upstream(driver) {
        let k = keys();
        let dir = tempfile::tempdir().expect("dir");
        let jwks = jwks_file(&dir, &[&k.rsa, &k.ec, &k.ed]);
        let a = Upstream::start("a");
        let proxy = start(driver, &config(&a, &jwks));
        let mut client = Client::connect(proxy.local_addr()).await;
        for (key, sub) in [(&k.rsa, "rsa-user"), (&k.ec, "ec-user"), (&k.ed, "ed-user")] {
            let token = key.sign(&scoped(sub));
            let bearer = format!("Bearer {token}");
            assert_eq!(call(&mut client, Some(&bearer)).await.expect("allowed"), sub);
            // The credential was removed on the way; the claim was added.
            assert_eq!(a.events().last_values("authorization"), Vec::<String>::new());
            assert_eq!(a.events().last_values("x-echo-user"), [sub]);
            // Again, from the worker's cache.
            assert_eq!(call(&mut client, Some(&bearer)).await.expect("allowed again"), sub);
        }
        // The scheme is not case-sensitive, and a list audience matches.
        let mut c = scoped("list-aud");
        c["aud"] = json!(["other", "api-2"]);
        let token = k.ec.sign(&c);
        assert_eq!(call(&mut client, Some(&format!("bearer {token}"))).await.expect("allowed"), "list-aud");
        assert_eq!(a.events().calls(), 7);
    }

    async fn token_checks_cache_hits_and_refusals_by_reason_show_in_the_metrics(driver) {
        let k = keys();
        let dir = tempfile::tempdir().expect("dir");
        let jwks = jwks_file(&dir, &[&k.ec]);
        let a = Upstream::start("a");
        let mut proxy = start(driver, &config(&a, &jwks));
        let admin_addr = proxy
            .serve_admin("127.0.0.1:0".parse().expect("addr"), None)
            .expect("admin serves");
        let mut client = Client::connect(proxy.local_addr()).await;
        let bearer = |c: &serde_json::Value| format!("Bearer {}", k.ec.sign(c));
        // A good token: checked once, then from the cache.
        let good = bearer(&scoped("alice"));
        for _ in 0..3 {
            call(&mut client, Some(&good)).await.expect("allowed");
        }
        // An expired one the issuer signed: checked once, kept, refused twice.
        let mut c = scoped("bob");
        c["exp"] = json!(tokens::now() - 3600);
        let expired = bearer(&c);
        // A forged one: checked once, then remembered apart from the
        // good ones (anyone can make them: they must push none out).
        let forged = format!("Bearer {}", k.stranger.sign(&scoped("mallory")));
        // A good token whose claims do not allow the call: checked once.
        let mut c = scoped("carol");
        c["scope"] = json!("read");
        let narrow = bearer(&c);
        for (authorization, code) in [
            (Some(expired.as_str()), Code::Unauthenticated),
            (Some(expired.as_str()), Code::Unauthenticated),
            (Some(forged.as_str()), Code::Unauthenticated),
            (Some(forged.as_str()), Code::Unauthenticated),
            (Some(narrow.as_str()), Code::PermissionDenied),
            (None, Code::Unauthenticated),
        ] {
            let status = call(&mut client, authorization).await.expect_err("refused");
            assert_eq!(status.code(), code, "{status:?}");
        }
        assert_eq!(a.events().calls(), 3);

        let (status, text) = admin(admin_addr, "GET", "/metrics");
        assert_eq!(status, 200);
        let value = |series: &str| must_sample(&text, series);
        assert_eq!(value("grpc_proxy_jwt_checks_total{core=\"0\"}"), 4.0);
        assert_eq!(value("grpc_proxy_jwt_cache_hits_total{core=\"0\"}"), 4.0);
        assert_eq!(value("grpc_proxy_jwt_refusals_total{reason=\"expired\"}"), 2.0);
        assert_eq!(value("grpc_proxy_jwt_refusals_total{reason=\"bad_signature\"}"), 2.0);
        assert_eq!(value("grpc_proxy_jwt_refusals_total{reason=\"claims\"}"), 1.0);
        assert_eq!(value("grpc_proxy_jwt_refusals_total{reason=\"missing\"}"), 1.0);
        assert_eq!(sample(&text, "grpc_proxy_jwt_refusals_total{reason=\"malformed\"}"), None);
    }

    async fn every_bad_token_is_refused_and_nothing_reaches_the_upstream(driver) {
        let k = keys();
        let dir = tempfile::tempdir().expect("dir");
        let jwks = jwks_file(&dir, &[&k.rsa, &k.ec, &k.ed]);
        let a = Upstream::start("a");
        let proxy = start(driver, &config(&a, &jwks));
        let mut client = Client::connect(proxy.local_addr()).await;
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut c = scoped("mallory");
            f(&mut c);
            k.ec.sign(&c)
        };
        let now = tokens::now();
        let cases: Vec<(&str, Option<String>, Code, &str)> = vec![
            ("no authorization", None, Code::Unauthenticated, "missing bearer token"),
            ("not a bearer token", Some("Basic dXNlcjpwdw==".into()), Code::Unauthenticated, "missing bearer token"),
            ("not a JWT", Some("Bearer not.a.token".into()), Code::Unauthenticated, "malformed"),
            ("expired", Some(with(&|c| c["exp"] = json!(now - 3600))), Code::Unauthenticated, "expired"),
            ("not yet valid", Some(with(&|c| c["nbf"] = json!(now + 3600))), Code::Unauthenticated, "not yet valid"),
            ("no exp", Some(with(&|c| { c.as_object_mut().map(|o| o.remove("exp")); })), Code::Unauthenticated, "lacks exp"),
            ("another issuer", Some(with(&|c| c["iss"] = json!("https://evil.test"))), Code::Unauthenticated, "another issuer"),
            ("another audience", Some(with(&|c| c["aud"] = json!("other-api"))), Code::Unauthenticated, "another audience"),
            ("no audience", Some(with(&|c| { c.as_object_mut().map(|o| o.remove("aud")); })), Code::Unauthenticated, "lacks"),
            ("audience not a string", Some(with(&|c| c["aud"] = json!(5))), Code::Unauthenticated, "token"),
            ("issuer as a list", Some(with(&|c| c["iss"] = json!([ISSUER, "https://evil.test"]))), Code::Unauthenticated, "malformed"),
            ("exp not a number", Some(with(&|c| c["exp"] = json!("tomorrow"))), Code::Unauthenticated, "token"),
            ("signed by a key not in the JWKS", Some(k.stranger.sign(&scoped("mallory"))), Code::Unauthenticated, "signature"),
            ("alg none", Some(unsigned(&scoped("mallory"))), Code::Unauthenticated, "token"),
            ("HS256 with the RSA public key as secret", Some(hs256(&k.rsa.public, "rsa-1", &scoped("mallory"))), Code::Unauthenticated, "not allowed"),
            ("HS256 with the EC public key as secret", Some(hs256(&k.ec.public, "ec-1", &scoped("mallory"))), Code::Unauthenticated, "not allowed"),
            ("oversized", Some(with(&|c| c["pad"] = json!("x".repeat(9000)))), Code::Unauthenticated, "too large"),
            ("claims do not match", Some(with(&|c| c["scope"] = json!("read"))), Code::PermissionDenied, "claims"),
            ("claim missing", Some(with(&|c| { c.as_object_mut().map(|o| o.remove("scope")); })), Code::PermissionDenied, "claims"),
        ];
        for (what, token, code, reason) in cases {
            let header = token.map(|t| if t.starts_with("Basic") { t } else { format!("Bearer {t}") });
            let status = call(&mut client, header.as_deref()).await.expect_err(what);
            assert_eq!(status.code(), code, "{what}: {}", status.message());
            assert!(status.message().contains(reason), "{what}: {}", status.message());
        }
        // A signature cut short or altered is refused too.
        let good = k.rsa.sign(&scoped("alice"));
        let mut altered = good.clone().into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).expect("ASCII");
        let status = call(&mut client, Some(&format!("Bearer {altered}"))).await.expect_err("altered");
        assert_eq!(status.code(), Code::Unauthenticated);
        // Two authorization fields: the upstream could read the other one.
        let mut request = Request::new(Bytes::from("m"));
        for value in [format!("Bearer {good}"), "Bearer forged".to_owned()] {
            request.metadata_mut().append("authorization", MetadataValue::try_from(value).expect("ASCII"));
        }
        let status = client.unary("Unary", request).await.expect_err("two tokens");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains("more than one"), "{}", status.message());
        assert_eq!(a.events().calls(), 0, "no refused call reached the upstream");
        // The same connection still carries good calls.
        assert_eq!(call(&mut client, Some(&format!("Bearer {good}"))).await.expect("allowed"), "alice");
        assert_eq!(a.events().calls(), 1);
    }

    async fn a_key_rotation_is_taken_up_by_a_reload_while_calls_run(driver) {
        let k = keys();
        let dir = tempfile::tempdir().expect("dir");
        let jwks = jwks_file(&dir, &[&k.ec]);
        let a = Upstream::start("a");
        let cfg = config(&a, &jwks);
        let proxy = start(driver, &cfg);
        let old = format!("Bearer {}", k.ec.sign(&scoped("old")));
        let new = format!("Bearer {}", k.ed.sign(&scoped("new")));
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(call(&mut client, Some(&old)).await.expect("old key"), "old");
        assert_eq!(call(&mut client, Some(&new)).await.expect_err("not yet").code(), Code::Unauthenticated);

        // Calls with the old token run throughout: each is answered,
        // allowed before the reload and refused after, never failed.
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let addr = proxy.local_addr();
        let token = old.clone();
        let runner = tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let (mut allowed, mut refused_after, mut stopping) = (0u32, false, false);
            loop {
                match call(&mut client, Some(&token)).await {
                    Ok(_) => {
                        assert!(!refused_after, "allowed again after a refusal");
                        allowed += 1;
                    }
                    Err(s) => {
                        assert_eq!(s.code(), Code::Unauthenticated, "{}", s.message());
                        refused_after = true;
                    }
                }
                // The reload is done when the stop comes: the runner's call
                // under way then may still have been allowed, and the next
                // is refused.
                stopping = stopping || stop_rx.try_recv().is_ok();
                if stopping && refused_after {
                    return (allowed, refused_after);
                }
            }
        });
        a.events().wait_calls(5).await;
        tokens::write_jwks(&jwks, &[&k.ed]);
        proxy.reload(&cfg).expect("reload reads the new keys");
        assert_eq!(call(&mut client, Some(&new)).await.expect("new key"), "new");
        let status = call(&mut client, Some(&old)).await.expect_err("old key gone, cache too");
        assert_eq!(status.code(), Code::Unauthenticated);
        stop_tx.send(()).expect("runner alive");
        let (allowed, refused_after) = runner.await.expect("runner");
        assert!(allowed > 0 && refused_after, "allowed {allowed}, refused after: {refused_after}");

        // A JWKS that cannot be read fails the reload and keeps the keys.
        std::fs::write(&jwks, "{ not json").expect("write");
        let e = proxy.reload(&cfg).expect_err("bad JWKS refused");
        assert!(e.to_string().contains("jwks"), "{e}");
        assert_eq!(call(&mut client, Some(&new)).await.expect("new key still"), "new");
    }
}

proxy_test! {
    async fn a_rust_director_reads_the_verified_claims_from_the_call(driver) {
        use grpc_proxy::config::jwt::JwtConfig;
        use grpc_proxy::routing::bearer::WithBearer;
        use grpc_proxy::routing::jwt::JwtRule;
        use grpc_proxy::{Call, Edits, HeaderEdits, Route};
        let k = keys();
        let dir = tempfile::tempdir().expect("dir");
        let jwks = jwks_file(&dir, &[&k.ec, &k.ed]);
        let (blue, green) = (Upstream::start("blue"), Upstream::start("green"));
        let mut builder = ProxyBuilder::new("127.0.0.1:0".parse().expect("addr"));
        let (to_blue, to_green) = (builder.cluster("blue", [blue.addr()]), builder.cluster("green", [green.addr()]));
        let rule = JwtRule::load(&JwtConfig {
            issuer: ISSUER.into(),
            audiences: vec!["api".into()],
            jwks,
            claims: vec![],
            leeway: std::time::Duration::from_secs(5),
        })
        .expect("keys load");
        let recipe = move |_core: grpc_proxy::CoreId| {
            move |call: &Call<'_>| {
                if let Some(refused) = call.token_refused() {
                    return Route::Reject(refused.clone());
                }
                let claims = call.claims().expect("a verdict either way");
                let sub = claims["sub"].as_str().unwrap_or("?");
                let route = match claims["tenant"].as_str() {
                    Some("blue") => Route::to(to_blue),
                    _ => Route::to(to_green),
                };
                route.with_edits(Edits {
                    request: HeaderEdits::new()
                        .remove("authorization")
                        .and_then(|e| e.set("x-echo-user", sub))
                        .expect("valid edits"),
                    response: HeaderEdits::new(),
                })
            }
        };
        let proxy = builder
            .driver(driver)
            .cores(grpc_proxy::CoreSelection::Count(1))
            .start(WithBearer::new(rule, recipe))
            .expect("proxy starts");
        let mut client = Client::connect(proxy.local_addr()).await;
        let token = |sub: &str, tenant: &str| {
            let mut c = claims(sub);
            c["tenant"] = json!(tenant);
            format!("Bearer {}", k.ed.sign(&c))
        };
        assert_eq!(call(&mut client, Some(&token("ann", "blue"))).await.expect("blue"), "ann");
        assert_eq!(blue.events().last_values("x-echo-user"), ["ann"]);
        assert_eq!(blue.events().last_values("authorization"), Vec::<String>::new());
        assert_eq!(call(&mut client, Some(&token("gus", "green"))).await.expect("green"), "gus");
        assert_eq!(green.events().calls(), 1);
        let status = call(&mut client, None).await.expect_err("no token");
        assert_eq!(status.code(), Code::Unauthenticated);
        let forged = hs256(&k.ec.public, "ec-1", &claims("mallory"));
        let status = call(&mut client, Some(&format!("Bearer {forged}"))).await.expect_err("forged");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(blue.events().calls() + green.events().calls(), 2, "refused calls went nowhere");
    }
}

#[test]
fn a_config_with_a_bad_jwks_is_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let a = Upstream::start("a");
    let missing = dir.path().join("missing.json");
    for (body, want) in [
        (None, "missing.json"),
        (Some("[]"), "not a JWKS"),
        (Some(r#"{"keys": []}"#), "has no signing keys"),
        (
            Some(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#),
            "shared secret",
        ),
    ] {
        let path = match body {
            None => missing.clone(),
            Some(text) => {
                let p = dir.path().join("jwks.json");
                std::fs::write(&p, text).expect("write");
                p
            }
        };
        let e = match ProxyBuilder::from_config(&config(&a, &path)) {
            Ok(_) => panic!("a bad JWKS is refused"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("routes[0].jwt.jwks") && e.contains(want), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
