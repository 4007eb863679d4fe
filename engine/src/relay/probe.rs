//! Health checks on the own frame path: each check is one
//! `grpc.health.v1.Health/Check` call on a connection of its own, spoken
//! by the engine's HTTP/2 layer over TCP or TLS as the cluster's calls
//! are, so that the own path needs nothing of the h2 crate. The schedule,
//! thresholds and what counts as passing are the upstream module's
//! ([`health`](crate::upstream::health)).
//!
//! A connection per check costs a TCP (and TLS) handshake every interval
//! per endpoint per core, and in exchange a check never shares a
//! connection with calls: a probe cannot be queued behind calls at a
//! stream limit, and an endpoint that accepts no new connections fails
//! its checks, as it would fail new calls.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::io::Splitable;
use monoio::net::tcp::TcpOwnedWriteHalf;
use monoio::net::TcpStream;

use crate::config::{HealthCheck, Settings};
use crate::http2::connection::{Connection, Event, Limits, Role};
use crate::http2::headers::{pseudo, Kind};
use crate::http2::outbox::Outbox;
use crate::relay::calls::parse_code;
use crate::relay::wire::{Source, READ_SMALL};
use crate::transport::owned_tls::{self, TlsWriter};
use crate::upstream::cluster::Cluster;
use crate::upstream::endpoint::Endpoint;
use crate::upstream::health::{request_message, serving, Probe, MAX_RESPONSE, PATH};

/// Checks over the own frame path, with the worker's socket settings.
#[derive(Clone)]
pub struct OwnProbe {
    settings: Rc<Settings>,
}

impl OwnProbe {
    /// A prober for a worker with `settings`.
    pub fn new(settings: Rc<Settings>) -> OwnProbe {
        OwnProbe { settings }
    }
}

impl Probe for OwnProbe {
    async fn probe(
        &self,
        cluster: &Rc<Cluster>,
        endpoint: &Rc<Endpoint>,
        check: &HealthCheck,
    ) -> bool {
        let attempt = check_once(&self.settings, cluster, endpoint, check);
        matches!(
            monoio::time::timeout(check.timeout, attempt).await,
            Ok(Some(true))
        )
    }
}

/// Connects, asks, and reads the answer: `Some(serving)`, or `None` when
/// the connection or the exchange failed.
async fn check_once(
    settings: &Settings,
    cluster: &Cluster,
    endpoint: &Endpoint,
    check: &HealthCheck,
) -> Option<bool> {
    let mut tcp = TcpStream::connect(endpoint.addr()).await.ok()?;
    crate::transport::socket::tune(&tcp, settings);
    let authority = endpoint.addr().to_string();
    let Some(tls) = cluster.tls().0 else {
        let (reader, writer) = tcp.into_split();
        return exchange(reader, writer, "http", &authority, check).await;
    };
    let config = tls.config.clone();
    let (conn, cipher) = owned_tls::connect(&mut tcp, config, tls.server_name.clone())
        .await
        .ok()?;
    let (reader, writer) = owned_tls::split(tcp, conn, cipher);
    Box::pin(exchange(reader, writer, "https", &authority, check)).await
}

/// The writing half of a probe's connection.
trait Send {
    /// Writes all of `bytes`.
    fn send(&mut self, bytes: Bytes) -> impl std::future::Future<Output = std::io::Result<()>>;
}

impl Send for TcpOwnedWriteHalf {
    async fn send(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.write_all(bytes).await.0.map(|_| ())
    }
}

impl Send for TlsWriter {
    async fn send(&mut self, mut bytes: Bytes) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = self.write(std::slice::from_ref(&bytes)).await?;
            let _ = bytes.split_to(n.min(bytes.len()));
        }
        Ok(())
    }
}

/// One check on an open connection.
async fn exchange<R: Source, W: Send>(
    mut reader: R,
    mut writer: W,
    scheme: &str,
    authority: &str,
    check: &HealthCheck,
) -> Option<bool> {
    let mut out = Outbox::new();
    let mut conn = Connection::new(Role::Client, Limits::default(), &mut out);
    let timeout = format!("{}m", check.timeout.as_millis().max(1));
    let head: [(&str, &str); 7] = [
        (":method", "POST"),
        (":scheme", scheme),
        (":path", PATH),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", &timeout),
    ];
    let fields = head
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes(), false));
    let id = conn.open(fields, false, &mut out).ok()?;
    conn.send_data(id, request_message(&check.service), true, &mut out)
        .ok()?;
    let mut buf = BytesMut::new();
    let mut want = READ_SMALL;
    let mut message = BytesMut::new();
    loop {
        if !out.is_empty() {
            writer.send(out.take_all().freeze()).await.ok()?;
        }
        let (read, b) = reader.read_more(buf, &mut want).await;
        buf = b;
        if read.ok()? == 0 {
            return None;
        }
        let mut verdict = None;
        conn.recv(&mut buf, &mut out, |event| match event {
            Event::Headers {
                stream,
                list,
                end_stream,
            } if stream == id => {
                let head = list.kind() == Kind::Response;
                if head && list.pseudo(pseudo::STATUS) != Some(&b"200"[..]) {
                    verdict = Some(false);
                } else if end_stream {
                    // Trailers, or a trailers-only answer (an error).
                    let ok = list.get(b"grpc-status").and_then(parse_code)
                        == Some(crate::grpc::status::Code::Ok);
                    verdict = Some(ok && !head && serving(&message));
                }
            }
            Event::Data { stream, data, .. } if stream == id => {
                if message.len() + data.len() > MAX_RESPONSE {
                    verdict = Some(false); // no HealthCheckResponse is this large
                } else {
                    message.extend_from_slice(&data);
                }
            }
            Event::Reset { stream, .. } if stream == id => verdict = Some(false),
            Event::HeadersTooLarge { stream } if stream == id => verdict = Some(false),
            _ => {}
        })
        .ok()?;
        if verdict.is_some() {
            return verdict;
        }
    }
}
