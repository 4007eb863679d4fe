//! Faults, one per test, played with real peers: an upstream killed and
//! restarted under load, a client behind a link that goes silent, and
//! resets from either side at every stage of a call. Each test checks both
//! what the calls caught in the fault get (exact gRPC codes, what the
//! upstream saw) and that calls not involved (on the same client
//! connection, on another connection of the same core, to another cluster)
//! go on, each within `CALL_TIMEOUT`. Waits are on events and conditions,
//! bounded; no sleep stands in for one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use grpc_proxy::{Code as ProxyCode, ProxyHandle};
use grpc_proxy_tests::admin::{metric, must_sample};
use grpc_proxy_tests::echo::collect;
use grpc_proxy_tests::raw::{client as h2_client, frame, read_body, request};
use grpc_proxy_tests::relay::Relay;
use grpc_proxy_tests::silent::{Options, Seen, Silent};
use grpc_proxy_tests::{cluster, proxy, proxy_test, proxy_to, Client, Upstream};
use h2::Reason;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status, Streaming};

/// How long a call not involved in a fault may take: generous, so that a
/// busy machine never fails a test, short enough that a stall does.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a condition waited for may take to come true.
const WAIT: Duration = Duration::from_secs(15);

/// The name of the only route of [`proxy_to`], in metrics.
const ROUTE: &str = "routes[0]";

