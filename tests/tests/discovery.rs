//! Endpoint names resolved again in the background (`[upstream]
//! dns_refresh`), with a hosts file the test writes as the resolver it
//! controls (`[upstream] hosts_file`): endpoints a name gains take calls,
//! endpoints it loses take no new calls and their connections close, and
//! a name that stops resolving keeps its last answer; no call fails
//! meanwhile.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use grpc_proxy_tests::admin::sample;
use grpc_proxy_tests::{proxy, proxy_test, Client, Upstream};

/// Two upstreams on two loopback addresses with the same port, named
/// `a` and `b`: one name can resolve to either or both.
fn two_upstreams() -> (Upstream, Upstream, u16) {
    let a = Upstream::start_at("a", SocketAddr::from(([127, 0, 0, 2], 0)));
    let port = a.addr().port();
    let b = Upstream::start_at(
        "b",
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)), port),
    );
    (a, b, port)
}

fn write_hosts(path: &std::path::Path, ips: &[&str]) {
    let mut text = String::from("# the test's resolver\n127.0.0.1 localhost\n");
    for ip in ips {
        text.push_str(&format!("{ip} backend.test.invalid\n"));
    }
    // Written whole and renamed: a refresh never reads half a file.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).expect("write hosts");
    std::fs::rename(&tmp, path).expect("rename hosts");
}

fn config(hosts: &std::path::Path, port: u16) -> String {
    format!(
        // The harness's config ends in its [upstream] table: these join it.
        "hosts_file = {hosts:?}\ndns_refresh = \"50ms\"\n\
         [[clusters]]\nname = \"backend\"\nendpoints = [\"backend.test.invalid:{port}\"]\n\
         [[routes]]\ncluster = \"backend\"\n"
    )
}

/// Calls `Unary` in a loop until `stop`; counts them, and panics on the
/// first that fails.
fn load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        while !stop.load(Ordering::Relaxed) {
            let reply = client.echo("x").await;
            assert!(
                reply.is_ok(),
                "a call failed while endpoints changed: {reply:?}"
            );
            done.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// TCP connections established to `addr` (its accepted sockets), from
/// /proc/net/tcp.
fn established_at(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else {
        return 0;
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"01")
        })
        .count()
}

async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

