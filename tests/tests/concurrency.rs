//! Many calls, many messages, many connections at once.

use bytes::Bytes;
use futures_util::StreamExt;
use grpc_proxy_tests::{proxy_test, proxy_to, Client, Upstream};

proxy_test! {
    async fn a_thousand_concurrent_calls_on_one_connection(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let client = Client::connect(proxy.local_addr()).await;
        let calls: Vec<_> = (0..1000u32)
            .map(|i| {
                let mut c = client.clone();
                tokio::spawn(async move {
                    let m = Bytes::from(format!("call {i}"));
                    (c.echo(m.clone()).await, m)
                })
            })
            .collect();
        for call in calls {
            let (result, sent) = call.await.expect("task");
            assert_eq!(result.expect("call succeeds"), sent);
        }
        assert_eq!(up.events().calls(), 1000);
    }

    async fn twenty_thousand_messages_each_way_on_one_bidi_stream(driver) {
        const N: u32 = 20_000;
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let mut client = Client::connect(proxy.local_addr()).await;
        let (tx, mut replies) = client.open_bidi(256).await;
        // Send and receive at the same time: the sender does not wait for
        // replies, so both directions are busy together.
        let sender = tokio::spawn(async move {
            for i in 0..N {
                tx.send(Bytes::from(i.to_be_bytes().to_vec())).await.expect("send");
            }
        });
        for i in 0..N {
            let m = replies.next().await.expect("a reply").expect("not an error");
            assert_eq!(m, Bytes::from(i.to_be_bytes().to_vec()), "message {i} in order");
        }
        sender.await.expect("sender");
        assert!(replies.next().await.is_none(), "the stream ends with OK");
    }

    async fn two_hundred_client_connections_at_once(driver) {
        let up = Upstream::start("a");
        let proxy = proxy_to(driver, up.addr());
        let addr = proxy.local_addr();
        let clients: Vec<_> = (0..200u32)
            .map(|i| {
                tokio::spawn(async move {
                    let mut c = Client::connect(addr).await;
                    for j in 0..5u32 {
                        let m = Bytes::from(format!("{i}/{j}"));
                        assert_eq!(c.echo(m.clone()).await.expect("call"), m);
                    }
                })
            })
            .collect();
        for c in clients {
            c.await.expect("client task");
        }
        assert_eq!(up.events().calls(), 1000);
    }
}