/// Waits until no call is open on the proxy: no downstream stream on its
/// core, no upstream stream in any of `clusters`.
async fn wait_no_streams(proxy: &ProxyHandle, clusters: &[&str]) {
    let mut series = vec!["grpc_proxy_downstream_streams_active{core=\"0\"}".to_owned()];
    series.extend(
        clusters
            .iter()
            .map(|c| format!("grpc_proxy_upstream_streams_active{{cluster=\"{c}\"}}")),
    );
    let until = Instant::now() + WAIT;
    loop {
        let text = proxy.metrics().render();
        let open: Vec<(&String, f64)> = series
            .iter()
            .map(|s| (s, must_sample(&text, s)))
            .filter(|(_, v)| *v != 0.0)
            .collect();
        if open.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "streams left open: {open:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------
// Bare h2 calls, for resets and partial requests at will.

type H2 = h2::client::SendRequest<Bytes>;

/// Opens a call to `/test.Echo/<method>` with extra headers: the response
/// to come and the request body to send.
async fn open(
    client: &H2,
    addr: SocketAddr,
    method: &str,
    headers: &[(&'static str, &str)],
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut ready = client.clone().ready().await.expect("ready");
    let mut head = request(addr, method);
    for (k, v) in headers {
        head.headers_mut()
            .insert(*k, v.parse().expect("header value"));
    }
    ready.send_request(head, false).expect("send")
}

/// A response's head, within `CALL_TIMEOUT`; it must be a response, not a
/// reset.
async fn head(response: h2::client::ResponseFuture) -> http::Response<h2::RecvStream> {
    let response = timeout(CALL_TIMEOUT, response)
        .await
        .expect("response headers within 5 s")
        .expect("a response, not a reset");
    assert_eq!(response.status(), 200);
    response
}

/// Reads exactly `want` from a response body (DATA may come split).
async fn expect_data(body: &mut h2::RecvStream, want: &[u8]) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        let chunk = timeout(CALL_TIMEOUT, body.data())
            .await
            .expect("response DATA within 5 s")
            .expect("more DATA")
            .expect("DATA, not a reset");
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, want);
}

/// One whole `Echo` call to the bare upstream on `client`, within
/// `CALL_TIMEOUT`.
async fn echo_call(client: &H2, addr: SocketAddr) {
    let (response, mut body) = open(client, addr, "Echo", &[]).await;
    body.send_data(frame(b"ping"), true).expect("data");
    let mut replies = head(response).await.into_body();
    let (echoed, trailers) = timeout(CALL_TIMEOUT, async {
        let echoed = read_body(&mut replies).await;
        (echoed, replies.trailers().await)
    })
    .await
    .expect("the call ended within 5 s");
    assert_eq!(echoed, frame(b"ping"));
    let trailers = trailers.expect("trailers").expect("some");
    assert_eq!(trailers["grpc-status"], "0");
}

/// An `Echo` call kept open across a fault on the same client connection
/// (and, the proxy sharing it, the same upstream connection): its first
/// message goes before the fault, the second and the end after. The bare
/// upstream answers only once the request has ended.
struct Bystander {
    response: h2::client::ResponseFuture,
    body: h2::SendStream<Bytes>,
}

impl Bystander {
    async fn start(client: &H2, addr: SocketAddr) -> Bystander {
        let (response, mut body) = open(client, addr, "Echo", &[]).await;
        body.send_data(frame(b"before"), false).expect("data");
        Bystander { response, body }
    }

    async fn finish(mut self) {
        self.body.send_data(frame(b"after"), true).expect("data");
        let mut replies = head(self.response).await.into_body();
        let (echoed, trailers) = timeout(CALL_TIMEOUT, async {
            let echoed = read_body(&mut replies).await;
            (echoed, replies.trailers().await)
        })
        .await
        .expect("the call on the same connection ended within 5 s");
        assert_eq!(echoed, [frame(b"before"), frame(b"after")].concat());
        let trailers = trailers.expect("trailers").expect("some");
        assert_eq!(trailers["grpc-status"], "0");
    }
}

/// The next call the bare upstream saw end, within `WAIT`.
async fn ended(silent: &mut Silent) -> Seen {
    timeout(WAIT, silent.next_ended())
        .await
        .expect("the upstream saw the call end")
}

/// After a fault on one call: the call kept open on the same connection
/// completes, a call on another connection succeeds, and no stream is
/// left open.
async fn others_unharmed(proxy: &ProxyHandle, bystander: Bystander) {
    let addr = proxy.local_addr();
    bystander.finish().await;
    echo_call(&h2_client(addr, 65_535).await, addr).await;
    wait_no_streams(proxy, &["a"]).await;
}

/// A client reset's stage: a proxy to a bare upstream, a client
/// connection, and a bystander call on it.
struct Scene {
    silent: Silent,
    proxy: ProxyHandle,
    addr: SocketAddr,
    client: H2,
    bystander: Bystander,
}

impl Scene {
    async fn new(driver: grpc_proxy::Driver) -> Scene {
        let silent = Silent::start().await;
        let proxy = proxy_to(driver, silent.addr());
        let addr = proxy.local_addr();
        let client = h2_client(addr, 65_535).await;
        let bystander = Bystander::start(&client, addr).await;
        Scene {
            silent,
            proxy,
            addr,
            client,
            bystander,
        }
    }

    /// After the client reset its call to `path`: the upstream saw that
    /// call cancelled, the bystander and a new connection are served,
    /// and the proxy counts one CANCELLED call. Hands the proxy back.
    async fn only_the_reset_call_was_cancelled(mut self, path: &str) -> ProxyHandle {
        let seen = ended(&mut self.silent).await;
        assert_eq!(
            (seen.path.as_str(), seen.reset),
            (path, Some(Reason::CANCEL))
        );
        others_unharmed(&self.proxy, self.bystander).await;
        assert_eq!(
            self.proxy
                .metrics()
                .route_finished(ROUTE, ProxyCode::Cancelled),
            1
        );
        self.proxy
    }
}

// ---------------------------------------------------------------------
// 1. An upstream killed and restarted under load.

/// Phases of the kill-and-restart test, as a load call sees them when it
/// starts and when it ends.
const UP: u8 = 0;
const KILLED: u8 = 1;
const RESTARTED: u8 = 2;
const RECOVERED: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Unary,
    ServerStream,
    Bidi,
}

const KINDS: [Kind; 3] = [Kind::Unary, Kind::ServerStream, Kind::Bidi];

/// One finished call of the background load.
#[derive(Debug)]
struct Done {
    cluster: &'static str,
    kind: Kind,
    started: u8,
    ended: u8,
    result: Result<(), Status>,
}

/// A request routed to `cluster` ("a" by default, "b" by `x-cluster`).
fn to<T>(cluster: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if cluster == "b" {
        request
            .metadata_mut()
            .insert("x-cluster", MetadataValue::from_static("b"));
    }
    request
}

/// What the test itself finds wrong with a call (a code the proxy never
/// makes, so that it fails every assertion).
fn wrong(what: String) -> Status {
    Status::new(Code::DataLoss, format!("test: {what}"))
}

/// One call of `kind` to `cluster`, checked end to end (the upstream that
/// answered, every message back, a clean end), within `CALL_TIMEOUT`.
async fn load_call(client: &mut Client, cluster: &'static str, kind: Kind) -> Result<(), Status> {
    let call = async {
        match kind {
            Kind::Unary => {
                let response = client
                    .unary("Unary", to(cluster, Bytes::from_static(b"u")))
                    .await?;
                let by = response
                    .metadata()
                    .get("x-upstream")
                    .and_then(|v| v.to_str().ok());
                if by != Some(cluster) {
                    return Err(wrong(format!("answered by {by:?}")));
                }
            }
            Kind::ServerStream => {
                let mut request = to(cluster, Bytes::from_static(b"s"));
                request
                    .metadata_mut()
                    .insert("x-count", MetadataValue::from_static("10"));
                let messages = collect(client.server_stream(request).await?.into_inner()).await?;
                if messages.len() != 10 || messages.iter().any(|m| m != "s") {
                    return Err(wrong(format!("server stream got {messages:?}")));
                }
            }
            Kind::Bidi => {
                let (tx, rx) = mpsc::channel::<Bytes>(1);
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                let mut replies = client.bidi(to(cluster, stream)).await?.into_inner();
                for i in 0..5u8 {
                    let m = Bytes::from(vec![b'0' + i]);
                    if tx.send(m.clone()).await.is_err() {
                        break; // the call ended: its status follows
                    }
                    match replies.next().await {
                        Some(Ok(got)) if got == m => {}
                        Some(Ok(got)) => return Err(wrong(format!("bidi got {got:?}"))),
                        Some(Err(status)) => return Err(status),
                        None => return Err(wrong("bidi ended without a status".into())),
                    }
                }
                drop(tx);
                match replies.next().await {
                    None => {}
                    Some(Err(status)) => return Err(status),
                    Some(Ok(got)) => return Err(wrong(format!("bidi got {got:?} after the end"))),
                }
            }
        }
        Ok(())
    };
    timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(wrong("no end within 5 s".into())))
}

