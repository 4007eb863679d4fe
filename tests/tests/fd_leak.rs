//! No file descriptor leaks after many connections. Its own test binary
//! (a process of its own), and its two driver variants take turns, because
//! it counts every descriptor the process has open.

use std::time::Duration;

use grpc_proxy_tests::{open_fds, proxy_test, proxy_to, Client, Upstream};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

proxy_test! {
    async fn many_connections_leave_no_file_descriptors_behind(driver) {
        let _turn = ONE_AT_A_TIME.lock().await;
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let addr = proxy.local_addr();
        // The first call opens the proxy's upstream connection, which stays.
        Client::connect(addr).await.echo("warm").await.expect("call");
        let before = open_fds();
        for round in 0..5 {
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    tokio::spawn(async move {
                        if i % 2 == 0 {
                            let mut c = Client::connect(addr).await;
                            c.echo(format!("{round}/{i}")).await.expect("call");
                        } else {
                            drop(tokio::net::TcpStream::connect(addr).await.expect("connect"));
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("task");
            }
        }
        // Clients are gone; the proxy closes its side as it notices. Wait
        // for that (bounded), then compare.
        let mut now = open_fds();
        for _ in 0..200 {
            if now <= before + 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            now = open_fds();
        }
        assert!(now <= before + 4, "fds before {before}, after 250 connections {now}");
    }

}
