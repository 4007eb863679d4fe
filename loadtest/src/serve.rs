//! `grpc-loadtest serve`: a thread-per-core gRPC echo upstream.
//!
//! Same shape as the proxy: one pinned monoio runtime per core, each with
//! its own SO_REUSEPORT listener (the engine's listener, runtime and control
//! helpers are reused). Service `loadtest.Echo`:
//! - `Unary`: one response per request;
//! - `ServerStream`: `x-messages` responses to one request;
//! - `ClientStream`: one response after the request stream ends;
//! - `Bidi`: one response per request message, as each arrives.
//!
//! A response echoes the request message (the same bytes, not copied) unless
//! `x-response-size` asks for a given size; `x-delay` waits before each
//! response; `x-fail-code` answers with that gRPC status instead. The flags
//! set the defaults for requests that do not say.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use grpc_proxy::runtime::cores::{self, CoreSelection};
use grpc_proxy::runtime::mailbox::Postbox;
use grpc_proxy::{Code, Driver, Status};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response};
use monoio::io::IntoPollIo;

use crate::grpc::{self, Deframer};
use crate::h2io::{recv_data, send_data};

/// How the echo server answers requests that do not say otherwise.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen (port 0 picks one).
    pub listen: SocketAddr,
    /// Worker cores.
    pub cores: CoreSelection,
    /// monoio driver.
    pub driver: Driver,
    /// Response payload size; `None` echoes the request.
    pub response_size: Option<usize>,
    /// Responses per server-streaming call.
    pub messages: usize,
    /// Delay before each response.
    pub delay: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            cores: CoreSelection::Count(1),
            driver: Driver::Auto,
            response_size: None,
            messages: 10,
            delay: None,
        }
    }
}

/// The one thing the echo server's workers are told: stop.
#[derive(Debug)]
struct Stop;

