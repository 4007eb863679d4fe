//! grpc-loadtest against its own echo upstream, on loopback, on both
//! monoio drivers. Counts and orders of magnitude are checked, never speed:
//! the only latency bounds come from delays the server is told to inject.

use std::time::Duration;

mod common;

use common::{options, server};
use grpc_loadtest::report::Report;
use grpc_loadtest::run::{self, Rpc, RunOptions};
use grpc_proxy::Driver;
use http::{HeaderName, HeaderValue};

macro_rules! both_drivers {
    ($($name:ident($driver:ident) $body:block)*) => {
        $(
            mod $name {
                use super::*;
                fn run_test($driver: Driver) $body
                #[test]
                fn io_uring() {
                    if Driver::Auto.resolve() != Driver::IoUring {
                        eprintln!("io_uring is unavailable here; skipped");
                        return;
                    }
                    run_test(Driver::IoUring)
                }
                #[test]
                fn legacy() {
                    run_test(Driver::Legacy)
                }
            }
        )*
    };
}

fn assert_clean(r: &Report, calls: u64) {
    assert_eq!(r.calls_failed, 0, "errors: {:?}", r.errors);
    assert_eq!(r.calls_ok, calls, "{r:?}");
    let l = r.call_latency.as_ref().expect("call latency recorded");
    assert_eq!(l.count, calls);
}

both_drivers! {
    unary_calls_complete(driver) {
        let s = server(driver);
        let r = run::run(&options(&s, driver, Rpc::Unary)).expect("run");
        assert_clean(&r, 200);
        assert_eq!(r.connections, 2);
    }

    server_streams_count_messages(driver) {
        let s = server(driver);
        let r = run::run(&options(&s, driver, Rpc::ServerStream)).expect("run");
        assert_clean(&r, 200);
        let first = r.first_message_latency.as_ref().expect("time to first message");
        assert_eq!(first.count, 200);
        let gaps = r.message_latency.as_ref().expect("gaps");
        assert_eq!(gaps.count, 200 * 4, "5 messages give 4 gaps per call");
    }

    client_streams_send_every_message(driver) {
        let s = server(driver);
        let mut o = options(&s, driver, Rpc::ClientStream);
        o.payload = 100;
        let r = run::run(&o).expect("run");
        assert_clean(&r, 200);
        // 5 requests and 1 response per call.
        let per_second = (200.0 * 6.0) / r.seconds;
        assert!((r.messages_per_sec - per_second).abs() < 1.0, "{r:?}");
    }

    bidi_measures_every_round_trip(driver) {
        let s = server(driver);
        let mut o = options(&s, driver, Rpc::Bidi);
        o.payload = 1024;
        let r = run::run(&o).expect("run");
        assert_clean(&r, 200);
        assert_eq!(r.message_latency.as_ref().expect("round trips").count, 200 * 5);
    }

    large_payloads_and_responses(driver) {
        let s = server(driver);
        let mut o = options(&s, driver, Rpc::Unary);
        o.payload = 1 << 20;
        o.response_size = Some(2 << 20);
        o.calls = Some(20);
        let r = run::run(&o).expect("run");
        assert_clean(&r, 20);
        let received = r.mb_per_sec_received * r.seconds * 1e6;
        assert!((received - 20.0 * (2 << 20) as f64).abs() < 20.0 * 5.0 + 1.0, "{received}");
    }

    duration_mode_runs_for_its_duration(driver) {
        let s = server(driver);
        let mut o = options(&s, driver, Rpc::Unary);
        o.calls = None;
        o.duration = Duration::from_millis(500);
        let r = run::run(&o).expect("run");
        assert!(r.calls_ok > 0 && r.calls_failed == 0, "{r:?}");
        assert!((r.seconds - 0.5).abs() < 1e-6, "the window is the duration: {}", r.seconds);
    }

    injected_delay_shows_in_the_median(driver) {
        let s = server(driver);
        let mut o = options(&s, driver, Rpc::Unary);
        o.connections = 1;
        o.streams = 1;
        o.calls = Some(50);
        o.delay = Some(Duration::from_millis(2));
        let r = run::run(&o).expect("run");
        assert_clean(&r, 50);
        let p50 = r.call_latency.as_ref().expect("latency").p50_us;
        // At least the delay; the upper bound only catches a unit mistake
        // (timers tick in milliseconds, and the suite's other tests share
        // the two cores: 4.1 ms was seen).
        assert!((2000.0..20_000.0).contains(&p50), "p50 {p50}us with a 2ms server delay");
    }

    open_loop_backlog_shows_in_the_tail(driver) {
        // One stream and a 10 ms delay serve at most 100 calls/s; asking
        // for 400/s for half a second queues calls, and since latency counts
        // from the intended start, the tail shows the queue.
        let s = server(driver);
        let mut o = options(&s, driver, Rpc::Unary);
        o.connections = 1;
        o.streams = 1;
        o.calls = None;
        o.duration = Duration::from_millis(500);
        o.rate = Some(400.0);
        o.delay = Some(Duration::from_millis(10));
        let r = run::run(&o).expect("run");
        let l = r.call_latency.as_ref().expect("latency");
        assert!(l.max_us > 100_000.0, "max {}us should reflect a backlog", l.max_us);
        assert!(l.p99_us > 10.0 * l.p50_us.min(10_000.0) || l.p50_us > 50_000.0, "{l:?}");
    }

    errors_are_counted_by_status(driver) {
        let s = server(driver);
        let mut o = options(&s, driver, Rpc::Unary);
        o.calls = Some(30);
        o.metadata = vec![(HeaderName::from_static("x-fail-code"), HeaderValue::from_static("7"))];
        let r = run::run(&o).expect("run");
        assert_eq!(r.calls_ok, 0);
        assert_eq!(r.errors.get("PERMISSION_DENIED"), Some(&30), "{:?}", r.errors);
    }
}

