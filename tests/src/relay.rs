//! A TCP relay in front of an upstream that can go silent: `freeze` makes
//! every connection it carries stop forwarding in both directions while
//! staying open, as a peer behind a dead link or a crashed host does. The
//! kernel still acknowledges what is sent; nothing comes back. Connections
//! made after a freeze are relayed as usual.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running relay; stops when dropped.
pub struct Relay {
    addr: SocketAddr,
    flags: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let flags: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (f, c) = (flags.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let frozen = Arc::new(AtomicBool::new(false));
                f.lock().expect("flags").push(frozen.clone());
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pipe(dr, uw, frozen.clone()));
                tokio::spawn(pipe(ur, dw, frozen));
            }
        });
        Relay {
            addr,
            flags,
            connections,
            task,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections relayed so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Every connection relayed so far stops forwarding, for good.
    pub fn freeze(&self) {
        for f in self.flags.lock().expect("flags").iter() {
            f.store(true, Ordering::SeqCst);
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        if frozen.load(Ordering::SeqCst) {
            // Silent: hold both sockets open, forward nothing, ever.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