/// A running echo server; dropping it stops it.
pub struct ServerHandle {
    addr: SocketAddr,
    postboxes: Vec<Postbox<Stop>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the workers exit (they do when stopped).
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        for p in &self.postboxes {
            p.send(Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Starts the echo server; returns once every worker is accepting.
pub fn start(options: ServeOptions) -> anyhow::Result<ServerHandle> {
    let cpus = options
        .cores
        .plan(&cores::available())
        .map_err(anyhow::Error::msg)?;
    let (listeners, addr) = grpc_proxy::runtime::listener::bind_all(options.listen, cpus.len())
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", options.listen))?;
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<(), String>>();
    let mut handle = ServerHandle {
        addr,
        postboxes: Vec::new(),
        threads: Vec::new(),
    };
    for (i, (cpu, listener)) in cpus.into_iter().zip(listeners).enumerate() {
        let (postbox, mailbox) = grpc_proxy::runtime::mailbox::channel()?;
        let options = options.clone();
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("echo-w{i}"))
            .spawn(move || {
                core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                let driver = options.driver.resolve();
                let failed = ready.clone();
                let run = grpc_proxy::runtime::driver::block_on(driver, move || async move {
                    let listener = match monoio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let stop = Rc::new(grpc_proxy::runtime::wake::Latch::default());
                    let s = stop.clone();
                    // Polled here, not spawned: a spawned task still waiting
                    // on its socket would outlive the runtime.
                    let mailbox = mailbox.run(move |_| s.set());
                    let _ = ready.send(Ok(()));
                    let worker = Rc::new(Worker::new(options, stop.clone()));
                    monoio::select! {
                        _ = accept_loop(worker.clone(), listener) => {}
                        _ = stop.wait() => {}
                        _ = mailbox => {}
                    }
                    stop.set();
                    // Let connection tasks see `stop` and close their
                    // sockets before the runtime (which would leak the
                    // tasks still waiting on I/O) ends.
                    while worker.connections.get() > 0 {
                        monoio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
                if let Err(e) = run {
                    let _ = failed.send(Err(format!("cannot start the {driver} runtime: {e}")));
                }
            })?;
        handle.postboxes.push(postbox);
        handle.threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..handle.threads.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!("echo worker failed to start: {e}"),
            Err(_) => anyhow::bail!("echo worker exited during start-up"),
        }
    }
    Ok(handle)
}

struct Worker {
    options: ServeOptions,
    stop: Rc<grpc_proxy::runtime::wake::Latch>,
    connections: std::cell::Cell<usize>,
    h2: h2::server::Builder,
    /// Framed zero-filled responses by size, built once per core.
    responses: RefCell<HashMap<usize, Bytes>>,
}

impl Worker {
    fn new(options: ServeOptions, stop: Rc<grpc_proxy::runtime::wake::Latch>) -> Worker {
        let mut h2 = h2::server::Builder::new();
        h2.initial_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .max_concurrent_streams(100_000)
            .max_send_buffer_size(1 << 20);
        Worker {
            options,
            stop,
            connections: std::cell::Cell::new(0),
            h2,
            responses: RefCell::new(HashMap::new()),
        }
    }

    fn response_of(&self, size: usize) -> Bytes {
        self.responses
            .borrow_mut()
            .entry(size)
            .or_insert_with(|| grpc::frame_zeros(size))
            .clone()
    }
}

async fn accept_loop(worker: Rc<Worker>, listener: monoio::net::TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let worker = worker.clone();
        worker.connections.set(worker.connections.get() + 1);
        monoio::spawn(async move {
            let serve = async {
                let _ = tcp.set_nodelay(true);
                let Ok(io) = tcp.into_poll_io() else { return };
                let Ok(mut conn) = worker.h2.handshake::<_, Bytes>(io).await else {
                    return;
                };
                while let Some(Ok((request, respond))) = conn.accept().await {
                    monoio::spawn(handle(worker.clone(), request, respond));
                }
            };
            monoio::select! {
                _ = serve => {}
                _ = worker.stop.wait() => {}
            }
            worker.connections.set(worker.connections.get() - 1);
        });
    }
}

/// Per-request parameters: metadata, else the server's defaults.
struct Params {
    response_size: Option<usize>,
    messages: usize,
    delay: Option<Duration>,
    fail: Option<Code>,
}

impl Params {
    fn of(headers: &HeaderMap, defaults: &ServeOptions) -> Params {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Params {
            response_size: text(grpc::RESPONSE_SIZE)
                .and_then(|v| v.parse().ok())
                .or(defaults.response_size),
            messages: text(grpc::MESSAGES)
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.messages),
            delay: text(grpc::DELAY)
                .and_then(|v| humantime::parse_duration(v).ok())
                .or(defaults.delay),
            fail: text(grpc::FAIL_CODE).and_then(|v| v.parse().ok()),
        }
    }
}

fn ok_headers() -> Response<()> {
    let mut r = Response::new(());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::with_capacity(1);
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t
}

async fn handle(
    worker: Rc<Worker>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (parts, mut body) = request.into_parts();
    let params = Params::of(&parts.headers, &worker.options);
    if let Some(code) = params.fail {
        let status = Status::new(code, "failure requested by x-fail-code");
        let _ = respond.send_response(status.to_trailers_only(), true);
        return;
    }
    let path = parts.uri.path();
    let kind = match path {
        grpc::UNARY | grpc::SERVER_STREAM | grpc::CLIENT_STREAM | grpc::BIDI => path,
        _ => {
            let status = Status::new(Code::Unimplemented, format!("unknown method {path}"));
            let _ = respond.send_response(status.to_trailers_only(), true);
            return;
        }
    };
    let reply = |frame: &Bytes| match params.response_size {
        Some(size) => worker.response_of(size),
        None => frame.clone(),
    };
    let delay = || async {
        if let Some(d) = params.delay {
            monoio::time::sleep(d).await;
        }
    };
    let mut deframer = Deframer::default();
    let Ok(mut send) = respond.send_response(ok_headers(), false) else {
        return;
    };
    let result: Result<(), h2::Error> = async {
        let mut received = 0usize;
        let mut last = Bytes::new();
        while let Some(chunk) = recv_data(&mut body).await {
            deframer.push(chunk?);
            while let Some(frame) = deframer
                .next_frame()
                .map_err(|_| h2::Error::from(h2::Reason::PROTOCOL_ERROR))?
            {
                received += 1;
                if kind == grpc::BIDI {
                    delay().await;
                    send_data(&mut send, reply(&frame), false).await?;
                } else {
                    last = frame;
                }
                if kind == grpc::UNARY || kind == grpc::SERVER_STREAM {
                    break;
                }
            }
            if received > 0 && (kind == grpc::UNARY || kind == grpc::SERVER_STREAM) {
                break;
            }
        }
        match kind {
            grpc::UNARY | grpc::CLIENT_STREAM => {
                if received == 0 {
                    last = grpc::frame(b"");
                }
                delay().await;
                send_data(&mut send, reply(&last), false).await?;
            }
            grpc::SERVER_STREAM => {
                for _ in 0..params.messages {
                    delay().await;
                    send_data(&mut send, reply(&last), false).await?;
                }
            }
            _ => {}
        }
        send.send_trailers(ok_trailers())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "echo call failed");
    }
}
