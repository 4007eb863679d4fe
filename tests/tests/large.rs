//! Large messages: no size limit by default, payloads intact.

use bytes::Bytes;
use grpc_proxy_tests::{proxy_test, proxy_to, Client, Upstream};

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

proxy_test! {
    async fn sixteen_mib_messages(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let message = pattern(16 << 20);
        let echoed = client.echo(message.clone()).await.expect("call");
        assert!(echoed == message, "16 MiB came back changed");
    }

    async fn sixty_four_mib_messages(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let message = pattern(64 << 20);
        let echoed = client.echo(message.clone()).await.expect("call");
        assert_eq!(echoed.len(), message.len());
        assert!(echoed == message, "64 MiB came back changed");
    }
}
