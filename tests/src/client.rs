//! A tonic client of `test.Echo` (raw bytes), for one proxy or upstream.

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::Stream;
use http::uri::PathAndQuery;
use tokio::sync::mpsc;
use tonic::client::Grpc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Response, Status, Streaming};

use crate::codec::BytesCodec;

/// One HTTP/2 connection's worth of client; clones share the connection.
#[derive(Clone)]
pub struct Client {
    grpc: Grpc<Channel>,
}

impl Client {
    /// Connects (one HTTP/2 connection) to `addr`.
    pub async fn connect(addr: SocketAddr) -> Client {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .connect()
            .await
            .expect("client connects");
        Client {
            grpc: Grpc::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        }
    }

    /// Connects over TLS to `addr` (as `localhost`), trusting `ca_pem`,
    /// presenting `identity` (certificate and key PEM) if given. Fails when
    /// the TLS handshake or the connection fails.
    pub async fn connect_tls(
        addr: SocketAddr,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<Client, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Channel::from_shared(format!("https://{addr}"))
            .expect("valid uri")
            .tls_config(tls)
            .map_err(|e| format!("TLS config: {e:?}"))?
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        Ok(Client {
            grpc: Grpc::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        })
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("client not ready: {e}")))
    }

    /// A unary call to `/test.Echo/<method>`.
    pub async fn unary(
        &mut self,
        method: &str,
        request: Request<Bytes>,
    ) -> Result<Response<Bytes>, Status> {
        self.ready().await?;
        self.grpc.unary(request, path(method), BytesCodec).await
    }

    /// `Unary` with a payload and no metadata.
    pub async fn echo(&mut self, payload: impl Into<Bytes>) -> Result<Bytes, Status> {
        self.unary("Unary", Request::new(payload.into()))
            .await
            .map(Response::into_inner)
    }

    /// A server-streaming call.
    pub async fn server_stream(
        &mut self,
        request: Request<Bytes>,
    ) -> Result<Response<Streaming<Bytes>>, Status> {
        self.ready().await?;
        self.grpc
            .server_streaming(request, path("ServerStream"), BytesCodec)
            .await
    }

    /// A client-streaming call.
    pub async fn client_stream<S>(&mut self, request: Request<S>) -> Result<Response<Bytes>, Status>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        self.ready().await?;
        self.grpc
            .client_streaming(request, path("ClientStream"), BytesCodec)
            .await
    }

    /// A bidirectional call.
    pub async fn bidi<S>(
        &mut self,
        request: Request<S>,
    ) -> Result<Response<Streaming<Bytes>>, Status>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        self.ready().await?;
        self.grpc.streaming(request, path("Bidi"), BytesCodec).await
    }
}

impl Client {
    /// Makes a unary call to `method` with `metadata`; the name of the
    /// upstream that answered (its `x-upstream`), or the status.
    pub async fn upstream_of(
        &mut self,
        method: &str,
        metadata: &[(&'static str, &'static str)],
    ) -> Result<String, Status> {
        let mut request = Request::new(Bytes::from("m"));
        for (k, v) in metadata {
            request
                .metadata_mut()
                .insert(*k, tonic::metadata::MetadataValue::from_static(v));
        }
        let response = self.unary(method, request).await?;
        Ok(response
            .metadata()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned())
    }

    /// Opens a `Bidi` stream fed from a channel of `buffer` messages:
    /// send on the sender, read replies from the stream, drop the sender to
    /// end the request side.
    pub async fn open_bidi(&mut self, buffer: usize) -> (mpsc::Sender<Bytes>, Streaming<Bytes>) {
        let (tx, rx) = mpsc::channel::<Bytes>(buffer);
        let replies = self
            .bidi(Request::new(tokio_stream::wrappers::ReceiverStream::new(
                rx,
            )))
            .await
            .expect("bidi call starts")
            .into_inner();
        (tx, replies)
    }
}

fn path(method: &str) -> PathAndQuery {
    PathAndQuery::try_from(format!("/test.Echo/{method}")).expect("valid path")
}