#[test]
fn an_unreachable_target_is_an_error_not_a_panic() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let o = RunOptions {
        target: addr,
        calls: Some(1),
        ..RunOptions::default()
    };
    let e = run::run(&o).expect_err("nothing listens there");
    assert!(e.to_string().contains("cannot connect"), "{e}");
}

#[test]
fn a_target_that_is_not_grpc_is_an_error() {
    // An HTTP/1 server: answers the preface with text and closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
        }
    });
    let o = RunOptions {
        target: addr,
        calls: Some(1),
        ..RunOptions::default()
    };
    let e = run::run(&o).expect_err("not an HTTP/2 server");
    assert!(e.to_string().contains("cannot connect"), "{e}");
    let _ = t.join();
}

#[test]
fn json_output_parses() {
    let s = server(Driver::Auto);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grpc-loadtest"))
        .args([
            "run",
            "--target",
            &s.local_addr().to_string(),
            "--calls",
            "20",
            "--warmup",
            "0s",
            "--json",
            "-",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["calls_ok"], 20);
    assert_eq!(v["rpc"], "unary");
    assert!(v["call_latency"]["p99_us"].as_f64().is_some());
}

#[test]
fn bad_flags_exit_non_zero_with_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grpc-loadtest"))
        .args([
            "run",
            "--target",
            "127.0.0.1:1",
            "--calls",
            "1",
            "--warmup",
            "0s",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to 127.0.0.1:1"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A CA and a `localhost` server certificate, as PEM files in `dir`.
fn certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    (
        write("ca.pem", ca.pem()),
        write("server.pem", cert.pem()),
        write("server.key", key.serialize_pem()),
    )
}

both_drivers! {
    tls_and_a_connection_per_call_through_a_tls_proxy(driver) {
        let upstream = server(driver);
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca, cert, key) = certificates(dir.path());
        let text = format!(
            "listen = \"127.0.0.1:0\"\ncores = 1\n[tls]\ncert = {cert:?}\nkey = {key:?}\n[[clusters]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[routes]]\ncluster = \"a\"\n",
            upstream.local_addr()
        );
        let config = grpc_proxy::Config::parse(&text, "test").expect("config");
        let (builder, routes) = grpc_proxy::ProxyBuilder::from_config(&config).expect("builder");
        let proxy = builder.driver(driver).start(routes).expect("proxy starts");
        let settings = grpc_proxy::config::UpstreamTls {
            ca: Some(ca),
            server_name: "localhost".into(),
            cert: None,
            key: None,
        };
        let tls = grpc_proxy::ClientTls::load(&settings, "localhost").expect("client TLS");
        let base = RunOptions {
            target: proxy.local_addr(),
            driver,
            tls: Some(tls),
            warmup: Duration::ZERO,
            ..RunOptions::default()
        };
        let kept = run::run(&RunOptions { connections: 2, streams: 4, calls: Some(200), ..base.clone() })
            .expect("runs over TLS");
        assert_clean(&kept, 200);
        let fresh = run::run(&RunOptions { connections: 2, calls: Some(40), connection_per_call: true, ..base.clone() })
            .expect("runs with a connection per call");
        assert_clean(&fresh, 40);
        let refused = run::run(&RunOptions { streams: 2, connection_per_call: true, ..base });
        assert!(refused.is_err(), "a connection per call needs one stream");
    }
}

both_drivers! {
    interval_logs_add_up_to_their_runs_and_merge_into_one(driver) {
        // Two runs of 200 bidi calls (5 round trips each), a log each:
        // one log merged alone gives back its run's own report exactly
        // (every measured sample is in one interval), and the two merged
        // count every sample of both.
        let s = server(driver);
        let dir = tempfile::tempdir().expect("dir");
        let logs = [dir.path().join("a.hlog"), dir.path().join("b.hlog")];
        let mut reports = Vec::new();
        for log in &logs {
            let mut o = options(&s, driver, Rpc::Bidi);
            o.warmup = Duration::from_millis(100);
            o.hdr_log = Some(log.clone());
            let r = run::run(&o).expect("run");
            assert_eq!(r.calls_failed, 0, "{:?}", r.errors);
            reports.push(r);
        }
        for (log, r) in logs.iter().zip(&reports) {
            let alone = grpc_loadtest::hdrlog::merge(std::slice::from_ref(log)).expect("merge");
            assert_eq!(Some(&alone.tags["call"].latency), r.call_latency.as_ref());
            assert_eq!(Some(&alone.tags["message"].latency), r.message_latency.as_ref());
        }
        let both = grpc_loadtest::hdrlog::merge(&logs).expect("merge");
        let calls = &both.tags["call"].latency;
        let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
        assert_eq!(calls.count, sum(|r| r.call_latency.as_ref().map_or(0, |l| l.count)));
        assert_eq!(
            both.tags["message"].latency.count,
            sum(|r| r.message_latency.as_ref().map_or(0, |l| l.count))
        );
        // Exactly one histogram of both runs: the runs' own round-trip
        // histograms added together.
        let mut union = reports[0].series.latency.clone();
        union.add(&reports[1].series.latency).expect("add");
        assert_eq!(
            Some(&both.tags["message"].latency),
            grpc_loadtest::report::Latency::of(&union).as_ref()
        );
        let maxes: Vec<f64> = reports.iter().map(|r| r.call_latency.as_ref().expect("latency").max_us).collect();
        assert_eq!(calls.max_us, maxes.iter().cloned().fold(0.0, f64::max));
        assert!(both.text().contains("merged 2 logs"));
        // The picture of the merge: one line per log.
        let svg = dir.path().join("merge.svg");
        grpc_loadtest::plot::draw(&svg, "merge", "call latency", "calls", &both.series).expect("draw");
        assert_eq!(series_names(&svg), ["a.hlog", "b.hlog"]);
        // And of a run.
        let mut o = options(&s, driver, Rpc::Unary);
        let run_svg = dir.path().join("run.svg");
        o.plot = Some(run_svg.clone());
        run::run(&o).expect("run");
        assert_eq!(series_names(&run_svg), [s.local_addr().to_string()]);
    }
}

/// The legend's names in an SVG the plot module drew (which must parse).
fn series_names(svg: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(svg).expect("read svg");
    let doc = roxmltree::Document::parse(&text).expect("the SVG parses");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let known = ["a.hlog", "b.hlog", "127.0.0.1:"];
    let mut names: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(str::trim).map(str::to_string))
        .filter(|t| known.iter().any(|k| t.starts_with(k)))
        .collect();
    names.sort();
    names
}