/// Calls of the load to `cluster` of `kind` that started and ended in
/// `phase` and succeeded.
fn ok_in(log: &[Done], cluster: &str, kind: Kind, phase: u8) -> usize {
    log.iter()
        .filter(|d| d.cluster == cluster && d.kind == kind)
        .filter(|d| d.started == phase && d.ended == phase && d.result.is_ok())
        .count()
}

/// Calls of the load to `cluster` of `kind` that started and ended in
/// `phase` and failed.
fn failed_in(log: &[Done], cluster: &str, kind: Kind, phase: u8) -> usize {
    log.iter()
        .filter(|d| d.cluster == cluster && d.kind == kind)
        .filter(|d| d.started == phase && d.ended == phase && d.result.is_err())
        .count()
}

/// Waits until the load's log satisfies `done`.
async fn wait_log(log: &Mutex<Vec<Done>>, what: &str, done: impl Fn(&[Done]) -> bool) {
    let until = Instant::now() + WAIT;
    loop {
        if done(&log.lock().expect("log")) {
            return;
        }
        assert!(Instant::now() < until, "never: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// What a call to a dead upstream gets: UNAVAILABLE, because its
/// connection was lost in flight, or because no connection could be made
/// ("connect failed", or the reconnect back-off that follows).
fn lost_or_unreachable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && (status.message() == "upstream connection lost"
            || status.message().starts_with("upstream unavailable: "))
}

/// One message each way on an open bidi stream, within `CALL_TIMEOUT`.
async fn ping(tx: &mpsc::Sender<Bytes>, replies: &mut Streaming<Bytes>, m: &'static str) {
    tx.send(Bytes::from(m)).await.expect("send");
    let reply = timeout(CALL_TIMEOUT, replies.next())
        .await
        .expect("a reply within 5 s")
        .expect("a reply")
        .expect("ok");
    assert_eq!(reply, m);
}

proxy_test! {
    async fn an_upstream_killed_and_restarted_under_load_fails_only_its_own_calls(driver) {
        // Scenario: clusters a and b, one echo upstream each; unary,
        // server-streaming and bidi calls to both, in a loop, on two
        // client connections. Upstream a is killed (its process gone: every
        // connection cut, the port closed), then started again on the same
        // port.
        //
        // What a's calls get is UNAVAILABLE and nothing else: a call in
        // flight loses its upstream connection ("upstream connection
        // lost", as trailers-only or as trailers after its headers); a call
        // that starts while a is down finds the port closed ("connect
        // failed") or the endpoint in its reconnect back-off ("waiting to
        // reconnect"). A dying tonic server sends no RST_STREAM or GOAWAY
        // (its runtime is dropped, not shut down gracefully), so no call
        // is CANCELLED; the proxy's own message for anything else (an h2
        // protocol error) would be INTERNAL, and it never shows here.
        let mut a = Upstream::start("a");
        let b = Upstream::start("b");
        let proxy = proxy(driver, &format!(
            "{}{}[[routes]]\nheaders = [{{ name = \"x-cluster\", value = \"b\" }}]\ncluster = \"b\"\n\
             [[routes]]\ncluster = \"a\"\n",
            cluster("a", a.addr()),
            cluster("b", b.addr())
        ));
        let addr = proxy.local_addr();
        let clients = [Client::connect(addr).await, Client::connect(addr).await];
        let phase = Arc::new(AtomicU8::new(UP));
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Done>>> = Arc::default();
        let mut workers = Vec::new();
        for client in &clients {
            for cluster in ["a", "b"] {
                for kind in KINDS {
                    let (mut client, phase, stop, log) = (client.clone(), phase.clone(), stop.clone(), log.clone());
                    workers.push(tokio::spawn(async move {
                        while !stop.load(Ordering::SeqCst) {
                            let started = phase.load(Ordering::SeqCst);
                            let result = load_call(&mut client, cluster, kind).await;
                            let failed = result.is_err();
                            let ended = phase.load(Ordering::SeqCst);
                            log.lock().expect("log").push(Done { cluster, kind, started, ended, result });
                            if failed {
                                // Failures are fast; no busy loop on them.
                                sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }));
                }
            }
        }
        wait_log(&log, "calls to both clusters succeed", |l| {
            KINDS.iter().all(|&k| ok_in(l, "a", k, UP) >= 3 && ok_in(l, "b", k, UP) >= 3)
        }).await;

        // In flight when a dies: a unary call a holds unanswered, and a
        // bidi stream to each cluster.
        let mut holder = clients[0].clone();
        let held = tokio::spawn(async move { holder.unary("Hang", Request::new(Bytes::from_static(b"h"))).await });
        a.events().wait_hanging(1).await;
        let (tx_a, mut replies_a) = clients[0].clone().open_bidi(1).await;
        ping(&tx_a, &mut replies_a, "before").await;
        let (tx_b, rx_b) = mpsc::channel::<Bytes>(1);
        let mut replies_b = clients[1]
            .clone()
            .bidi(to("b", tokio_stream::wrappers::ReceiverStream::new(rx_b)))
            .await
            .expect("a bidi stream to b")
            .into_inner();
        ping(&tx_b, &mut replies_b, "before").await;

        a.stop();
        phase.store(KILLED, Ordering::SeqCst);
        let status = timeout(CALL_TIMEOUT, held)
            .await
            .expect("the held call ends within 5 s")
            .expect("task")
            .expect_err("its upstream is gone");
        assert!(lost_or_unreachable(&status), "{status:?}");
        let _ = tx_a.send(Bytes::from_static(b"during")).await; // may find the call ended
        let status = timeout(CALL_TIMEOUT, replies_a.next())
            .await
            .expect("the stream to a ends within 5 s")
            .expect("a status")
            .expect_err("its upstream is gone");
        assert!(lost_or_unreachable(&status), "{status:?}");
        ping(&tx_b, &mut replies_b, "during").await;
        wait_log(&log, "calls to a fail while calls to b succeed", |l| {
            KINDS.iter().all(|&k| failed_in(l, "a", k, KILLED) >= 3 && ok_in(l, "b", k, KILLED) >= 3)
        }).await;

        a.restart();
        phase.store(RESTARTED, Ordering::SeqCst);
        // Within the reconnect back-off (20-100 ms in tests), a's calls
        // succeed again.
        let mut probe = clients[0].clone();
        let until = Instant::now() + WAIT;
        loop {
            match load_call(&mut probe, "a", Kind::Unary).await {
                Ok(()) => break,
                Err(status) => assert!(lost_or_unreachable(&status), "{status:?}"),
            }
            assert!(Instant::now() < until, "calls to a did not recover after it restarted");
            sleep(Duration::from_millis(10)).await;
        }
        phase.store(RECOVERED, Ordering::SeqCst);
        wait_log(&log, "calls to a succeed again", |l| {
            KINDS.iter().all(|&k| ok_in(l, "a", k, RECOVERED) >= 3 && ok_in(l, "b", k, RECOVERED) >= 3)
        }).await;
        stop.store(true, Ordering::SeqCst);
        for worker in workers {
            timeout(CALL_TIMEOUT * 2, worker).await.expect("the load stops").expect("worker");
        }
        ping(&tx_b, &mut replies_b, "after").await;
        drop(tx_b);
        let end = timeout(CALL_TIMEOUT, replies_b.next()).await.expect("the stream to b ends");
        assert!(end.is_none(), "the stream to b ends with OK: {end:?}");
        drop((tx_a, replies_a));

        let log = std::mem::take(&mut *log.lock().expect("log"));
        let b_failed: Vec<&Done> = log.iter().filter(|d| d.cluster == "b" && d.result.is_err()).collect();
        assert!(b_failed.is_empty(), "calls to b failed: {b_failed:#?}");
        let a_wrong: Vec<&Done> = log
            .iter()
            .filter(|d| d.cluster == "a")
            .filter(|d| d.result.as_ref().is_err_and(|s| !lost_or_unreachable(s)))
            .collect();
        assert!(a_wrong.is_empty(), "calls to a failed otherwise than UNAVAILABLE: {a_wrong:#?}");
        let a_down_ok = log
            .iter()
            .filter(|d| d.cluster == "a" && d.started == KILLED && d.ended == KILLED && d.result.is_ok())
            .count();
        assert_eq!(a_down_ok, 0, "calls to a succeeded while it was down");
        let a_recovered_failed: Vec<&Done> = log
            .iter()
            .filter(|d| d.cluster == "a" && d.started == RECOVERED && d.result.is_err())
            .collect();
        assert!(a_recovered_failed.is_empty(), "calls to a failed after it recovered: {a_recovered_failed:#?}");
        wait_no_streams(&proxy, &["a", "b"]).await;
    }
}

// ---------------------------------------------------------------------
// 2. A client behind a link that goes silent (half-open TCP).

proxy_test! {
    async fn a_frozen_client_holds_its_upstream_calls_until_their_deadline_and_others_go_on(driver) {
        // Scenario: a client reaches the proxy through a relay that stops
        // forwarding both ways while keeping both sockets open (the client
        // host hung behind a live kernel, a stuck middlebox). It has two
        // calls in flight, each with a 2 s grpc-timeout: a unary call its
        // upstream never answers, and a stream its upstream answers and
        // echoes on. The proxy cannot hear the client any more; what frees
        // the upstream streams is the deadline: the upstream sees each
        // reset (CANCEL), and the proxy counts both DEADLINE_EXCEEDED.
        //
        // The deadline comes first here (PINGs are every 5 minutes by
        // default): the client's connection has open streams, so
        // [timeouts] idle does not apply (and its GOAWAY lets streams run
        // on); TCP keepalive probes are answered by the relay's kernel;
        // tcp_user_timeout counts only bytes sent and not acknowledged,
        // and the relay's kernel acknowledges them. Section 5 frees the
        // same calls without a deadline, by keepalive PINGs.
        let mut silent = Silent::start().await;
        let proxy = proxy_to(driver, silent.addr());
        let addr = proxy.local_addr();
        let relay = Relay::start(addr).await;
        let frozen = h2_client(relay.addr(), 65_535).await;
        let deadline = [("grpc-timeout", "2S")];
        let (_held, mut held_body) = open(&frozen, addr, "Hang", &deadline).await;
        held_body.send_data(frame(b"x"), true).expect("data");
        let (streaming, mut streaming_body) = open(&frozen, addr, "Drip", &deadline).await;
        streaming_body.send_data(frame(b"one"), false).expect("data");
        let mut replies = head(streaming).await.into_body();
        expect_data(&mut replies, &frame(b"one")).await;
        silent.wait_requests(2).await;
        relay.freeze();

        // Other clients on the same core, with and without their own
        // deadline handling, go on while the frozen one holds its calls.
        let mut tonic_client = Client::connect(addr).await;
        let bare = h2_client(addr, 65_535).await;
        for i in 0..10 {
            let reply = timeout(CALL_TIMEOUT, tonic_client.unary("Echo", Request::new(Bytes::from_static(b"m"))))
                .await
                .unwrap_or_else(|_| panic!("call {i} of another client took more than 5 s"));
            assert_eq!(reply.expect("another client's call").into_inner(), "m");
            echo_call(&bare, addr).await;
        }

        let mut seen: Vec<Seen> = vec![ended(&mut silent).await, ended(&mut silent).await];
        seen.sort_by(|x, y| x.path.cmp(&y.path));
        for (s, path) in seen.iter().zip(["/test.Echo/Drip", "/test.Echo/Hang"]) {
            assert_eq!(s.path, path);
            assert_eq!(s.grpc_timeout.as_deref(), Some("2S"), "the deadline was forwarded");
            assert_eq!(s.reset, Some(Reason::CANCEL), "the proxy reset {path} upstream");
        }
        assert_eq!(
            proxy.metrics().route_finished(ROUTE, ProxyCode::DeadlineExceeded),
            2,
            "both calls ended at their deadline"
        );
        wait_no_streams(&proxy, &["a"]).await;
        drop(relay);
    }
}

// ---------------------------------------------------------------------
// 3. The client resets its call, at every stage.

proxy_test! {
    async fn a_client_reset_after_the_request_before_response_headers_cancels_upstream(driver) {
        // The request has ended; the upstream holds the call unanswered.
        let scene = Scene::new(driver).await;
        let (addr, client) = (scene.addr, &scene.client);
        let (response, mut body) = open(client, addr, "Hang", &[]).await;
        body.send_data(frame(b"x"), true).expect("data");
        scene.silent.wait_requests(2).await; // both upstream streams are open
        body.send_reset(Reason::CANCEL);
        assert!(response.await.is_err(), "the reset call has no response");
        let proxy = scene.only_the_reset_call_was_cancelled("/test.Echo/Hang").await;
        assert_eq!(proxy.metrics().route_finished(ROUTE, ProxyCode::Ok), 2);
    }

    async fn a_client_reset_mid_request_before_response_headers_cancels_upstream(driver) {
        // Half the request body is sent and has reached the upstream, which
        // has not answered; the client resets.
        let scene = Scene::new(driver).await;
        let (addr, client) = (scene.addr, &scene.client);
        let (response, mut body) = open(client, addr, "Drip", &[("x-drip-headers", "no")]).await;
        body.send_data(frame(b"first half"), false).expect("data");
        scene.silent.wait_drip_received(frame(b"first half").len()).await;
        body.send_reset(Reason::CANCEL);
        assert!(response.await.is_err(), "the reset call has no response");
        scene.only_the_reset_call_was_cancelled("/test.Echo/Drip").await;
    }

    async fn a_client_reset_mid_server_stream_cancels_upstream(driver) {
        // The request has ended; response headers and a message have come
        // through, the response goes on; the client resets.
        let scene = Scene::new(driver).await;
        let (addr, client) = (scene.addr, &scene.client);
        let (response, mut body) = open(client, addr, "Drip", &[]).await;
        body.send_data(frame(b"m"), true).expect("data");
        let mut replies = head(response).await.into_body();
        expect_data(&mut replies, &frame(b"m")).await;
        body.send_reset(Reason::CANCEL);
        scene.only_the_reset_call_was_cancelled("/test.Echo/Drip").await;
    }

    async fn a_client_reset_mid_bidi_stream_cancels_upstream(driver) {
        // Both halves open, a message each way; the client resets.
        let scene = Scene::new(driver).await;
        let (addr, client) = (scene.addr, &scene.client);
        let (response, mut body) = open(client, addr, "Drip", &[]).await;
        body.send_data(frame(b"m"), false).expect("data");
        let mut replies = head(response).await.into_body();
        expect_data(&mut replies, &frame(b"m")).await;
        body.send_reset(Reason::CANCEL);
        scene.only_the_reset_call_was_cancelled("/test.Echo/Drip").await;
    }

    async fn a_client_reset_after_the_response_ended_changes_nothing(driver) {
        // The upstream answers (trailers-only OK) without waiting for the
        // end of the request; the client, its request still open, resets.
        // The call is over: it counts as OK, and the other calls, on the
        // same upstream connection, do not notice.
        let silent = Silent::start().await;
        let proxy = proxy_to(driver, silent.addr());
        let addr = proxy.local_addr();
        let client = h2_client(addr, 65_535).await;
        let bystander = Bystander::start(&client, addr).await;
        let (response, mut body) = open(&client, addr, "Unary", &[]).await;
        // The answer may come on the headers alone, before this goes.
        let _ = body.send_data(frame(b"x"), false);
        let response = head(response).await;
        assert_eq!(response.headers()["grpc-status"], "0");
        assert!(response.body().is_end_stream(), "trailers-only");
        body.send_reset(Reason::CANCEL);
        others_unharmed(&proxy, bystander).await;
        assert_eq!(proxy.metrics().route_finished(ROUTE, ProxyCode::Ok), 3);
        assert_eq!(proxy.metrics().route_finished(ROUTE, ProxyCode::Cancelled), 0);
        assert_eq!(silent.requests(), 3);
        assert_eq!(silent.connections(), 1);
    }
}

// ---------------------------------------------------------------------
// 4. The upstream resets the call, before and after response headers.

/// The resets an upstream may send, each with the status the gRPC spec
/// maps it to (PROTOCOL-HTTP2.md, "Errors"). REFUSED_STREAM is left out
/// before headers: the proxy retries it (tested in operations.rs).
const UPSTREAM_RESETS: [(Reason, Code); 4] = [
    (Reason::INTERNAL_ERROR, Code::Internal),
    (Reason::CANCEL, Code::Cancelled),
    (Reason::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
    (Reason::NO_ERROR, Code::Internal),
];

proxy_test! {
    async fn an_upstream_reset_before_response_headers_is_its_grpc_status(driver) {
        // Each reset comes on the one upstream connection the proxy shares
        // with a call kept open across them; the client gets a
        // trailers-only response with the mapped code, the call is not
        // retried (the upstream may have processed it), and the upstream
        // connection and the other calls go on.
        let silent = Silent::start().await;
        let proxy = proxy_to(driver, silent.addr());
        let addr = proxy.local_addr();
        let client = h2_client(addr, 65_535).await;
        let bystander = Bystander::start(&client, addr).await;
        for (reason, code) in UPSTREAM_RESETS {
            let reason_code = u32::from(reason).to_string();
            let (response, mut body) = open(&client, addr, "Reset", &[("x-reset", &reason_code)]).await;
            // The upstream resets on the headers alone: the proxy's answer
            // (with RST_STREAM NO_ERROR, the request being unfinished) may
            // close the stream before this goes, and h2 then refuses it.
            let _ = body.send_data(frame(b"x"), true);
            let response = head(response).await;
            let headers = response.headers();
            assert_eq!(headers["grpc-status"], (code as i32).to_string(), "{reason:?}: {headers:?}");
            assert_eq!(headers["grpc-message"], "upstream reset the stream", "{reason:?}");
            assert!(response.body().is_end_stream(), "{reason:?}: trailers-only");
        }
        others_unharmed(&proxy, bystander).await;
        let resets = UPSTREAM_RESETS.len();
        assert_eq!(silent.requests(), resets + 2, "no reset call was retried");
        assert_eq!(silent.connections(), 1, "the upstream connection outlived the resets");
        assert_eq!(metric(&proxy, "grpc_proxy_upstream_resets_total{cluster=\"a\"}"), resets as f64);
    }

    async fn an_upstream_reset_mid_stream_ends_the_call_with_its_grpc_status(driver) {
        // Response headers and a message have reached the client; then the
        // upstream resets. The client gets trailers with the mapped code
        // (not a reset of its own stream), REFUSED_STREAM included: once
        // headers came, the call cannot be retried.
        let silent = Silent::start().await;
        let proxy = proxy_to(driver, silent.addr());
        let addr = proxy.local_addr();
        let client = h2_client(addr, 65_535).await;
        let bystander = Bystander::start(&client, addr).await;
        let resets: Vec<(Reason, Code)> = UPSTREAM_RESETS
            .into_iter()
            .chain([(Reason::REFUSED_STREAM, Code::Unavailable)])
            .collect();
        for &(reason, code) in &resets {
            let reason_code = u32::from(reason).to_string();
            let (response, mut body) = open(
                &client,
                addr,
                "Reset",
                &[("x-reset", &reason_code), ("x-reset-mid-stream", "1")],
            )
            .await;
            body.send_data(frame(b"first"), false).expect("data");
            let response = head(response).await;
            assert!(response.headers().get("grpc-status").is_none(), "{reason:?}: headers, not trailers-only");
            let mut replies = response.into_body();
            expect_data(&mut replies, &frame(b"first")).await;
            body.send_data(frame(b"cue"), false).expect("data"); // the upstream resets now
            let (rest, trailers) = timeout(CALL_TIMEOUT, async {
                let rest = read_body(&mut replies).await;
                (rest, replies.trailers().await)
            })
            .await
            .expect("the call ended within 5 s");
            assert!(rest.is_empty(), "{reason:?}: {rest:?}");
            let trailers = trailers.expect("trailers, not a reset").expect("some");
            assert_eq!(trailers["grpc-status"], (code as i32).to_string(), "{reason:?}: {trailers:?}");
            assert_eq!(trailers["grpc-message"], "upstream reset the stream", "{reason:?}");
        }
        others_unharmed(&proxy, bystander).await;
        assert_eq!(silent.requests(), resets.len() + 2, "no reset call was retried");
        assert_eq!(silent.connections(), 1, "the upstream connection outlived the resets");
        assert_eq!(metric(&proxy, "grpc_proxy_upstream_resets_total{cluster=\"a\"}"), resets.len() as f64);
    }
}

// ---------------------------------------------------------------------
// 5. Bugs and gaps this suite found, fixed: a reset while the request
// waits for upstream window, and a frozen client without a deadline.

proxy_test! {
    async fn a_client_reset_while_its_request_waits_for_upstream_window_cancels_upstream(driver) {
        // The upstream reads the request but never gives its window back;
        // the client sends 256 KiB, more than its 64 KiB stream window, so
        // the proxy holds the rest; then the client resets.
        // The upstream must see the stream reset (CANCEL) at once. (It
        // never did: the splice, waiting for window with a chunk in hand,
        // heard no reset.)
        let mut silent = Silent::with(Options { connection_window: Some(16 << 20), ..Options::default() }).await;
        let proxy = proxy_to(driver, silent.addr());
        let addr = proxy.local_addr();
        let client = h2_client(addr, 65_535).await;
        let bystander = Bystander::start(&client, addr).await;
        let (_response, mut body) =
            open(&client, addr, "Drip", &[("x-drip-headers", "no"), ("x-drip-hold", "yes")]).await;
        body.reserve_capacity(256 << 10);
        body.send_data(Bytes::from(vec![7u8; 256 << 10]), false).expect("data");
        silent.wait_drip_received(65_535).await; // the upstream's stream window is full
        body.send_reset(Reason::CANCEL);
        let seen = ended(&mut silent).await;
        assert_eq!((seen.path.as_str(), seen.reset), ("/test.Echo/Drip", Some(Reason::CANCEL)));
        others_unharmed(&proxy, bystander).await;
    }

    async fn a_client_that_disconnects_while_its_request_waits_for_upstream_window_cancels_upstream(driver) {
        // The same, the client's connection dropped (TCP closed) instead.
        // The upstream must see the stream reset (CANCEL). (It never did:
        // grpc_proxy_downstream_connections went to 0 while
        // grpc_proxy_downstream_streams_active and
        // grpc_proxy_upstream_streams_active stayed at 1.)
        let mut silent = Silent::with(Options { connection_window: Some(16 << 20), ..Options::default() }).await;
        let proxy = proxy_to(driver, silent.addr());
        let addr = proxy.local_addr();
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
        let connection = tokio::spawn(connection);
        let (_response, mut body) =
            open(&client, addr, "Drip", &[("x-drip-headers", "no"), ("x-drip-hold", "yes")]).await;
        body.reserve_capacity(256 << 10);
        body.send_data(Bytes::from(vec![7u8; 256 << 10]), false).expect("data");
        silent.wait_drip_received(65_535).await;
        connection.abort(); // drops the socket: no RST_STREAM, a FIN
        let seen = ended(&mut silent).await;
        assert_eq!((seen.path.as_str(), seen.reset), ("/test.Echo/Drip", Some(Reason::CANCEL)));
        wait_no_streams(&proxy, &["a"]).await;
    }

    async fn a_frozen_client_without_a_deadline_has_its_upstream_calls_freed_by_pings(driver) {
        // As the frozen-client test above, without grpc-timeout: the
        // client's kernel (the relay's) still acknowledges, so TCP
        // keepalive and TCP_USER_TIMEOUT see nothing, and the connection
        // has streams, so it is not idle. It answers no HTTP/2 PING, and
        // that frees its calls. (Without PINGs they were held for good.)
        let mut silent = Silent::start().await;
        let proxy = proxy(driver, &format!(
            "[timeouts]\nping_interval = \"200ms\"\nping_timeout = \"500ms\"\n{}\n[[routes]]\ncluster = \"a\"\n",
            cluster("a", silent.addr())
        ));
        let addr = proxy.local_addr();
        let relay = Relay::start(addr).await;
        let frozen = h2_client(relay.addr(), 65_535).await;
        let (_held, mut held_body) = open(&frozen, addr, "Hang", &[]).await;
        held_body.send_data(frame(b"x"), true).expect("data");
        let (streaming, mut streaming_body) = open(&frozen, addr, "Drip", &[]).await;
        streaming_body.send_data(frame(b"one"), false).expect("data");
        let mut replies = head(streaming).await.into_body();
        expect_data(&mut replies, &frame(b"one")).await;
        silent.wait_requests(2).await;
        relay.freeze();
        for _ in 0..2 {
            let seen = timeout(Duration::from_secs(30), silent.next_ended())
                .await
                .expect("a frozen client's call is freed without a deadline");
            assert_eq!(seen.reset, Some(Reason::CANCEL));
        }
        wait_no_streams(&proxy, &["a"]).await;
    }
}
