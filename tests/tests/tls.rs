//! TLS: downstream TLS and mTLS, routing on the client's certificate,
//! upstream TLS with a private CA, start-up errors naming the file, and a
//! reload that picks up a new server certificate. Certificates come from
//! rcgen ([`Pki`]); tonic is the client and the upstream.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use grpc_proxy::{Config, ProxyBuilder};
use grpc_proxy_tests::admin::{sample, wait_until};
use grpc_proxy_tests::echo::collect;
use grpc_proxy_tests::{cluster, proxy, proxy_test, Client, Issued, Pki, Upstream};
use rustls_pki_types::ServerName;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

/// A `[tls]` section for the proxy's listener.
fn listener_tls(pki: &Pki, client_auth: &str) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_auth = \"{client_auth}\"\nclient_ca = {:?}\n",
        pki.server.cert, pki.server.key, pki.ca.cert
    )
}

fn identity(issued: &Issued) -> Option<(&str, &str)> {
    Some((&issued.cert_pem, &issued.key_pem))
}

/// The upstream that answered a unary call, from `x-upstream`.
async fn answered_by(client: &mut Client) -> Result<String, tonic::Status> {
    client.upstream_of("Unary", &[]).await
}

/// Connects with `identity` and makes one call; the error if either fails.
async fn call_as(
    addr: std::net::SocketAddr,
    pki: &Pki,
    who: Option<&Issued>,
) -> Result<String, String> {
    let mut client = Client::connect_tls(addr, &pki.ca.cert_pem, who.and_then(identity)).await?;
    answered_by(&mut client).await.map_err(|s| format!("{s:?}"))
}

/// A TLS connection to `addr` that offers h2, trusting `pki`'s CA, for a
/// client that writes its own bytes.
async fn raw_tls(
    addr: std::net::SocketAddr,
    pki: &Pki,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    raw_tls_as(addr, pki, None).await.expect("TLS handshake")
}

/// [`raw_tls`] presenting `who`'s certificate, or none; the handshake's
/// error as the client saw it.
async fn raw_tls_as(
    addr: std::net::SocketAddr,
    pki: &Pki,
    who: Option<&Issued>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    raw_tls_on(tcp, pki, who).await
}

/// [`raw_tls_as`] on a TCP connection already made.
async fn raw_tls_on(
    tcp: tokio::net::TcpStream,
    pki: &Pki,
    who: Option<&Issued>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes()).expect("CA PEM decodes");
    roots.add(ca).expect("CA");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let mut config = match who {
        Some(who) => {
            let chain =
                vec![CertificateDer::from_pem_slice(who.cert_pem.as_bytes()).expect("cert PEM")];
            let key = PrivateKeyDer::from_pem_slice(who.key_pem.as_bytes()).expect("key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
}

/// How a listener at `addr` refuses a client presenting `who` (or no
/// certificate): the alert the client receives, in the handshake or (TLS
/// 1.3, where the client finishes first) on its first read. The client
/// writes nothing after its handshake, so the proxy has read all it sent
/// when it closes, and the alert cannot be lost to a reset. It must come
/// within 10 s, the listener's handshake timeout: a proxy that held a
/// refused connection open would fail here.
async fn refusal_of(addr: std::net::SocketAddr, pki: &Pki, who: Option<&Issued>) -> String {
    use tokio::io::AsyncReadExt;
    let error = match raw_tls_as(addr, pki, who).await {
        Err(e) => e,
        Ok(mut tls) => {
            let mut rest = Vec::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tls.read_to_end(&mut rest),
            );
            match read
                .await
                .expect("the refusal comes within the handshake timeout")
            {
                Err(e) => e,
                Ok(n) => panic!("closed with {n} bytes and no alert"),
            }
        }
    };
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => format!("{alert:?}"),
        _ => panic!("refused without an alert: {error:?}"),
    }
}

