//! Operations: reload with streams open, refused reloads, metrics and the
//! admin endpoint, health checks, passive ejection, least-request
//! balancing, transparent retries of refused streams, the access log, the
//! systemd watchdog.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use grpc_proxy::{Code as ProxyCode, Config, ProxyBuilder, ProxyHandle};
use grpc_proxy_tests::admin::{must_sample, request as admin, sample, wait_until};
use grpc_proxy_tests::silent::{Options, Silent};
use grpc_proxy_tests::{cluster, proxy_test, Client, Driver, Upstream};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

/// A config of one worker: `top` keys, `[upstream]` keys, then the rest.
fn config_of(top: &str, upstream: &str, rest: &str) -> Config {
    let text = format!(
        "listen = \"127.0.0.1:0\"\ncores = 1\n{top}\n[upstream]\nreconnect_backoff_min = \"20ms\"\nreconnect_backoff_max = \"100ms\"\n{upstream}\n{rest}"
    );
    Config::parse(&text, "test.toml").expect("valid test config")
}

fn config(rest: &str) -> Config {
    config_of("", "", rest)
}

fn start(driver: Driver, config: &Config) -> ProxyHandle {
    let (builder, routes) = ProxyBuilder::from_config(config).expect("builder");
    builder.driver(driver).start(routes).expect("proxy starts")
}

/// The upstream that answered a unary call, from `x-upstream`.
async fn answered_by(
    client: &mut Client,
    metadata: &[(&'static str, &'static str)],
) -> Result<String, tonic::Status> {
    client.upstream_of("Unary", metadata).await
}

/// A proxy with a 1 KiB retry buffer in front of an upstream that
/// refuses its first call (REFUSED_STREAM) once it has read all of it.
async fn refusing_after_the_body(driver: Driver) -> (Silent, ProxyHandle) {
    let upstream = Silent::with(Options {
        refuse_first: 1,
        refuse_after_body: true,
        ..Options::default()
    })
    .await;
    let cfg = config_of(
        "",
        "retry_buffer = \"1KiB\"",
        &format!(
            "{}[[routes]]\ncluster = \"a\"\n",
            cluster("a", upstream.addr())
        ),
    );
    let proxy = start(driver, &cfg);
    (upstream, proxy)
}

/// A proxy of one worker in front of `up`, whose director blocks the
/// worker's thread (as a stuck worker would) on calls with `x-block`
/// until the [`Stuck`] lets it go.
fn blocking_director(driver: Driver, up: &Upstream) -> (ProxyHandle, Stuck) {
    use std::sync::{Arc, Condvar, Mutex};
    let stuck = Stuck {
        gate: Arc::new((Mutex::new(false), Condvar::new())),
        entered: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let inner = stuck.clone();
    let mut builder = ProxyBuilder::new("127.0.0.1:0".parse().expect("addr"))
        .cores(grpc_proxy::CoreSelection::Count(1))
        .driver(driver);
    let a = builder.cluster("a", [up.addr()]);
    let proxy = builder
        .start(move |_core| {
            let inner = inner.clone();
            move |call: &grpc_proxy::Call<'_>| {
                if call.header("x-block").is_some() {
                    inner
                        .entered
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    let (open, changed) = &*inner.gate;
                    let mut open = open.lock().expect("lock");
                    while !*open {
                        open = changed.wait(open).expect("wait");
                    }
                }
                grpc_proxy::Route::to(a)
            }
        })
        .expect("starts");
    (proxy, stuck)
}