proxy_test! {
    async fn endpoints_follow_the_name_under_load_without_failing_a_call(driver) {
        let dir = tempfile::tempdir().expect("dir");
        let hosts = dir.path().join("hosts");
        let (a, b, port) = two_upstreams();
        write_hosts(&hosts, &["127.0.0.2"]);
        let proxy = proxy(driver, &config(&hosts, port));
        let stop = Arc::new(AtomicBool::new(false));
        // Each load task counts its own calls: once every task has made two
        // more, no call from before a change is still on its way.
        let done: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let loads: Vec<_> = done.iter().map(|d| load(proxy.local_addr(), stop.clone(), d.clone())).collect();
        let settled = |done: &[Arc<AtomicUsize>]| {
            let then: Vec<usize> = done.iter().map(|d| d.load(Ordering::Relaxed)).collect();
            let done = done.to_vec();
            move || done.iter().zip(&then).all(|(d, t)| d.load(Ordering::Relaxed) >= t + 2)
        };
        until("a takes calls", || a.events().calls() > 20).await;
        assert_eq!(b.events().calls(), 0);

        // The name gains b: both take calls.
        write_hosts(&hosts, &["127.0.0.2", "127.0.0.3"]);
        until("b takes calls", || b.events().calls() > 20).await;
        let before = a.events().calls();
        until("a still takes calls", || a.events().calls() > before + 20).await;

        // The name loses a: a takes no new calls, b takes them all.
        write_hosts(&hosts, &["127.0.0.3"]);
        let updates = "grpc_proxy_dns_endpoint_updates_total";
        until("the second change is taken", || sample(&proxy.metrics().render(), updates) == Some(2.0)).await;
        // Calls already under way on a when it went end there.
        until("calls from before the change have ended", settled(&done)).await;
        let a_then = a.events().calls();
        let b_then = b.events().calls();
        until("b takes more calls", || b.events().calls() > b_then + 50).await;
        assert_eq!(a.events().calls(), a_then, "a took calls after the name lost it");
        // a's connection closed once its calls had ended.
        until("a's connection closes", || established_at(a.addr()) == 0).await;
        assert!(established_at(b.addr()) >= 1);

        stop.store(true, Ordering::Relaxed);
        for l in loads {
            l.await.expect("no call failed");
        }
        assert!(done.iter().map(|d| d.load(Ordering::Relaxed)).sum::<usize>() > 100);
    }

    async fn a_name_that_stops_resolving_keeps_its_last_answer(driver) {
        let dir = tempfile::tempdir().expect("dir");
        let hosts = dir.path().join("hosts");
        let (a, _b, port) = two_upstreams();
        write_hosts(&hosts, &["127.0.0.2"]);
        let proxy = proxy(driver, &config(&hosts, port));
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(client.echo("x").await.expect("a call"), "x");

        // The name leaves the hosts file, and `.invalid` names never
        // resolve otherwise: every refresh fails.
        write_hosts(&hosts, &[]);
        let failing = "grpc_proxy_dns_names_failing";
        until("the failure shows", || sample(&proxy.metrics().render(), failing) == Some(1.0)).await;
        let failures = "grpc_proxy_dns_resolve_failures_total";
        until("failures are counted", || sample(&proxy.metrics().render(), failures).unwrap_or(0.0) >= 2.0).await;
        for _ in 0..20 {
            assert_eq!(client.echo("x").await.expect("calls go on to the last answer"), "x");
        }
        assert!(a.events().calls() >= 21);

        // It resolves again: the failure clears.
        write_hosts(&hosts, &["127.0.0.2"]);
        until("the failure clears", || sample(&proxy.metrics().render(), failing) == Some(0.0)).await;
        assert_eq!(client.echo("x").await.expect("a call"), "x");
    }

    async fn a_failed_connect_brings_the_next_resolution_forward(driver) {
        // Scenario: names are resolved again only every hour, but the
        // name's only upstream goes away and the name now points
        // elsewhere; the failed connects make the proxy look again within
        // about a second, and calls reach the new address.
        let dir = tempfile::tempdir().expect("dir");
        let hosts = dir.path().join("hosts");
        let (mut a, b, port) = two_upstreams();
        write_hosts(&hosts, &["127.0.0.2"]);
        let text = config(&hosts, port).replace("dns_refresh = \"50ms\"", "dns_refresh = \"1h\"");
        let proxy = proxy(driver, &text);
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(client.upstream_of("Unary", &[]).await.expect("a call"), "a");
        write_hosts(&hosts, &["127.0.0.3"]);
        a.stop();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match client.upstream_of("Unary", &[]).await {
                Ok(name) if name == "b" => break,
                other => {
                    assert!(std::time::Instant::now() < deadline, "never moved to b: {other:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert!(b.events().calls() >= 1);
    }

    async fn a_name_that_a_reload_brings_is_resolved_again_too(driver) {
        // Scenario: the proxy starts with addresses only (nothing to
        // resolve again), then a reload brings a name; its answers must be
        // followed from then on, as if it had been there from the start.
        let dir = tempfile::tempdir().expect("dir");
        let hosts = dir.path().join("hosts");
        let (a, b, port) = two_upstreams();
        write_hosts(&hosts, &["127.0.0.2"]);
        let text = |endpoint: String| {
            format!(
                "listen = \"127.0.0.1:0\"\ncores = 1\n[upstream]\nhosts_file = {hosts:?}\ndns_refresh = \"50ms\"\n\
                 [[clusters]]\nname = \"backend\"\nendpoints = [\"{endpoint}\"]\n[[routes]]\ncluster = \"backend\"\n"
            )
        };
        let first = grpc_proxy::Config::parse(&text(a.addr().to_string()), "test").expect("config");
        let (builder, routes) = grpc_proxy::ProxyBuilder::from_config(&first).expect("builder");
        let proxy = builder.driver(driver).start(routes).expect("starts");
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(client.upstream_of("Unary", &[]).await.expect("call"), "a");
        let second = grpc_proxy::Config::parse(&text(format!("backend.test.invalid:{port}")), "test").expect("config");
        proxy.controller().reload(&second).expect("reload");
        assert_eq!(client.upstream_of("Unary", &[]).await.expect("call"), "a");
        write_hosts(&hosts, &["127.0.0.3"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match client.upstream_of("Unary", &[]).await {
                Ok(name) if name == "b" => break,
                other => {
                    assert!(std::time::Instant::now() < deadline, "the name was never resolved again: {other:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        assert!(b.events().calls() >= 1);
    }
}