/// The leaf certificate a TLS server at `addr` presents.
async fn served_certificate(addr: std::net::SocketAddr, pki: &Pki) -> Vec<u8> {
    let tls = raw_tls(addr, pki).await;
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

/// A proxy whose listener speaks TLS with `pki`'s server certificate (no
/// client certificates), forwarding every call to `upstream` as cluster
/// "a".
fn tls_proxy_to(
    driver: grpc_proxy::Driver,
    pki: &Pki,
    upstream: std::net::SocketAddr,
) -> grpc_proxy::ProxyHandle {
    proxy(
        driver,
        &format!(
            "{}{}[[routes]]\ncluster = \"a\"\n",
            listener_tls(pki, "off"),
            cluster("a", upstream)
        ),
    )
}

proxy_test! {
    async fn a_tls_handshake_under_way_when_the_drain_starts_still_gets_goaway(driver) {
        // Scenario: a client has connected and not yet sent its TLS hello
        // when the proxy starts to drain, while another client's stream
        // keeps the drain going. It is served once its handshake is done,
        // but must get GOAWAY like every connection open at the drain:
        // else it could open calls until the drain timeout.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = Pki::new();
        let up = Upstream::start("a");
        let proxy = tls_proxy_to(driver, &pki, up.addr());
        let addr = proxy.local_addr();
        let mut other = Client::connect_tls(addr, &pki.ca.cert_pem, None).await.expect("TLS");
        let (tx, mut replies) = other.open_bidi(1).await;
        tx.send(Bytes::from_static(b"open")).await.expect("send");
        assert_eq!(replies.next().await.expect("reply").expect("ok"), "open");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        wait_until(&proxy, "the handshake is under way", |m| {
            sample(m, "grpc_proxy_downstream_tls_handshakes{core=\"0\"}") == Some(1.0)
        })
        .await;
        proxy.drain();
        let mut tls = raw_tls_on(tcp, &pki, None).await.expect("the handshake under way completes");
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        tls.write_all(&hello).await.expect("preface");
        let goaway = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                let mut head = [0u8; 9];
                tls.read_exact(&mut head).await?;
                let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                tls.read_exact(&mut payload).await?;
                if head[3] == 7 {
                    return Ok::<_, std::io::Error>(payload);
                }
            }
        })
        .await
        .expect("a GOAWAY within 5 s")
        .expect("read");
        assert_eq!(&goaway[4..8], &[0, 0, 0, 0], "NO_ERROR");
        drop(tx);
        assert!(replies.next().await.is_none(), "the other stream ends with OK");
    }

    async fn stalled_tls_handshakes_give_way_to_new_ones(driver) {
        // Scenario: clients connect and never finish TLS. At the core's
        // limit of handshakes under way (2 here), they must not lock
        // others out for the whole handshake timeout (30 s here): a new
        // handshake ends the one under way longest, and honest clients
        // get through at once.
        use tokio::io::AsyncReadExt;
        let pki = Pki::new();
        let up = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            "[timeouts]\nhandshake = \"30s\"\n[limits]\nmax_tls_handshakes_per_worker = 2\n{}{}[[routes]]\ncluster = \"a\"\n",
            listener_tls(&pki, "off"),
            cluster("a", up.addr())
        ));
        let addr = proxy.local_addr();
        let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _second = tokio::net::TcpStream::connect(addr).await.expect("connect");
        wait_until(&proxy, "both stalled handshakes are under way", |m| {
            sample(m, "grpc_proxy_downstream_tls_handshakes{core=\"0\"}") == Some(2.0)
        })
        .await;

        assert_eq!(call_as(addr, &pki, None).await.expect("an honest client is served"), "a");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stalled.read(&mut byte))
            .await
            .expect("the oldest stalled handshake is closed well before its timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
        // Room was made once; the next client finds a free place.
        assert_eq!(call_as(addr, &pki, None).await.expect("served"), "a");
        let text = proxy.metrics().render();
        assert_eq!(sample(&text, "grpc_proxy_downstream_tls_handshakes_evicted_total{core=\"0\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "grpc_proxy_downstream_tls_handshakes{core=\"0\"}"), Some(1.0), "{text}");
    }

    async fn tls_carries_all_four_rpc_kinds(driver) {
        let pki = Pki::new();
        let up = Upstream::start("a");
        let proxy = tls_proxy_to(driver, &pki, up.addr());
        let mut client = Client::connect_tls(proxy.local_addr(), &pki.ca.cert_pem, None)
            .await
            .expect("TLS client connects");
        assert_eq!(client.echo("hello").await.expect("unary"), Bytes::from("hello"));
        // The client said https; the upstream speaks cleartext, and is told
        // its own scheme (grpc-dotnet refuses another).
        assert_eq!(up.events().last_values(":scheme"), ["http"]);

        let mut request = Request::new(Bytes::from("tick"));
        request.metadata_mut().insert("x-count", MetadataValue::from_static("20"));
        let stream = client.server_stream(request).await.expect("server streaming").into_inner();
        assert_eq!(collect(stream).await.expect("stream ends OK").len(), 20);

        let messages = (0..30).map(|i| Bytes::from(vec![b'x'; i * 100]));
        let answer = client
            .client_stream(Request::new(tokio_stream::iter(messages)))
            .await
            .expect("client streaming")
            .into_inner();
        let total: u64 = (0..30).map(|i| i * 100).sum();
        assert_eq!(&answer[..8], &total.to_be_bytes(), "bytes the upstream got");
        assert_eq!(&answer[8..], &30u64.to_be_bytes(), "messages the upstream got");

        let (tx, mut replies) = client.open_bidi(4).await;
        for i in 0..50u32 {
            let m = Bytes::from(vec![b'b'; 1 + i as usize * 1000]);
            tx.send(m.clone()).await.expect("send");
            assert_eq!(replies.next().await.expect("a reply").expect("ok"), m);
        }
        drop(tx);
        assert!(replies.next().await.is_none(), "bidi ends cleanly");

        // 4 MiB each way exercises TLS records, windows and write batching
        // (writes of 256 KiB of plaintext that end inside a segment); bytes
        // that differ from their neighbours show one out of place.
        let big: Bytes = (0..4u32 << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        assert_eq!(client.echo(big.clone()).await.expect("4 MiB"), big);
        assert_eq!(up.events().calls(), 5);
    }

    async fn mtls_required_refuses_no_certificate_and_an_untrusted_one(driver) {
        let pki = Pki::new();
        let up = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            "{}{}[[routes]]\ncluster = \"a\"\n",
            listener_tls(&pki, "required"),
            cluster("a", up.addr())
        ));
        let addr = proxy.local_addr();
        assert_eq!(call_as(addr, &pki, Some(&pki.alice)).await.expect("alice is served"), "a");
        // Refused in the handshake, each with the alert that says why. A
        // raw client, not tonic: tonic's channel, refused after its TLS
        // 1.3 handshake, now and then closes its socket and never fails
        // its call: about once in 200 runs here, with the proxy's side
        // closed and its handshake failure counted, and once in 13,000
        // refusals by a plain tokio-rustls server, no proxy involved.
        assert_eq!(refusal_of(addr, &pki, None).await, "CertificateRequired");
        assert_eq!(refusal_of(addr, &pki, Some(&pki.mallory)).await, "UnknownCA");
        // Counted once its alert is written, which the client may see first.
        wait_until(&proxy, "both refusals counted", |m| {
            sample(m, "grpc_proxy_downstream_tls_handshake_failures_total{core=\"0\"}") == Some(2.0)
        })
        .await;
        // Neither reached the upstream, and the proxy still serves.
        assert_eq!(call_as(addr, &pki, Some(&pki.bob)).await.expect("bob is served"), "a");
        assert_eq!(up.events().calls(), 2);
    }

    async fn garbage_and_forged_records_end_only_their_own_connection(driver) {
        // Hostile peers at the TLS layer: one sends bytes that are no TLS
        // at all; one finishes the handshake and then sends an application
        // record it did not encrypt (the MAC cannot check). Each loses its
        // own connection; a client already connected, and a new one, go on.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = Pki::new();
        let up = Upstream::start("a");
        let proxy = tls_proxy_to(driver, &pki, up.addr());
        let addr = proxy.local_addr();
        let mut bystander = Client::connect_tls(addr, &pki.ca.cert_pem, None).await.expect("connects");
        assert_eq!(answered_by(&mut bystander).await.expect("served"), "a");

        let mut garbage = tokio::net::TcpStream::connect(addr).await.expect("connect");
        garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), garbage.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the proxy closes a connection that speaks no TLS");

        let tls = raw_tls(addr, &pki).await;
        let (mut tcp, _) = tls.into_inner();
        // An application_data record of 32 bytes the client never sealed.
        let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        forged.extend_from_slice(&[0x5a; 32]);
        tcp.write_all(&forged).await.expect("write");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the proxy closes a connection whose record does not decrypt");

        assert_eq!(answered_by(&mut bystander).await.expect("the bystander goes on"), "a");
        assert_eq!(call_as(addr, &pki, None).await.expect("a new client is served"), "a");
        assert_eq!(up.events().calls(), 3);
    }

    async fn records_that_carry_almost_nothing_end_only_their_own_connection(driver) {
        // A client that streams a request's DATA a byte per record, a
        // KeyUpdate before each (rustls lets 32 in a row through, and any
        // byte of data starts the count again): each record a decryption
        // and each KeyUpdate a key derivation, for bytes HTTP/2 takes as a
        // slow, lawful stream. The proxy closes it; a client beside it
        // goes on.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = Pki::new();
        let up = Upstream::start("a");
        let proxy = tls_proxy_to(driver, &pki, up.addr());
        let addr = proxy.local_addr();
        let mut bystander = Client::connect_tls(addr, &pki.ca.cert_pem, None).await.expect("connects");
        let mut tls = raw_tls(addr, &pki).await;
        use grpc_proxy_tests::peer::{block, flag, frame, grpc_fields, kind, settings_frame, PREFACE};
        let mut fields = grpc_fields();
        fields[2] = (":path", "/test.Echo/ClientStream");
        let mut hello = PREFACE.to_vec();
        hello.extend(settings_frame(&[]));
        hello.extend(frame(kind::HEADERS, flag::END_HEADERS, 1, &block(&fields)));
        tls.write_all(&hello).await.expect("preface and call");
        // Messages of 16 KiB - 5 in DATA frames of 16 KiB: 4 of them.
        let mut body = Vec::new();
        for _ in 0..4 {
            let mut message = vec![0u8];
            message.extend_from_slice(&((16u32 << 10) - 5).to_be_bytes());
            message.resize(16 << 10, 7);
            body.extend(frame(kind::DATA, 0, 1, &message));
        }
        let mut closed = false;
        for byte in &body {
            tls.get_mut().1.refresh_traffic_keys().expect("key update");
            if tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err() {
                closed = true;
                break;
            }
        }
        if !closed {
            // Everything was written: the close comes as the end of reads.
            let mut rest = Vec::new();
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
            closed = read.is_ok();
        }
        assert!(closed, "the proxy closes a connection whose records carry almost nothing");
        assert_eq!(answered_by(&mut bystander).await.expect("the bystander goes on"), "a");
    }

    async fn plaintext_held_past_a_read_is_served_without_new_bytes(driver) {
        // One TLS record carries the preface and SETTINGS, an extension
        // frame (which HTTP/2 ignores) that brings them to exactly one
        // first read of the proxy (512 bytes), then PINGs. The pass of
        // that read ends with no calls and nothing part read, so the
        // connection lets its read buffer go and waits for more to
        // read: it must find the PINGs rustls already decrypted, not
        // wait for the socket, on which nothing more comes.
        use grpc_proxy_tests::peer::{frame, kind, settings_frame, PREFACE};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = Pki::new();
        let up = Upstream::start("a");
        let proxy = proxy(driver, &format!("{}{}", listener_tls(&pki, "off"), cluster("a", up.addr())));
        let mut tls = raw_tls(proxy.local_addr(), &pki).await;
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&settings_frame(&[]));
        let filler = 512 - bytes.len() - 9;
        bytes.extend_from_slice(&frame(0x20, 0, 0, &vec![0; filler]));
        assert_eq!(bytes.len(), 512);
        const PINGS: u8 = 40;
        for i in 0..PINGS {
            bytes.extend_from_slice(&frame(kind::PING, 0, 0, &[i; 8]));
        }
        tls.write_all(&bytes).await.expect("write");
        let mut acked = Vec::new();
        let patience = std::time::Duration::from_secs(5);
        while acked.len() < usize::from(PINGS) {
            let mut head = [0u8; 9];
            let read = tokio::time::timeout(patience, tls.read_exact(&mut head)).await;
            read.expect("every PING is answered without more bytes from the client")
                .expect("the connection stays open");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            tls.read_exact(&mut payload).await.expect("payload");
            if head[3] == kind::PING && head[4] & 1 == 1 {
                acked.push(payload[0]);
            }
        }
        assert_eq!(acked, (0..PINGS).collect::<Vec<_>>(), "acknowledged in order");
    }

    async fn a_tls_connection_quiet_after_its_calls_lets_its_buffers_go_and_serves_on(driver) {
        // idle_buffer 50 ms: the keeper gives up the pending read of a TLS
        // connection without calls (its ciphertext read with it); the
        // next read starts a new buffer and the session goes on.
        let pki = Pki::new();
        let up = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            "[timeouts]\nidle_buffer = \"50ms\"\n{}{}[[routes]]\ncluster = \"a\"\n",
            listener_tls(&pki, "off"),
            cluster("a", up.addr())
        ));
        let mut client = Client::connect_tls(proxy.local_addr(), &pki.ca.cert_pem, None)
            .await
            .expect("connects");
        let big = Bytes::from(vec![7u8; 256 << 10]);
        assert_eq!(client.echo(big.clone()).await.expect("a large call"), big);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(client.echo(big.clone()).await.expect("a large call after"), big);
        assert_eq!(answered_by(&mut client).await.expect("a small call after"), "a");
    }

    async fn a_large_call_ending_gives_back_its_buffers_at_once(driver) {
        // idle_buffer 1 h: the keeper does not look during the test, but
        // a connection whose last call ends with a large read buffer gives
        // up its pending read at once (on epoll), the ciphertext read with
        // it; the next calls find the session whole.
        let pki = Pki::new();
        let up = Upstream::start("a");
        let proxy = proxy(driver, &format!(
            "[timeouts]\nidle_buffer = \"1h\"\n{}{}[[routes]]\ncluster = \"a\"\n",
            listener_tls(&pki, "off"),
            cluster("a", up.addr())
        ));
        let mut client = Client::connect_tls(proxy.local_addr(), &pki.ca.cert_pem, None)
            .await
            .expect("connects");
        let big = Bytes::from(vec![9u8; 256 << 10]);
        for _ in 0..3 {
            assert_eq!(client.echo(big.clone()).await.expect("a large call"), big);
        }
        assert_eq!(answered_by(&mut client).await.expect("a small call after"), "a");
    }

    async fn routes_by_san_send_two_identities_to_two_upstreams(driver) {
        let pki = Pki::new();
        let (a, b) = (Upstream::start("a"), Upstream::start("b"));
        let proxy = proxy(driver, &format!(
            "{}{}{}
            [[routes]]
            client = {{ uri = [\"spiffe://test/alice\"] }}
            cluster = \"a\"
            [[routes]]
            client = {{ dns = [\"bob.test\"] }}
            cluster = \"b\"
            [[routes]]
            client = {{ present = false }}
            reject = {{ code = \"unauthenticated\", message = \"who are you?\" }}
            ",
            listener_tls(&pki, "optional"),
            cluster("a", a.addr()),
            cluster("b", b.addr())
        ));
        let addr = proxy.local_addr();
        assert_eq!(call_as(addr, &pki, Some(&pki.alice)).await.expect("alice"), "a");
        assert_eq!(call_as(addr, &pki, Some(&pki.bob)).await.expect("bob"), "b");
        let anonymous = call_as(addr, &pki, None).await.expect_err("no certificate");
        assert!(anonymous.contains("Unauthenticated") && anonymous.contains("who are you?"), "{anonymous}");
        assert_eq!((a.events().calls(), b.events().calls()), (1, 1));
    }

    async fn a_route_rejecting_an_identity_is_permission_denied(driver) {
        let pki = Pki::new();
        let up = Upstream::start("a");
        let fingerprint: String = ring_sha256(&pki.bob.der);
        let proxy = proxy(driver, &format!(
            "{}{}
            [[routes]]
            client = {{ sha256 = [\"{fingerprint}\"] }}
            reject = {{ code = \"permission_denied\", message = \"bob is suspended\" }}
            [[routes]]
            cluster = \"a\"
            ",
            listener_tls(&pki, "required"),
            cluster("a", up.addr())
        ));
        let addr = proxy.local_addr();
        let mut bob = Client::connect_tls(addr, &pki.ca.cert_pem, identity(&pki.bob))
            .await
            .expect("bob connects");
        let status = answered_by(&mut bob).await.expect_err("bob is refused");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(status.message(), "bob is suspended");
        assert_eq!(call_as(addr, &pki, Some(&pki.alice)).await.expect("alice"), "a");
        assert_eq!(up.events().calls(), 1);
    }

    async fn upstream_tls_with_a_private_ca_works_and_a_wrong_ca_is_unavailable(driver) {
        let pki = Pki::new();
        let up = Upstream::start_tls("secure", &pki.server);
        let upstream_tls = |ca: &std::path::Path| format!(
            "[clusters.tls]\nca = {ca:?}\nserver_name = \"localhost\"\n"
        );
        let proxy = proxy(driver, &format!(
            "{}{}{}{}
            [[routes]]
            headers = [{{ name = \"x-ca\", value = \"wrong\" }}]
            cluster = \"wrong\"
            [[routes]]
            cluster = \"good\"
            ",
            cluster("good", up.addr()),
            upstream_tls(&pki.ca.cert),
            cluster("wrong", up.addr()),
            upstream_tls(&pki.rogue_ca.cert),
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(answered_by(&mut client).await.expect("over upstream TLS"), "secure");
        assert_eq!(up.events().last_values(":scheme"), ["https"], "the upstream leg's scheme");
        let stream = client
            .server_stream(Request::new(Bytes::from("s")))
            .await
            .expect("streaming over upstream TLS")
            .into_inner();
        assert_eq!(collect(stream).await.expect("stream").len(), 3);
        // 4 MiB each way: many TLS records on the upstream leg.
        let big = Bytes::from(vec![9u8; 4 << 20]);
        assert_eq!(client.echo(big.clone()).await.expect("4 MiB over upstream TLS"), big);

        let mut request = Request::new(Bytes::from("m"));
        request.metadata_mut().insert("x-ca", MetadataValue::from_static("wrong"));
        let status = client.unary("Unary", request).await.expect_err("untrusted upstream");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("TLS"), "{}", status.message());
        assert_eq!(up.events().calls(), 3);
    }

    async fn health_checks_speak_tls_to_a_tls_upstream(driver) {
        // Scenario: a cluster reaches its upstream over TLS with a private
        // CA, another the same upstream with a CA that does not trust it.
        // Checks every 50 ms: the trusted cluster's endpoint follows the
        // upstream's serving status; the other's never passes.
        let pki = Pki::new();
        let up = Upstream::start_tls("secure", &pki.server);
        let checked = "health_check = { interval = \"50ms\", timeout = \"1s\", unhealthy_threshold = 1, healthy_threshold = 1 }\n";
        let proxy = proxy(driver, &format!(
            "{}{checked}[clusters.tls]\nca = {:?}\nserver_name = \"localhost\"\n\
             {}{checked}[clusters.tls]\nca = {:?}\nserver_name = \"localhost\"\n\
             [[routes]]\ncluster = \"good\"\n",
            cluster("good", up.addr()),
            pki.ca.cert,
            cluster("wrong", up.addr()),
            pki.rogue_ca.cert,
        ));
        let up_in = |name: &str| {
            let series = format!("grpc_proxy_upstream_endpoints_up{{cluster=\"{name}\"}}");
            sample(&proxy.metrics().render(), &series)
        };
        let settle = |name: &'static str, want: f64| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            async move {
                while up_in(name) != Some(want) {
                    assert!(std::time::Instant::now() < deadline, "{name}: endpoints up never became {want}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        };
        up.set_serving(false).await;
        settle("good", 0.0).await;
        settle("wrong", 0.0).await;
        up.set_serving(true).await;
        settle("good", 1.0).await;
        // The untrusted cluster's checks keep failing while the trusted
        // one's pass.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(up_in("wrong"), Some(0.0));
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(answered_by(&mut client).await.expect("call"), "secure");
    }

    async fn upstream_mtls_presents_the_configured_client_certificate(driver) {
        let pki = Pki::new();
        let up = Upstream::start_mtls("strict", &pki.server, &pki.ca.cert_pem);
        let proxy = proxy(driver, &format!(
            "{}[clusters.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n{}[clusters.tls]\nca = {:?}\n
            [[routes]]
            headers = [{{ name = \"x-cert\", value = \"none\" }}]
            cluster = \"anonymous\"
            [[routes]]
            cluster = \"with-cert\"
            ",
            cluster("with-cert", up.addr()),
            pki.ca.cert, pki.alice.cert, pki.alice.key,
            cluster("anonymous", up.addr()),
            pki.ca.cert,
        ));
        let mut client = Client::connect(proxy.local_addr()).await;
        assert_eq!(answered_by(&mut client).await.expect("upstream mTLS"), "strict");
        let mut request = Request::new(Bytes::from("m"));
        request.metadata_mut().insert("x-cert", MetadataValue::from_static("none"));
        let status = client.unary("Unary", request).await.expect_err("no client certificate");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(up.events().calls(), 1);
    }

    async fn a_reload_turns_the_listeners_tls_on_and_off_for_new_connections(driver) {
        // The README says so: new client connections take the listener's
        // TLS as the reloaded file has it; open ones stay as they are.
        let pki = Pki::new();
        let up = Upstream::start("a");
        let plain_text = format!(
            "listen = \"127.0.0.1:0\"\ncores = 1\n{}[[routes]]\ncluster = \"a\"\n",
            cluster("a", up.addr())
        );
        let tls_text = format!(
            "listen = \"127.0.0.1:0\"\ncores = 1\n{}{}[[routes]]\ncluster = \"a\"\n",
            listener_tls(&pki, "off"),
            cluster("a", up.addr())
        );
        let plain = Config::parse(&plain_text, "test").expect("config");
        let secured = Config::parse(&tls_text, "test").expect("config");
        let (builder, routes) = ProxyBuilder::from_config(&plain).expect("builder");
        let proxy = builder.driver(driver).start(routes).expect("starts");
        let addr = proxy.local_addr();
        let mut before = Client::connect(addr).await;
        assert_eq!(before.echo("plain").await.expect("cleartext"), "plain");

        proxy.reload(&secured).expect("reload to TLS");
        assert_eq!(call_as(addr, &pki, None).await.expect("a TLS client is served"), "a");
        assert_eq!(before.echo("still").await.expect("the open connection stays"), "still");

        proxy.reload(&plain).expect("reload to cleartext");
        let mut after = Client::connect(addr).await;
        assert_eq!(after.echo("plain again").await.expect("cleartext again"), "plain again");
    }

    async fn reload_serves_a_new_certificate_and_keeps_open_connections(driver) {
        let pki = Pki::new();
        let up = Upstream::start("a");
        let first = pki.ca.issue_server(pki.dir(), "first");
        let cert = pki.write("live.pem", &first.cert_pem);
        let key = pki.write("live.key", &first.key_pem);
        let text = format!(
            "listen = \"127.0.0.1:0\"\ncores = 1\n[tls]\ncert = {cert:?}\nkey = {key:?}\n{}[[routes]]\ncluster = \"a\"\n",
            cluster("a", up.addr())
        );
        let config = Config::parse(&text, "test").expect("config");
        let (builder, routes) = ProxyBuilder::from_config(&config).expect("builder");
        let proxy = builder.driver(driver).start(routes).expect("starts");
        let addr = proxy.local_addr();
        assert_eq!(served_certificate(addr, &pki).await, first.der);

        let mut open = Client::connect_tls(addr, &pki.ca.cert_pem, None).await.expect("connects");
        let (tx, mut replies) = open.open_bidi(1).await;
        tx.send(Bytes::from("before")).await.expect("send");
        assert_eq!(replies.next().await.expect("reply").expect("ok"), "before");

        let second = pki.ca.issue_server(pki.dir(), "second");
        std::fs::write(&cert, &second.cert_pem).expect("replace cert");
        std::fs::write(&key, &second.key_pem).expect("replace key");
        assert_eq!(proxy.reload(&config).expect("reload"), 2);
        assert_eq!(served_certificate(addr, &pki).await, second.der);

        // The stream opened before the reload goes on, and so does its
        // connection.
        tx.send(Bytes::from("after")).await.expect("send");
        assert_eq!(replies.next().await.expect("reply").expect("ok"), "after");
        drop(tx);
        assert!(replies.next().await.is_none());
        assert_eq!(open.echo("again").await.expect("same connection"), "again");

        // A broken key is refused and the running certificate stays.
        std::fs::write(&key, "not a key").expect("break key");
        let refused = proxy.reload(&config).expect_err("bad key refused");
        assert!(refused.to_string().contains("live.key"), "{refused}");
        assert_eq!(served_certificate(addr, &pki).await, second.der);
        assert_eq!(proxy.config_version(), 2);
    }
}

fn ring_sha256(der: &[u8]) -> String {
    grpc_proxy::PeerIdentity::from_der(der).sha256
}

#[test]
fn the_identity_of_a_client_certificate() {
    let pki = Pki::new();
    let id = grpc_proxy::PeerIdentity::from_der(&pki.alice.der);
    assert_eq!(id.common_name.as_deref(), Some("alice"));
    assert_eq!(id.dns_names, ["alice.test"]);
    assert_eq!(id.uris, ["spiffe://test/alice"]);
    assert_eq!(id.sha256.len(), 64);
    assert_ne!(
        id.sha256,
        grpc_proxy::PeerIdentity::from_der(&pki.mallory.der).sha256
    );
}

#[test]
fn bad_tls_files_fail_start_up_naming_the_file() {
    let pki = Pki::new();
    let garbage = pki.write("garbage.pem", "hello");
    let missing = pki.dir().join("missing.pem");
    let start = |tls: String| -> String {
        let text = format!("listen = \"127.0.0.1:0\"\ncores = 1\n{tls}");
        let config = Config::parse(&text, "test").expect("config parses");
        match ProxyBuilder::from_config(&config) {
            Ok(_) => "started".into(),
            Err(e) => e.to_string(),
        }
    };
    let server = &pki.server;
    let cases = [
        (format!("[tls]\ncert = {missing:?}\nkey = {:?}\n", server.key), "missing.pem"),
        (format!("[tls]\ncert = {garbage:?}\nkey = {:?}\n", server.key), "garbage.pem: no PEM certificate"),
        (format!("[tls]\ncert = {:?}\nkey = {garbage:?}\n", server.cert), "garbage.pem: no PEM private key"),
        (format!("[tls]\ncert = {:?}\nkey = {:?}\n", server.cert, pki.alice.key), "does not match"),
        (format!("[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {garbage:?}\n", server.cert, server.key), "garbage.pem"),
        (
            format!("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n[clusters.tls]\nca = {missing:?}\n"),
            "cluster \"a\": ",
        ),
    ];
    for (tls, want) in cases {
        let error = start(tls.clone());
        assert!(error.contains(want), "{tls}: {error:?} lacks {want:?}");
        assert!(!error.contains('\n'), "{error:?} spans lines");
    }
}