/// The gate of [`blocking_director`].
#[derive(Clone)]
struct Stuck {
    gate: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    entered: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Stuck {
    /// Waits until a call has blocked the worker.
    async fn entered(&self) {
        while !self.entered.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Lets the worker go.
    fn release(&self) {
        let (open, changed) = &*self.gate;
        *open.lock().expect("lock") = true;
        changed.notify_all();
    }
}

/// How many of `n` unary calls failed.
async fn failures(client: &mut Client, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        failed += usize::from(answered_by(client, &[]).await.is_err());
    }
    failed
}

proxy_test! {
    async fn live_fails_once_a_worker_has_panicked(driver) {
        // Scenario: a director written in Rust panics on one call, which
        // takes its worker's thread down. The process lives on with a
        // core fewer, so `/live` must say so (503), and a supervisor
        // restarts it; `/ready` follows.
        let up = Upstream::start("a");
        let mut builder = ProxyBuilder::new("127.0.0.1:0".parse().expect("addr"))
            .cores(grpc_proxy::CoreSelection::Count(1))
            .driver(driver);
        let a = builder.cluster("a", [up.addr()]);
        let mut proxy = builder
            .start(move |_core| {
                move |call: &grpc_proxy::Call<'_>| {
                    assert!(call.header("x-panic").is_none(), "a director's bug");
                    grpc_proxy::Route::to(a)
                }
            })
            .expect("starts");
        let admin_addr = proxy
            .serve_admin("127.0.0.1:0".parse().expect("addr"), None)
            .expect("admin serves");
        assert_eq!(admin(admin_addr, "GET", "/live").0, 200);
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut request = Request::new(Bytes::from_static(b"x"));
        request.metadata_mut().insert("x-panic", MetadataValue::from_static("1"));
        request.set_timeout(Duration::from_secs(5));
        assert!(client.unary("Unary", request).await.is_err(), "its worker is gone");
        let mut live = admin(admin_addr, "GET", "/live");
        for _ in 0..200 {
            if live.0 != 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            live = admin(admin_addr, "GET", "/live");
        }
        assert_eq!(live.0, 503, "{live:?}");
        assert!(live.1.contains("panicked"), "{live:?}");
        assert_eq!(admin(admin_addr, "GET", "/ready").0, 503);
    }

