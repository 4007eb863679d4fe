//! A bare HTTP/2 upstream (the `h2` crate on tokio) that never answers and
//! never enforces deadlines: it records each request's `grpc-timeout` and
//! how the stream was reset. Only the proxy can end such a call, so it
//! proves the proxy's own deadline handling.

use std::net::SocketAddr;
use std::task::Poll;

use tokio::sync::mpsc;

/// What the silent upstream saw of one call.
#[derive(Debug)]
pub struct Seen {
    /// The `grpc-timeout` header, if any.
    pub grpc_timeout: Option<String>,
    /// The reset reason the stream ended with.
    pub reset: Option<h2::Reason>,
}

/// A running silent upstream; stops when dropped.
pub struct Silent {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    /// Starts on a free loopback port, on the current tokio runtime.
    pub async fn start() -> Silent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(tcp).await else {
                        return;
                    };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let tx = tx.clone();
                        let grpc_timeout = request
                            .headers()
                            .get("grpc-timeout")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        tokio::spawn(async move {
                            let _body = request.into_body();
                            let reset = std::future::poll_fn(|cx| match respond.poll_reset(cx) {
                                Poll::Ready(r) => Poll::Ready(r.ok()),
                                Poll::Pending => Poll::Pending,
                            })
                            .await;
                            let _ = tx.send(Seen {
                                grpc_timeout,
                                reset,
                            });
                        });
                    }
                });
            }
        });
        Silent { addr, seen, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next call that ended.
    pub async fn next_ended(&mut self) -> Seen {
        self.seen.recv().await.expect("silent upstream is running")
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}