#[test]
fn start_at_waits_for_its_time_and_merge_names_a_bad_file() {
    let s = server(Driver::Legacy);
    let mut o = options(&s, Driver::Legacy, Rpc::Unary);
    o.calls = Some(20);
    let began = std::time::Instant::now();
    o.start_at = Some(std::time::SystemTime::now() + Duration::from_millis(800));
    let r = run::run(&o).expect("run");
    assert_eq!(r.calls_ok, 20);
    assert!(
        began.elapsed() >= Duration::from_millis(800),
        "started early"
    );
    assert!(grpc_loadtest::hdrlog::parse_time("2026-12-01T18:00:00Z").is_ok());
    assert!(grpc_loadtest::hdrlog::parse_time("1796144201.5").is_ok());
    assert!(grpc_loadtest::hdrlog::parse_time("soon").is_err());

    let dir = tempfile::tempdir().expect("dir");
    let junk = dir.path().join("junk.hlog");
    std::fs::write(&junk, "not a log\n").expect("write");
    let err = grpc_loadtest::hdrlog::merge(&[&junk]).expect_err("junk");
    assert!(err.contains("junk.hlog"), "{err}");
    let missing =
        grpc_loadtest::hdrlog::merge(&[dir.path().join("none.hlog")]).expect_err("missing");
    assert!(missing.contains("none.hlog"), "{missing}");
}