    async fn a_proxy_whose_worker_panicked_still_shuts_down_with_its_access_log(driver) {
        // The access log's writer ends once every worker's logger is gone:
        // a worker that unwound must not keep one alive for good.
        let up = Upstream::start("a");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("access.log");
        let mut builder = ProxyBuilder::new("127.0.0.1:0".parse().expect("addr"))
            .cores(grpc_proxy::CoreSelection::Count(2))
            .access_log(grpc_proxy::config::AccessLogTarget::File(path.clone()))
            .driver(driver);
        let a = builder.cluster("a", [up.addr()]);
        let proxy = builder
            .start(move |_core| {
                move |call: &grpc_proxy::Call<'_>| {
                    assert!(call.header("x-panic").is_none(), "a director's bug");
                    grpc_proxy::Route::to(a)
                }
            })
            .expect("starts");
        // Calls until one lands on each worker: one panics, one is logged.
        let mut panicked = false;
        for _ in 0..50 {
            let mut client = Client::connect(proxy.local_addr()).await;
            let mut request = Request::new(Bytes::from_static(b"x"));
            request.metadata_mut().insert("x-panic", MetadataValue::from_static("1"));
            request.set_timeout(Duration::from_secs(5));
            if client.unary("Unary", request).await.is_err() {
                panicked = true;
                break;
            }
        }
        assert!(panicked, "no call reached the director");
        let mut logged = false;
        for _ in 0..50 {
            let mut client = Client::connect(proxy.local_addr()).await;
            if client.echo("x").await.is_ok() {
                logged = true;
                break;
            }
        }
        assert!(logged, "the other worker serves");
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            proxy.shutdown();
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("the proxy shuts down after a worker panicked");
        let log = std::fs::read_to_string(&path).expect("the access log");
        assert!(log.lines().count() >= 1, "{log:?}");
    }

    async fn reload_changes_a_route_while_a_bidi_stream_stays_open(driver) {
        let (a, b) = (Upstream::start("a"), Upstream::start("b"));
        let clusters = format!("{}{}", cluster("a", a.addr()), cluster("b", b.addr()));
        let first = config(&format!("{clusters}[[routes]]\ncluster = \"a\"\n"));
        let proxy = start(driver, &first);
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(answered_by(&mut client, &[]).await.expect("call"), "a");
        let (tx, mut replies) = client.open_bidi(1).await;
        tx.send(Bytes::from("one")).await.expect("send");
        assert_eq!(replies.next().await.expect("reply").expect("ok"), "one");

        let second = config(&format!("{clusters}[[routes]]\ncluster = \"b\"\n"));
        assert_eq!(proxy.reload(&second).expect("reload"), 2);
        // New calls, even on the same connection, take the new route...
        assert_eq!(answered_by(&mut client, &[]).await.expect("call"), "b");
        // ...while the stream opened before goes on, to the end.
        for m in ["two", "three"] {
            tx.send(Bytes::from(m)).await.expect("send");
            assert_eq!(replies.next().await.expect("reply").expect("ok"), m);
        }
        drop(tx);
        assert!(replies.next().await.is_none(), "the bidi stream ends cleanly");
        assert_eq!((a.events().calls(), b.events().calls()), (2, 1));
    }

    async fn a_reload_keeps_the_connections_of_unchanged_clusters(driver) {
        let (one, two) = (Silent::start().await, Silent::start().await);
        let kept = cluster("kept", one.addr());
        let first = config(&format!("{kept}{}[[routes]]\ncluster = \"kept\"\n", cluster("moved", one.addr())));
        let proxy = start(driver, &first);
        let mut client = Client::connect(proxy.local_addr()).await;
        let echo = |c: &mut Client| {
            let mut c = c.clone();
            async move { c.unary("Echo", Request::new(Bytes::from("x"))).await.map(|_| ()) }
        };
        echo(&mut client).await.expect("call");
        assert_eq!(one.connections(), 1);
        // Same "kept" cluster, new routes, and "moved" now elsewhere.
        let second = config(&format!(
            "{kept}{}[[routes]]\nheaders = [{{ name = \"x-moved\" }}]\ncluster = \"moved\"\n[[routes]]\ncluster = \"kept\"\n",
            cluster("moved", two.addr())
        ));
        proxy.reload(&second).expect("reload");
        for _ in 0..3 {
            echo(&mut client).await.expect("call");
        }
        assert_eq!(one.connections(), 1, "the unchanged cluster kept its connection");
        let mut request = Request::new(Bytes::from("x"));
        request.metadata_mut().insert("x-moved", MetadataValue::from_static("1"));
        client.unary("Echo", request).await.expect("to the moved cluster");
        assert_eq!(two.connections(), 1);
    }

    async fn an_invalid_config_is_refused_and_the_old_one_serves(driver) {
        let a = Upstream::start("a");
        let good = config(&format!("{}[[routes]]\ncluster = \"a\"\n", cluster("a", a.addr())));
        let proxy = start(driver, &good);
        let mut client = Client::connect(proxy.local_addr()).await;
        // Valid TOML, but a certificate file that is not there: refused
        // when it is applied.
        let bad = config(&format!(
            "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n{}[[routes]]\nreject = {{ code = \"unavailable\" }}\n",
            cluster("a", a.addr())
        ));
        let refused = proxy.reload(&bad).expect_err("refused");
        assert!(refused.to_string().contains("/nonexistent/cert.pem"), "{refused}");
        assert_eq!(proxy.config_version(), 1);
        assert_eq!(answered_by(&mut client, &[]).await.expect("the old config serves"), "a");
        // And a fresh client too: the listener is still cleartext.
        let mut fresh = Client::connect(proxy.local_addr()).await;
        assert_eq!(answered_by(&mut fresh, &[]).await.expect("call"), "a");
    }

    async fn metrics_count_the_calls_by_route_and_status(driver) {
        let a = Upstream::start("a");
        let cfg = config(&format!(
            "{}
            [[routes]]
            name = \"blocked\"
            headers = [{{ name = \"x-block\" }}]
            reject = {{ code = \"permission_denied\" }}
            [[routes]]
            name = \"echo\"
            cluster = \"a\"
            ",
            cluster("a", a.addr())
        ));
        let mut proxy = start(driver, &cfg);
        let admin_addr = proxy
            .serve_admin("127.0.0.1:0".parse().expect("addr"), None)
            .expect("admin serves");
        let mut client = Client::connect(proxy.local_addr()).await;
        for _ in 0..3 {
            answered_by(&mut client, &[]).await.expect("ok call");
        }
        for _ in 0..2 {
            let status = answered_by(&mut client, &[("x-fail-code", "5")]).await.expect_err("NOT_FOUND");
            assert_eq!(status.code(), Code::NotFound);
        }
        let status = answered_by(&mut client, &[("x-block", "1")]).await.expect_err("blocked");
        assert_eq!(status.code(), Code::PermissionDenied);

        let merged = proxy.metrics();
        assert_eq!(merged.route_finished("echo", ProxyCode::Ok), 3);
        assert_eq!(merged.route_finished("echo", ProxyCode::NotFound), 2);
        assert_eq!(merged.route_finished("blocked", ProxyCode::PermissionDenied), 1);

        let (status, text) = admin(admin_addr, "GET", "/metrics");
        assert_eq!(status, 200);
        let value = |series: &str| must_sample(&text, series);
        assert_eq!(value("grpc_proxy_route_calls_started_total{route=\"echo\"}"), 5.0);
        assert_eq!(value("grpc_proxy_route_calls_finished_total{route=\"echo\",grpc_code=\"OK\"}"), 3.0);
        assert_eq!(value("grpc_proxy_route_calls_finished_total{route=\"echo\",grpc_code=\"NOT_FOUND\"}"), 2.0);
        assert_eq!(value("grpc_proxy_route_calls_finished_total{route=\"blocked\",grpc_code=\"PERMISSION_DENIED\"}"), 1.0);
        assert_eq!(value("grpc_proxy_cluster_calls_finished_total{cluster=\"a\",grpc_code=\"OK\"}"), 3.0);
        assert_eq!(value("grpc_proxy_route_call_duration_seconds_count{route=\"echo\"}"), 5.0);
        assert_eq!(value("grpc_proxy_core_calls_started_total{core=\"0\"}"), 6.0);
        assert_eq!(value("grpc_proxy_downstream_connections{core=\"0\"}"), 1.0);
        assert_eq!(value("grpc_proxy_upstream_connections{cluster=\"a\"}"), 1.0);
        assert!(value("grpc_proxy_received_bytes_total{core=\"0\"}") > 0.0);
        assert!(value("grpc_proxy_sent_bytes_total{core=\"0\"}") > 0.0);

        assert_eq!(admin(admin_addr, "GET", "/live").0, 200);
        assert_eq!(admin(admin_addr, "GET", "/ready").0, 200);
        let (status, body) = admin(admin_addr, "GET", "/config");
        assert_eq!(status, 200);
        let info: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(info["version"], 1);
        assert_eq!(info["source"], "test.toml");
        assert_eq!(info["sha256"].as_str().map(str::len), Some(64));
        assert_eq!(admin(admin_addr, "POST", "/reload").0, 404, "no file to reload");
        assert_eq!(admin(admin_addr, "GET", "/nope").0, 404);
        proxy.drain();
        assert_eq!(admin(admin_addr, "GET", "/ready").0, 503, "not ready while draining");
    }

    async fn idle_admin_connections_cannot_lock_out_a_scrape(driver) {
        // Scenario: 100 connections to the admin endpoint that send
        // nothing. Past its 64 connections the one open longest is closed
        // to make room (a thread per connection without a limit before),
        // and a scrape is answered at once.
        use std::io::Read;
        let up = Upstream::start("a");
        let mut proxy = start(driver, &config(&format!("{}[[routes]]\ncluster = \"a\"\n", cluster("a", up.addr()))));
        let admin_addr = proxy
            .serve_admin("127.0.0.1:0".parse().expect("addr"), None)
            .expect("admin serves");
        let mut idle: Vec<std::net::TcpStream> = (0..100)
            .map(|_| std::net::TcpStream::connect(admin_addr).expect("connect"))
            .collect();
        let (status, text) = tokio::task::spawn_blocking(move || admin(admin_addr, "GET", "/metrics"))
            .await
            .expect("scrape");
        assert_eq!(status, 200);
        assert!(text.contains("grpc_proxy_core_calls_started_total"), "{text}");
        let first = &mut idle[0];
        first.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let read = first.read(&mut [0u8; 1]);
        assert!(matches!(read, Ok(0)), "the longest-open idle connection was closed: {read:?}");
    }

    async fn probes_answer_while_a_reload_waits(driver) {
        // Scenario: a reload takes long (a slow resolver, a busy worker:
        // here it waits until the test lets it go). Meanwhile the
        // liveness and readiness probes and a scrape must answer: an
        // orchestrator whose probes time out restarts a working proxy.
        let up = Upstream::start("a");
        let mut proxy = start(driver, &config(&format!("{}[[routes]]\ncluster = \"a\"\n", cluster("a", up.addr()))));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, has_started) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let reload: grpc_proxy::telemetry::admin::ReloadFn = std::sync::Arc::new(move || {
            let _ = started.send(());
            let _ = released.lock().expect("lock").recv();
            Ok(2)
        });
        let admin_addr = proxy
            .serve_admin("127.0.0.1:0".parse().expect("addr"), Some(reload))
            .expect("admin serves");
        let reloading = tokio::task::spawn_blocking(move || admin(admin_addr, "POST", "/reload"));
        tokio::task::spawn_blocking(move || has_started.recv())
            .await
            .expect("join")
            .expect("the reload started");
        for path in ["/live", "/ready", "/metrics"] {
            let answered = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || admin(admin_addr, "GET", path)),
            )
            .await;
            let (status, _) = answered
                .unwrap_or_else(|_| panic!("{path} waited for the reload"))
                .expect("request");
            assert_eq!(status, 200, "{path}");
        }
        assert!(!reloading.is_finished(), "the reload still waits");
        // Another reload meanwhile is refused, not queued behind it.
        let (status, _) = tokio::task::spawn_blocking(move || admin(admin_addr, "POST", "/reload"))
            .await
            .expect("request");
        assert_eq!(status, 409);
        let _ = release.send(());
        let (status, text) = reloading.await.expect("reload");
        assert_eq!((status, text.trim_end()), (200, "reloaded: version 2"));
    }

    async fn an_endpoint_failing_health_checks_gets_no_calls_until_healthy(driver) {
        let (a, b) = (Upstream::start("a"), Upstream::start("b"));
        b.set_serving(false).await;
        let cfg = config(&format!(
            "[[clusters]]
            name = \"both\"
            endpoints = [\"{}\", \"{}\"]
            health_check = {{ interval = \"50ms\", timeout = \"1s\", unhealthy_threshold = 1, healthy_threshold = 1 }}
            [[routes]]
            cluster = \"both\"
            ",
            a.addr(), b.addr()
        ));
        let proxy = start(driver, &cfg);
        let up = "grpc_proxy_upstream_endpoints_up{cluster=\"both\"}";
        wait_until(&proxy, "b is out", |m| sample(m, up) == Some(1.0)).await;
        let mut client = Client::connect(proxy.local_addr()).await;
        for _ in 0..20 {
            assert_eq!(answered_by(&mut client, &[]).await.expect("call"), "a");
        }
        assert_eq!(b.events().calls(), 0);

        b.set_serving(true).await;
        wait_until(&proxy, "b is back", |m| sample(m, up) == Some(2.0)).await;
        let mut seen_b = 0;
        for _ in 0..20 {
            if answered_by(&mut client, &[]).await.expect("call") == "b" {
                seen_b += 1;
            }
        }
        assert_eq!(seen_b, 10, "round robin over both again");
    }

    async fn an_endpoint_that_resets_calls_is_ejected(driver) {
        let good = Upstream::start("good");
        let bad = Silent::with(Options { reset_all: Some(h2::Reason::INTERNAL_ERROR), ..Options::default() }).await;
        let cfg = config(&format!(
            "[[clusters]]
            name = \"both\"
            endpoints = [\"{}\", \"{}\"]
            outlier = {{ consecutive_failures = 2, base_ejection = \"1m\" }}
            [[routes]]
            cluster = \"both\"
            ",
            good.addr(), bad.addr()
        ));
        let proxy = start(driver, &cfg);
        let mut client = Client::connect(proxy.local_addr()).await;
        let failed = failures(&mut client, 4).await;
        assert_eq!(failed, 2, "round robin sent two calls to the bad endpoint before it was ejected");
        for _ in 0..20 {
            assert_eq!(answered_by(&mut client, &[]).await.expect("only the good one now"), "good");
        }
        let text = proxy.metrics().render();
        assert_eq!(sample(&text, "grpc_proxy_upstream_resets_total{cluster=\"both\"}"), Some(2.0), "{text}");
    }

    async fn an_endpoint_waiting_to_reconnect_gets_no_calls_while_another_is_up(driver) {
        // Scenario: one of two endpoints refuses connections. The first
        // call sent to it fails ("connect failed"), and the endpoint
        // waits out its reconnect back-off (a minute here). Meanwhile
        // the other endpoint is up: calls must go there, not fail at once
        // with "waiting to reconnect" every other time. (Passive ejection
        // is off, so only the back-off keeps calls away.)
        let good = Upstream::start("good");
        let refused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let refused_addr = refused.local_addr().expect("addr");
        drop(refused);
        let text = format!(
            "listen = \"127.0.0.1:0\"\ncores = 1\n\
             [upstream]\nreconnect_backoff_min = \"1m\"\nreconnect_backoff_max = \"1m\"\n\
             [[clusters]]\nname = \"both\"\nendpoints = [\"{refused_addr}\", \"{}\"]\n\
             outlier = {{ consecutive_failures = 0 }}\n\
             [[routes]]\ncluster = \"both\"\n",
            good.addr()
        );
        let cfg = Config::parse(&text, "test.toml").expect("valid test config");
        let proxy = start(driver, &cfg);
        let mut client = Client::connect(proxy.local_addr()).await;
        let failed = failures(&mut client, 2).await;
        assert_eq!(failed, 1, "round robin sent one of the first two calls to the refusing endpoint");
        for i in 0..20 {
            let answer = answered_by(&mut client, &[]).await;
            assert_eq!(answer.as_deref().ok(), Some("good"), "call {i}: {answer:?}");
        }
    }

    async fn deadlines_a_client_chooses_do_not_eject_an_endpoint(driver) {
        // Scenario: a client sends calls with a deadline no upstream could
        // meet (1 ms, to an upstream that takes 200 ms). They end
        // DEADLINE_EXCEEDED, but that says nothing about the endpoint:
        // it must not be ejected, and other clients' calls keep going to
        // it. (The route's own timeout passing does count.)
        let slow = Upstream::start_slow("slow", Duration::from_millis(200));
        let cfg = config(&format!(
            "[[clusters]]
            name = \"a\"
            endpoints = [\"{}\"]
            outlier = {{ consecutive_failures = 2, base_ejection = \"1m\" }}
            [[routes]]
            cluster = \"a\"
            ",
            slow.addr()
        ));
        let proxy = start(driver, &cfg);
        let addr = proxy.local_addr();
        // A bare h2 client: tonic would give up on its own first.
        let client = grpc_proxy_tests::raw::client(addr, 65_535).await;
        for _ in 0..5 {
            let mut head = grpc_proxy_tests::raw::request(addr, "Unary");
            head.headers_mut()
                .insert("grpc-timeout", http::HeaderValue::from_static("1m"));
            let mut ready = client.clone().ready().await.expect("ready");
            let (response, mut body) = ready.send_request(head, false).expect("send");
            body.send_data(grpc_proxy_tests::raw::frame(b"x"), true).expect("data");
            let response = response.await.expect("response");
            let status = response.headers().get("grpc-status").cloned();
            assert_eq!(status.as_ref().map(|s| s.as_bytes()), Some(&b"4"[..]), "DEADLINE_EXCEEDED: {response:?}");
        }
        let text = proxy.metrics().render();
        let up = sample(&text, "grpc_proxy_upstream_endpoints_up{cluster=\"a\"}");
        assert_eq!(up, Some(1.0), "{text}");
    }

    async fn least_request_sends_fewer_calls_to_a_slow_endpoint_than_round_robin(driver) {
        let fast = Upstream::start("fast");
        // Slow enough that, even with both cores busy, the fast endpoint
        // always has fewer calls in flight.
        let slow = Upstream::start_slow("slow", Duration::from_millis(200));
        let endpoints = format!("endpoints = [\"{}\", \"{}\"]", fast.addr(), slow.addr());
        let cfg = config(&format!(
            "[[clusters]]
            name = \"rr\"
            {endpoints}
            [[clusters]]
            name = \"lr\"
            {endpoints}
            balance = \"least_request\"
            [[routes]]
            headers = [{{ name = \"x-policy\", value = \"lr\" }}]
            cluster = \"lr\"
            [[routes]]
            cluster = \"rr\"
            "
        ));
        let proxy = start(driver, &cfg);
        let client = Client::connect(proxy.local_addr()).await;
        let mut slow_share = Vec::new();
        for policy in ["rr", "lr"] {
            let before = slow.events().calls();
            // 16 callers, 10 calls each, in parallel.
            let mut callers = Vec::new();
            for _ in 0..16 {
                let mut c = client.clone();
                callers.push(tokio::spawn(async move {
                    for _ in 0..10 {
                        let headers: &[(&'static str, &'static str)] =
                            if policy == "lr" { &[("x-policy", "lr")] } else { &[] };
                        answered_by(&mut c, headers).await.expect("call");
                    }
                }));
            }
            for c in callers {
                c.await.expect("caller");
            }
            slow_share.push(slow.events().calls() - before);
        }
        let (rr, lr) = (slow_share[0], slow_share[1]);
        assert_eq!(rr, 80, "round robin: half of 160 calls to each endpoint");
        // Least request breaks ties at random: the first 16 calls split
        // about evenly, and whenever the slow endpoint's calls all end
        // before their callers call again, about half of the next go back
        // to it. 14-29 landed there in 16 runs; 42 once with both cores
        // busy. A random pick would send 80 (+-6), round robin exactly 80.
        assert!(lr < rr * 3 / 4, "least request sent {lr} of 160 calls to the slow endpoint (round robin {rr})");
    }

    async fn a_refused_stream_is_retried_and_the_client_sees_success(driver) {
        let upstream = Silent::with(Options { refuse_first: 1, ..Options::default() }).await;
        let cfg = config(&format!("{}[[routes]]\ncluster = \"a\"\n", cluster("a", upstream.addr())));
        let proxy = start(driver, &cfg);
        let mut client = Client::connect(proxy.local_addr()).await;
        let payload = Bytes::from(vec![7u8; 40_000]);
        let response = client
            .unary("Echo", Request::new(payload.clone()))
            .await
            .expect("the retry succeeds");
        assert_eq!(response.get_ref(), &payload, "the whole request was replayed");
        assert_eq!(
            response.metadata().get("x-connection").and_then(|v| v.to_str().ok()),
            Some("2"),
            "the retry went out on another connection"
        );
        let text = proxy.metrics().render();
        assert_eq!(sample(&text, "grpc_proxy_retries_total{core=\"0\"}"), Some(1.0), "{text}");
    }

    async fn a_stream_above_a_goaways_last_stream_id_is_retried(driver) {
        let upstream = Silent::with(Options { goaway_below_first: true, ..Options::default() }).await;
        let cfg = config(&format!("{}[[routes]]\ncluster = \"a\"\n", cluster("a", upstream.addr())));
        let proxy = start(driver, &cfg);
        let mut client = Client::connect(proxy.local_addr()).await;
        let response = client
            .unary("Echo", Request::new(Bytes::from("again")))
            .await
            .expect("retried after the GOAWAY");
        assert_eq!(response.get_ref(), "again");
        assert_eq!(
            response.metadata().get("x-connection").and_then(|v| v.to_str().ok()),
            Some("2"),
            "served on a new connection"
        );
        let text = proxy.metrics().render();
        assert_eq!(sample(&text, "grpc_proxy_retries_total{core=\"0\"}"), Some(1.0), "{text}");
    }

    async fn a_request_larger_than_the_retry_buffer_is_not_retried(driver) {
        // Refused once all of it has reached the upstream: a refusal that
        // came before the DATA left the proxy would rightly be retried.
        let (_upstream, proxy) = refusing_after_the_body(driver).await;
        let mut client = Client::connect(proxy.local_addr()).await;
        let status = client
            .unary("Echo", Request::new(Bytes::from(vec![7u8; 4000])))
            .await
            .expect_err("refused, and too big to hold for a retry");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        // The next call is served.
        assert!(client.unary("Echo", Request::new(Bytes::from("small"))).await.is_ok());
    }

    async fn a_refused_call_the_proxy_cannot_retry_is_refused_to_the_client(driver) {
        // The upstream refuses a call (REFUSED_STREAM: it did nothing)
        // that is too big to hold for a retry. Nothing of the response
        // has gone, so the client is told the same, RST_STREAM
        // REFUSED_STREAM, which gRPC clients retry on their own; not a
        // status, which they may not.
        let (_upstream, proxy) = refusing_after_the_body(driver).await;
        let addr = proxy.local_addr();
        let client = grpc_proxy_tests::raw::client(addr, 65_535).await;
        let mut ready = client.ready().await.expect("ready");
        let (response, mut body) =
            ready.send_request(grpc_proxy_tests::raw::request(addr, "Echo"), false).expect("send");
        body.send_data(grpc_proxy_tests::raw::frame(&[7u8; 4000]), true).expect("data");
        let refused = response.await.expect_err("refused");
        assert_eq!(refused.reason(), Some(h2::Reason::REFUSED_STREAM), "{refused:?}");
    }

    async fn a_moved_access_log_is_opened_again(driver) {
        // Scenario: logrotate's default. The log file is renamed and the
        // proxy is not told. Its next lines must go to a new file at the
        // configured path, not on into the renamed one (which would be
        // deleted in time, the lines with it).
        let a = Upstream::start("a");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let cfg = config_of(
            &format!("access_log = {path:?}"),
            "",
            &format!("{}[[routes]]\ncluster = \"a\"\n", cluster("a", a.addr())),
        );
        let proxy = start(driver, &cfg);
        let mut client = Client::connect(proxy.local_addr()).await;
        answered_by(&mut client, &[]).await.expect("call");
        let rotated = dir.path().join("access.log.1");
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&path).unwrap_or_default().is_empty() {
            assert!(tokio::time::Instant::now() < until, "the first line was never written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::rename(&path, &rotated).expect("rotate");
        // Calls go on until a line shows at the path again (the writer
        // looks once a second).
        loop {
            answered_by(&mut client, &[]).await.expect("call");
            if std::fs::read_to_string(&path).is_ok_and(|t| !t.is_empty()) {
                break;
            }
            assert!(tokio::time::Instant::now() < until, "no new file at the log's path");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(client);
        proxy.shutdown();
        for file in [&path, &rotated] {
            let text = std::fs::read_to_string(file).expect("read");
            assert!(text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "{text}");
        }
    }

    async fn the_access_log_has_a_line_per_call(driver) {
        let a = Upstream::start("a");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let cfg = config_of(&format!("access_log = {path:?}"), "", &format!(
            "{}
            [[routes]]
            name = \"no\"
            headers = [{{ name = \"x-block\" }}]
            reject = {{ code = \"permission_denied\" }}
            [[routes]]
            name = \"yes\"
            cluster = \"a\"
            ",
            cluster("a", a.addr())
        ));
        let proxy = start(driver, &cfg);
        let mut client = Client::connect(proxy.local_addr()).await;
        answered_by(&mut client, &[]).await.expect("call");
        answered_by(&mut client, &[("x-block", "1")]).await.expect_err("blocked");
        drop(client);
        proxy.shutdown();
        let text = std::fs::read_to_string(&path).expect("the log was written");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["method"], "/test.Echo/Unary");
        assert_eq!(lines[0]["route"], "yes");
        assert_eq!(lines[0]["cluster"], "a");
        assert_eq!(lines[0]["upstream"], a.addr().to_string());
        assert_eq!(lines[0]["grpc_code"], "OK");
        assert!(lines[0]["bytes_in"].as_u64() > Some(0) && lines[0]["bytes_out"].as_u64() > Some(0));
        assert!(lines[0]["duration_ms"].as_f64().is_some() && lines[0]["time"].is_string());
        assert!(lines[0]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")));
        assert_eq!(lines[1]["route"], "no");
        assert_eq!(lines[1]["grpc_status"], 7);
        assert!(lines[1]["upstream"].is_null());
    }

    async fn a_scrape_a_stuck_worker_misses_keeps_its_counts(driver) {
        // Scenario: a director blocks its worker (as a stuck worker
        // would) while a scrape asks every worker for its counts. The
        // worker cannot answer; its calls so far must still be counted,
        // as of its last answer: a total that drops is a counter reset
        // to Prometheus, which then counts everything again.
        let up = Upstream::start("a");
        let (proxy, stuck) = blocking_director(driver, &up);
        let mut client = Client::connect(proxy.local_addr()).await;
        for _ in 0..3 {
            answered_by(&mut client, &[]).await.expect("call");
        }
        let series = "grpc_proxy_cluster_calls_started_total{cluster=\"a\"}";
        let text = proxy.metrics().render();
        assert_eq!(sample(&text, series), Some(3.0), "{text}");
        let mut blocked = client.clone();
        let call = tokio::spawn(async move { answered_by(&mut blocked, &[("x-block", "1")]).await });
        stuck.entered().await;
        // The worker is stuck: the scrape goes unanswered by it.
        let text = tokio::task::spawn_blocking(move || {
            let text = proxy.metrics().render();
            (proxy, text)
        });
        let (proxy, text) = text.await.expect("scrape");
        // Let the worker go before judging, so that a failure ends.
        stuck.release();
        call.await.expect("task").expect("the blocked call goes on");
        drop(proxy);
        assert_eq!(sample(&text, series), Some(3.0), "counted as of its last answer: {text}");
    }

    async fn the_watchdog_stops_pinging_while_a_worker_is_stuck(driver) {
        // Scenario: a director that blocks its worker's thread (as a stuck
        // worker would) on calls with `x-block`, until the test lets it go.
        // The watchdog (100 ms) pings while the worker answers its
        // mailbox, withholds the pings while it is stuck, and resumes.
        use grpc_proxy::control::systemd::{Notifier, Watchdog};
        use std::os::unix::net::UnixDatagram;
        use std::sync::Arc;
        let up = Upstream::start("a");
        let (proxy, stuck) = blocking_director(driver, &up);
        let dir = tempfile::tempdir().expect("dir");
        let socket = dir.path().join("notify.sock");
        let manager = UnixDatagram::bind(&socket).expect("bind");
        manager.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let notifier = Arc::new(Notifier::to(&socket).expect("notifier"));
        let watchdog = Watchdog::start(notifier, proxy.controller(), Duration::from_millis(100));
        let mut buf = [0u8; 64];
        // A datagram, or the timeout; a signal's interruption is retried.
        let ping = |manager: &UnixDatagram, buf: &mut [u8]| loop {
            match manager.recv(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other.map(|n| buf[..n].to_vec()),
            }
        };
        for _ in 0..3 {
            assert_eq!(ping(&manager, &mut buf).expect("a ping"), b"WATCHDOG=1");
        }
        // Stick the worker: a call whose director blocks.
        let mut client = Client::connect(proxy.local_addr()).await;
        let mut blocked = tonic::Request::new(Bytes::from_static(b"x"));
        blocked.metadata_mut().insert("x-block", MetadataValue::from_static("1"));
        let call = tokio::spawn(async move { client.unary("Unary", blocked).await });
        // Pings already sent may arrive; then none for a while.
        let quiet = (0..20).any(|_| ping(&manager, &mut buf).is_err());
        assert!(quiet, "pings went on while the worker was stuck");
        // Let it go: pings resume and the call completes.
        stuck.release();
        manager.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        assert_eq!(ping(&manager, &mut buf).expect("pings resume"), b"WATCHDOG=1");
        let reply = call.await.expect("join").expect("the call completes");
        assert_eq!(reply.into_inner(), "x");
        drop(watchdog);
    }
}
