//! `grpc-loadtest run`: the load generator.
//!
//! Shape: one pinned monoio runtime per load core, each with its own share
//! of the connections; each connection carries `streams` concurrent call
//! loops. Closed loop: a loop starts its next call when the last one ends.
//! Open loop (`rate`): each core schedules calls at fixed intended times and
//! a loop takes the next scheduled call when free, so latency is measured
//! from the *intended* start: a stalled server shows up in the tail instead
//! of slowing the schedule (no coordinated omission).
//!
//! What is measured per RPC kind: the whole call for all; for bidi, every
//! request/response round trip (ping-pong); for server streaming, the time
//! to the first message and the gaps between messages. Failures are counted
//! by gRPC status, never fatal: only a target that cannot be reached (or is
//! not HTTP/2) at the start ends the run with an error.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grpc_proxy::runtime::cores::{self, CoreSelection};
use grpc_proxy::runtime::wake::{Latch, Notify};
use grpc_proxy::{Code, Driver};
use h2::client::SendRequest;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use monoio::io::IntoPollIo;

use crate::grpc::{self, Deframer};
use crate::h2io::{recv_data, send_data};
use crate::report::{Report, Setup, Stats};

/// The four RPC kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// One request, one response.
    Unary,
    /// One request, `messages` responses.
    ServerStream,
    /// `messages` requests, one response.
    ClientStream,
    /// `messages` request/response round trips on one stream.
    Bidi,
}

impl Rpc {
    fn path(self) -> &'static str {
        match self {
            Rpc::Unary => grpc::UNARY,
            Rpc::ServerStream => grpc::SERVER_STREAM,
            Rpc::ClientStream => grpc::CLIENT_STREAM,
            Rpc::Bidi => grpc::BIDI,
        }
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Unary => "unary",
            Rpc::ServerStream => "server-stream",
            Rpc::ClientStream => "client-stream",
            Rpc::Bidi => "bidi",
        }
    }
}

impl FromStr for Rpc {
    type Err = String;
    fn from_str(s: &str) -> Result<Rpc, String> {
        match s {
            "unary" => Ok(Rpc::Unary),
            "server-stream" | "server_stream" => Ok(Rpc::ServerStream),
            "client-stream" | "client_stream" => Ok(Rpc::ClientStream),
            "bidi" => Ok(Rpc::Bidi),
            _ => Err(format!(
                "unknown rpc {s:?} (expected unary, server-stream, client-stream or bidi)"
            )),
        }
    }
}

/// Everything a run is told.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The gRPC server (or proxy) to load.
    pub target: SocketAddr,
    /// `:authority` to send (default: the target address).
    pub authority: Option<String>,
    /// RPC kind.
    pub rpc: Rpc,
    /// Request payload bytes.
    pub payload: usize,
    /// Asks the echo server for responses of this size (`x-response-size`).
    pub response_size: Option<usize>,
    /// Messages per streaming call (requests for client streaming, responses
    /// for server streaming, round trips for bidi).
    pub messages: usize,
    /// Connections in total.
    pub connections: usize,
    /// Concurrent streams per connection.
    pub streams: usize,
    /// Load-generator cores.
    pub cores: CoreSelection,
    /// monoio driver.
    pub driver: Driver,
    /// Measured time (after warm-up), when no call count is given.
    pub duration: Duration,
    /// Stop after this many calls (after warm-up) instead.
    pub calls: Option<u64>,
    /// Time to run before measuring.
    pub warmup: Duration,
    /// Open loop at this many calls per second in total.
    pub rate: Option<f64>,
    /// Asks the echo server to wait this long before each response.
    pub delay: Option<Duration>,
    /// Extra request metadata.
    pub metadata: Vec<(HeaderName, HeaderValue)>,
    /// Request metadata whose value changes from call to call: each call
    /// takes the next value, round robin over every load thread (many
    /// users' tokens, say).
    pub rotating: Option<Arc<Rotating>>,
    /// Print a progress line every second (to stderr).
    pub progress: bool,
    /// Speak TLS (ALPN h2) to the target with this client config.
    pub tls: Option<grpc_proxy::ClientTls>,
    /// Open a new connection for every call and close it after: measures
    /// connection set-up (TCP, TLS handshake, HTTP/2 preface) per call.
    /// Needs one stream per connection.
    pub connection_per_call: bool,
    /// Write HdrHistogram's interval log of the measured window here.
    pub hdr_log: Option<std::path::PathBuf>,
    /// Start the load (after connecting) at this wall-clock time, so that
    /// several machines start together.
    pub start_at: Option<std::time::SystemTime>,
    /// Draw the run (latency by percentile, rate and p99 over time) as an
    /// SVG here.
    pub plot: Option<std::path::PathBuf>,
    /// Call this method (`/package.Service/Method`) of any service instead
    /// of the echo service's, with `data` as every request message; `rpc`
    /// says its kind. The echo service's request metadata is not sent.
    pub method: Option<String>,
    /// The request message, protobuf-encoded (with `method`); default: an
    /// empty message.
    pub data: Option<Bytes>,
}

/// A metadata key whose value changes from call to call.
#[derive(Debug)]
pub struct Rotating {
    name: HeaderName,
    values: Vec<HeaderValue>,
    next: std::sync::atomic::AtomicUsize,
}

impl Rotating {
    /// `name` takes each of `values` in turn; `None` if there are none.
    pub fn new(name: HeaderName, values: Vec<HeaderValue>) -> Option<Rotating> {
        (!values.is_empty()).then(|| Rotating {
            name,
            values,
            next: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The next value.
    pub fn take(&self) -> &HeaderValue {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.values[i % self.values.len()]
    }
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            target: SocketAddr::from(([127, 0, 0, 1], 50051)),
            authority: None,
            rpc: Rpc::Unary,
            payload: 10,
            response_size: None,
            messages: 10,
            connections: 1,
            streams: 1,
            cores: CoreSelection::Count(1),
            driver: Driver::Auto,
            duration: Duration::from_secs(10),
            calls: None,
            warmup: Duration::from_secs(1),
            rate: None,
            delay: None,
            metadata: Vec::new(),
            rotating: None,
            progress: false,
            tls: None,
            connection_per_call: false,
            hdr_log: None,
            start_at: None,
            plot: None,
            method: None,
            data: None,
        }
    }
}

/// Why a run could not be done at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The target could not be reached or does not speak HTTP/2.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The target.
        target: SocketAddr,
        /// Why.
        reason: String,
    },
    /// A load worker failed.
    #[error("load worker failed: {0}")]
    Worker(String),
}

enum FromWorker {
    Ready,
    Failed(RunError),
    /// One second's samples: all of them (progress), and the measured
    /// ones (the interval log).
    Interval(Stats, Stats),
    /// The measured totals, the window, and the measured samples since
    /// the last interval.
    Final(Stats, Duration, Stats),
}

/// Runs the load and returns the merged report.
pub fn run(options: &RunOptions) -> Result<Report, RunError> {
    if options.connections == 0 || options.streams == 0 {
        return Err(RunError::Options(
            "connections and streams must be at least 1".into(),
        ));
    }
    if options.connection_per_call && options.streams != 1 {
        return Err(RunError::Options(
            "a connection per call needs one stream per connection (--streams 1)".into(),
        ));
    }
    if let Some(m) = &options.method {
        let ok = m
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(service, method)| {
                !service.is_empty() && !method.is_empty() && !method.contains('/')
            });
        if !ok {
            return Err(RunError::Options(format!(
                "method {m:?} is not /package.Service/Method"
            )));
        }
    }
    if matches!(options.rate, Some(r) if !(r > 0.0 && r.is_finite())) {
        return Err(RunError::Options(
            "rate must be a positive number of calls per second".into(),
        ));
    }
    let cpus = options
        .cores
        .plan(&cores::available())
        .map_err(RunError::Options)?;
    let workers = cpus.len().min(options.connections);
    let (tx, rx) = crossbeam_channel::unbounded();
    let (go_tx, go_rx) = crossbeam_channel::bounded::<Instant>(workers);
    let mut threads = Vec::new();
    for (i, cpu) in cpus.into_iter().take(workers).enumerate() {
        let share = options.connections / workers + usize::from(i < options.connections % workers);
        let mut opts = options.clone();
        opts.connections = share;
        opts.calls = options
            .calls
            .map(|c| c / workers as u64 + u64::from((i as u64) < c % workers as u64));
        opts.rate = options.rate.map(|r| r / workers as f64);
        let tx = tx.clone();
        let go = go_rx.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("load-w{i}"))
                .spawn(move || {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    let driver = opts.driver.resolve();
                    let failed = tx.clone();
                    if let Err(e) =
                        grpc_proxy::runtime::driver::block_on(driver, move || worker(opts, tx, go))
                    {
                        let _ = failed.send(FromWorker::Failed(RunError::Worker(e.to_string())));
                    }
                })
                .map_err(|e| RunError::Worker(e.to_string()))?,
        );
    }
    drop(tx);
    let abort = |threads: Vec<std::thread::JoinHandle<()>>,
                 go_tx: crossbeam_channel::Sender<Instant>| {
        drop(go_tx);
        for t in threads {
            let _ = t.join();
        }
    };
    // Every worker connects first; the clock starts when all are ready.
    for _ in 0..workers {
        match rx.recv() {
            Ok(FromWorker::Ready) => {}
            Ok(FromWorker::Failed(e)) => {
                abort(threads, go_tx);
                return Err(e);
            }
            _ => {
                abort(threads, go_tx);
                return Err(RunError::Worker("exited during start-up".into()));
            }
        }
    }
    let mut log_file = match &options.hdr_log {
        Some(path) => match crate::hdrlog::LogFile::create(path) {
            Ok(f) => Some(f),
            Err(e) => {
                abort(threads, go_tx);
                return Err(RunError::Options(e));
            }
        },
        None => None,
    };
    if let Some(at) = options.start_at {
        if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
            std::thread::sleep(wait);
        }
    }
    let start = Instant::now();
    let start_wall = std::time::SystemTime::now();
    for _ in 0..workers {
        let _ = go_tx.send(start);
    }
    let about = format!("run: {} to {}", options.rpc.name(), options.target);
    let mut log = match log_file
        .as_mut()
        .map(|f| f.begin(start_wall, &about))
        .transpose()
    {
        Ok(log) => log,
        Err(e) => {
            abort(threads, go_tx);
            return Err(RunError::Options(e));
        }
    };
    let mut log_error = None;
    let mut timeline = Vec::new();
    let rpc_name = options.rpc.name();
    let mut write = |stats: &Stats, from: Duration, length: Duration| {
        let h = crate::report::headline(rpc_name, stats);
        if !h.is_empty() && !length.is_zero() {
            let rate = if rpc_name == "unary" || rpc_name == "client-stream" {
                stats.calls_ok as f64
            } else {
                (stats.messages_sent + stats.messages_received) as f64
            };
            let end = (from + length).saturating_sub(options.warmup).as_secs_f64();
            timeline.push((
                end,
                rate / length.as_secs_f64(),
                h.value_at_quantile(0.99) as f64 / 1000.0,
            ));
        }
        if let Some(log) = log.as_mut() {
            if let Err(e) = log.interval(stats, from, length) {
                log_error.get_or_insert(e);
            }
        }
    };
    let mut total = Stats::default();
    let mut window = Duration::ZERO;
    let mut finals = 0;
    let mut interval = Stats::default();
    let mut measured = Stats::default();
    let mut rest = Stats::default();
    let mut interval_reports = 0;
    let mut second = 0u64;
    while finals < workers {
        match rx.recv() {
            Ok(FromWorker::Interval(s, m)) => {
                interval.merge(&s);
                measured.merge(&m);
                interval_reports += 1;
                if interval_reports == workers {
                    second += 1;
                    if options.progress {
                        eprintln!("{}", progress_line(second, options, &interval));
                    }
                    // The measured window may start within this second.
                    let from = Duration::from_secs(second - 1).max(options.warmup);
                    let to = Duration::from_secs(second);
                    write(&measured, from, to.saturating_sub(from));
                    interval.reset();
                    measured.reset();
                    interval_reports = 0;
                }
            }
            Ok(FromWorker::Final(s, w, m)) => {
                total.merge(&s);
                rest.merge(&m);
                window = window.max(w);
                finals += 1;
            }
            Ok(FromWorker::Failed(e)) => {
                abort(threads, go_tx);
                return Err(e);
            }
            Ok(FromWorker::Ready) => {}
            Err(_) => break,
        }
    }
    abort(threads, go_tx);
    // What was measured after the last whole second (and any second not
    // every worker had reported).
    rest.merge(&measured);
    let from = Duration::from_secs(second).max(options.warmup);
    write(&rest, from, start.elapsed().saturating_sub(from));
    drop(log);
    if let Some(f) = log_file.as_mut() {
        if let Err(e) = f.finish() {
            log_error.get_or_insert(e);
        }
    }
    if let Some(e) = log_error {
        return Err(RunError::Options(e));
    }
    let setup_rpc = options.rpc.name();
    let setup = Setup {
        target: options.target.to_string(),
        rpc: options.rpc.name().into(),
        rate: options.rate,
        payload_bytes: match &options.method {
            Some(_) => options.data.as_ref().map_or(0, Bytes::len),
            None => options.payload,
        },
        cores: workers,
        connections: options.connections,
        streams_per_connection: options.streams,
    };
    let mut report = Report::new(setup, &total, window);
    report.series.name = options.target.to_string();
    report.series.timeline = timeline;
    if let Some(path) = &options.plot {
        let what = match setup_rpc {
            "bidi" => "round-trip latency",
            "server-stream" => "time to first message",
            _ => "call latency",
        };
        let per = if matches!(setup_rpc, "bidi" | "server-stream") {
            "messages"
        } else {
            "calls"
        };
        let title = format!("grpc-loadtest {setup_rpc} to {}", options.target);
        crate::plot::draw(
            path,
            &title,
            what,
            per,
            std::slice::from_ref(&report.series),
        )
        .map_err(RunError::Options)?;
    }
    Ok(report)
}

fn progress_line(second: u64, options: &RunOptions, s: &Stats) -> String {
    let phase = if Duration::from_secs(second) <= options.warmup {
        " (warm-up)"
    } else {
        ""
    };
    let us = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let streaming = if matches!(options.rpc, Rpc::Bidi | Rpc::ServerStream) {
        format!(
            "  {:>9} msgs/s  message p50 {:>8.1}us  p99 {:>8.1}us",
            s.messages_sent + s.messages_received,
            us(&s.message, 0.5),
            us(&s.message, 0.99)
        )
    } else {
        String::new()
    };
    format!(
        "[{second:>4}s] {:>8} calls/s  p50 {:>9.1}us  p99 {:>9.1}us{streaming}  errors {}{phase}",
        s.calls_ok,
        us(&s.call, 0.5),
        us(&s.call, 0.99),
        s.calls_failed()
    )
}

/// One connection of a load worker; reconnects when it breaks.
struct Conn {
    target: SocketAddr,
    tls: Option<Rc<grpc_proxy::transport::tls::Connector>>,
    h2: h2::client::Builder,
    send: RefCell<Option<SendRequest<Bytes>>>,
    /// The tasks driving this connection's sockets (one per reconnect).
    drivers: RefCell<Vec<monoio::task::JoinHandle<()>>>,
    connecting: Cell<bool>,
    changed: Notify,
}

impl Conn {
    async fn connect(&self) -> Result<SendRequest<Bytes>, String> {
        let tcp = monoio::time::timeout(
            Duration::from_secs(5),
            monoio::net::TcpStream::connect_addr(self.target),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let io = tcp.into_poll_io().map_err(|e| e.to_string())?;
        match &self.tls {
            None => self.handshake(io).await,
            Some(tls) => {
                let stream = monoio::time::timeout(
                    Duration::from_secs(5),
                    tokio_rustls::TlsConnector::from(tls.config.clone())
                        .connect(tls.server_name.clone(), io),
                )
                .await
                .map_err(|_| "TLS handshake timed out".to_string())?
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<SendRequest<Bytes>, String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
    {
        let (send, mut conn) = self
            .h2
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        let ping = conn.ping_pong();
        self.drivers.borrow_mut().push(monoio::spawn(async move {
            let _ = conn.await;
        }));
        // A PING round trip proves the target speaks HTTP/2, so that one
        // that does not fails here, once, not on every call.
        if let Some(mut ping) = ping {
            monoio::time::timeout(Duration::from_secs(5), ping.ping(h2::Ping::opaque()))
                .await
                .map_err(|_| "no HTTP/2 answer from the target (is it a gRPC server?)".to_string())?
                .map_err(|e| format!("not an HTTP/2 server: {e}"))?;
        }
        Ok(send)
    }

    /// Closes the connection and waits until its socket is closed.
    async fn close(&self) {
        self.send.borrow_mut().take();
        let drivers = std::mem::take(&mut *self.drivers.borrow_mut());
        for d in drivers {
            let _ = monoio::time::timeout(Duration::from_secs(5), d).await;
        }
    }

    /// A handle ready for a new stream, reconnecting if needed.
    async fn ready(&self) -> Result<SendRequest<Bytes>, String> {
        loop {
            let current = self.send.borrow().clone();
            if let Some(send) = current {
                match send.ready().await {
                    Ok(send) => return Ok(send),
                    Err(_) => {
                        self.send.borrow_mut().take();
                        continue;
                    }
                }
            }
            if self.connecting.get() {
                self.changed.notified().await;
                if self.send.borrow().is_none() {
                    return Err("reconnect failed".into());
                }
                continue;
            }
            self.connecting.set(true);
            let result = self.connect().await;
            self.connecting.set(false);
            if let Ok(send) = &result {
                *self.send.borrow_mut() = Some(send.clone());
            }
            self.changed.notify_all();
            return result;
        }
    }
}

/// Per-worker shared state.
struct Load {
    options: RunOptions,
    request_frame: Bytes,
    headers: HeaderMap,
    uri: Uri,
    stop: Latch,
    stats: RefCell<Stats>,
    interval: RefCell<Stats>,
    /// The measured samples of the current second (the interval log).
    measured: RefCell<Stats>,
    measure_from: Cell<Instant>,
    last_done: Cell<Instant>,
    calls_left: Cell<Option<u64>>,
    /// Open loop: scheduled calls not yet taken by a call loop.
    queue: Schedule,
}

/// The open loop's queue of intended start times. Each scheduled call wakes
/// exactly one idle call loop (waking them all would cost a wake-up per loop
/// per call and distort the very latency being measured).
#[derive(Default)]
struct Schedule {
    due: RefCell<VecDeque<Instant>>,
    idle: RefCell<VecDeque<std::task::Waker>>,
    closed: Cell<bool>,
}

impl Schedule {
    fn push(&self, at: Instant) {
        self.due.borrow_mut().push_back(at);
        let next = self.idle.borrow_mut().pop_front();
        if let Some(w) = next {
            w.wake();
        }
    }

    fn close(&self) {
        self.closed.set(true);
        let idle = std::mem::take(&mut *self.idle.borrow_mut());
        idle.into_iter().for_each(std::task::Waker::wake);
    }

    /// The next intended start, or `None` once closed.
    async fn next(&self) -> Option<Instant> {
        poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready(None);
            }
            if let Some(at) = self.due.borrow_mut().pop_front() {
                return Poll::Ready(Some(at));
            }
            self.idle.borrow_mut().push_back(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

async fn worker(
    options: RunOptions,
    tx: crossbeam_channel::Sender<FromWorker>,
    go: crossbeam_channel::Receiver<Instant>,
) {
    let mut h2 = h2::client::Builder::new();
    h2.initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .max_send_buffer_size(1 << 20)
        .enable_push(false);
    // One TLS client (and session cache) per worker thread.
    let tls = options.tls.as_ref().map(|t| Rc::new(t.for_worker()));
    let conns: Vec<Rc<Conn>> = (0..options.connections)
        .map(|_| {
            Rc::new(Conn {
                target: options.target,
                tls: tls.clone(),
                h2: h2.clone(),
                send: RefCell::new(None),
                drivers: RefCell::new(Vec::new()),
                connecting: Cell::new(false),
                changed: Notify::default(),
            })
        })
        .collect();
    for c in &conns {
        match c.ready().await {
            Ok(_) => {}
            Err(reason) => {
                let _ = tx.send(FromWorker::Failed(RunError::Connect {
                    target: options.target,
                    reason,
                }));
                return;
            }
        }
    }
    let _ = tx.send(FromWorker::Ready);
    // The start instant comes from the main thread so that every worker
    // shares one clock; waiting for it blocks this thread briefly, before
    // any load runs.
    let Ok(start) = go.recv() else { return };
    let load = Rc::new(new_load(options, start));
    let measure_from = start + load.options.warmup;
    load.measure_from.set(measure_from);
    let end = measure_from + load.options.duration;

    let mut scheduler = None;
    if let Some(rate) = load.options.rate {
        scheduler = Some(monoio::spawn(schedule(
            load.clone(),
            start,
            rate,
            if load.options.calls.is_some() {
                None
            } else {
                Some(end)
            },
        )));
    }
    let mut loops = Vec::new();
    for conn in &conns {
        for _ in 0..load.options.streams {
            loops.push(monoio::spawn(call_loop(load.clone(), conn.clone())));
        }
    }
    // Progress ticks, then the end.
    let mut tick = start;
    loop {
        tick += Duration::from_secs(1);
        let deadline = if load.options.calls.is_none() {
            tick.min(end)
        } else {
            tick
        };
        monoio::select! {
            _ = monoio::time::sleep_until(monoio::time::Instant::from_std(deadline)) => {}
            _ = load.stop.wait() => {}
        }
        if load.stop.is_set() || (load.options.calls.is_none() && Instant::now() >= end) {
            break;
        }
        let snapshot = std::mem::take(&mut *load.interval.borrow_mut());
        let measured = std::mem::take(&mut *load.measured.borrow_mut());
        let _ = tx.send(FromWorker::Interval(snapshot, measured));
    }
    load.stop.set();
    load.queue.close();
    // Let calls in flight finish (bounded), so the tail is not cut off.
    let drain = async {
        if let Some(s) = scheduler {
            s.await;
        }
        for l in loops {
            l.await;
        }
    };
    let _ = monoio::time::timeout(Duration::from_secs(10), drain).await;
    let window = if load.options.calls.is_some() {
        load.last_done.get().saturating_duration_since(measure_from)
    } else {
        end.saturating_duration_since(measure_from)
    };
    let stats = load.stats.borrow().clone();
    let rest = std::mem::take(&mut *load.measured.borrow_mut());
    let _ = tx.send(FromWorker::Final(stats, window, rest));
    // Close the connections before the runtime ends: monoio drops only the
    // tasks that are ready to run, so a driver waiting on its socket would
    // outlive the run with the socket open. Dropping the last handle makes
    // h2 send GOAWAY and the driver finish.
    let drivers: Vec<_> = conns
        .iter()
        .flat_map(|c| {
            c.send.borrow_mut().take();
            std::mem::take(&mut *c.drivers.borrow_mut())
        })
        .collect();
    drop(load);
    drop(conns);
    let _ = monoio::time::timeout(Duration::from_secs(1), async {
        for d in drivers {
            d.await;
        }
    })
    .await;
}

fn new_load(options: RunOptions, start: Instant) -> Load {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    // What the echo service is told, for it alone.
    let echo = options.method.is_none();
    if let Some(size) = options.response_size.filter(|_| echo) {
        headers.insert(grpc::RESPONSE_SIZE, HeaderValue::from(size));
    }
    if echo && options.rpc == Rpc::ServerStream {
        headers.insert(grpc::MESSAGES, HeaderValue::from(options.messages));
    }
    if let Some(d) = options.delay.filter(|_| echo) {
        if let Ok(v) = HeaderValue::from_str(&format!("{}us", d.as_micros())) {
            headers.insert(grpc::DELAY, v);
        }
    }
    for (k, v) in &options.metadata {
        headers.append(k.clone(), v.clone());
    }
    let authority = options
        .authority
        .clone()
        .unwrap_or_else(|| options.target.to_string());
    let uri = Uri::builder()
        .scheme(if options.tls.is_some() {
            "https"
        } else {
            "http"
        })
        .authority(authority.as_str())
        .path_and_query(options.method.as_deref().unwrap_or(options.rpc.path()))
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://localhost/"));
    Load {
        request_frame: match (&options.method, &options.data) {
            (Some(_), Some(data)) => grpc::frame(data),
            (Some(_), None) => grpc::frame(&[]),
            (None, _) => grpc::frame_zeros(options.payload),
        },
        calls_left: Cell::new(options.calls),
        options,
        headers,
        uri,
        stop: Latch::default(),
        stats: RefCell::new(Stats::default()),
        interval: RefCell::new(Stats::default()),
        measured: RefCell::new(Stats::default()),
        measure_from: Cell::new(start),
        last_done: Cell::new(start),
        queue: Schedule::default(),
    }
}

/// Open loop: puts intended start times on the queue at a fixed rate.
///
/// monoio's timers tick in milliseconds (and a task that keeps itself
/// awake starves monoio's I/O), so calls are released at the first tick
/// after their intended time, every due call at once. Latency still counts
/// from the intended time; how late the release was is recorded as the
/// schedule lag, so the report shows how much of the latency is pacing.
async fn schedule(load: Rc<Load>, start: Instant, rate: f64, end: Option<Instant>) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut i: u32 = 0;
    let mut next = start;
    loop {
        if load.stop.is_set() {
            return;
        }
        let now = Instant::now();
        while next <= now {
            if end.is_some_and(|e| next >= e) {
                return;
            }
            let lag = now.duration_since(next).as_nanos() as u64;
            let measuring = next >= load.measure_from.get();
            if measuring {
                load.stats.borrow_mut().schedule_lag.saturating_record(lag);
            }
            load.queue.push(next);
            i = i.wrapping_add(1);
            next = start + period.mul_f64(f64::from(i));
        }
        monoio::select! {
            _ = monoio::time::sleep_until(monoio::time::Instant::from_std(next)) => {}
            _ = load.stop.wait() => return,
        }
    }
}

/// Records one call's samples into the worker's totals (when the call is
/// in the measured window) and into the current progress interval.
struct Recorder<'a> {
    load: &'a Load,
    measuring: bool,
}

impl Recorder<'_> {
    fn each(&self, f: impl Fn(&mut Stats)) {
        if self.measuring {
            f(&mut self.load.stats.borrow_mut());
            f(&mut self.load.measured.borrow_mut());
        }
        f(&mut self.load.interval.borrow_mut());
    }

    fn call_ok(&self, latency: Duration) {
        let ns = latency.as_nanos() as u64;
        self.each(|s| {
            s.calls_ok += 1;
            s.call.saturating_record(ns);
        });
    }

    fn failed(&self, label: &str) {
        self.each(|s| match s.errors.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                s.errors.insert(label.to_owned(), 1);
            }
        });
    }

    fn message(&self, latency: Duration) {
        let ns = latency.as_nanos() as u64;
        self.each(|s| s.message.saturating_record(ns));
    }

    fn first_message(&self, latency: Duration) {
        let ns = latency.as_nanos() as u64;
        self.each(|s| s.first_message.saturating_record(ns));
    }

    fn sent(&self, bytes: usize) {
        self.each(|s| {
            s.messages_sent += 1;
            s.bytes_sent += bytes as u64;
        });
    }

    fn received_bytes(&self, bytes: usize) {
        self.each(|s| s.bytes_received += bytes as u64);
    }

    fn received_message(&self) {
        self.each(|s| s.messages_received += 1);
    }
}

async fn call_loop(load: Rc<Load>, conn: Rc<Conn>) {
    loop {
        if load.stop.is_set() {
            return;
        }
        let intended = if load.options.rate.is_some() {
            match load.queue.next().await {
                Some(at) => at,
                None => return,
            }
        } else {
            Instant::now()
        };
        let measuring = intended >= load.measure_from.get();
        if measuring {
            if let Some(left) = load.calls_left.get() {
                if left == 0 {
                    load.stop.set();
                    load.queue.close();
                    return;
                }
                load.calls_left.set(Some(left - 1));
            }
        }
        let rec = Recorder {
            load: &load,
            measuring,
        };
        let result = one_call(&load, &conn, intended, &rec).await;
        let now = Instant::now();
        match &result {
            Ok(()) => rec.call_ok(now.duration_since(intended)),
            Err(f) => rec.failed(&f.label()),
        }
        if measuring {
            load.last_done.set(now);
        }
        if load.options.connection_per_call {
            conn.close().await;
        }
        if matches!(result, Err(Failure::Connect)) {
            // Do not spin on a target that is down.
            monoio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

enum Failure {
    Connect,
    Status(Code),
    Http(u16),
    Protocol,
}

impl Failure {
    fn label(&self) -> String {
        match self {
            Failure::Connect => "UNAVAILABLE (connect)".into(),
            Failure::Status(c) => c.name().into(),
            Failure::Http(s) => format!("HTTP {s}"),
            Failure::Protocol => "INTERNAL (malformed response)".into(),
        }
    }

    fn from_h2(e: &h2::Error) -> Failure {
        match e.reason() {
            Some(r) if e.is_reset() => Failure::Status(code_of_reset(r)),
            _ if e.is_io() || e.is_go_away() => Failure::Status(Code::Unavailable),
            _ => Failure::Status(Code::Internal),
        }
    }
}

fn status_of(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok())
        .map(|n| Code::from_u8(n).unwrap_or(Code::Unknown))
}

async fn one_call(
    load: &Load,
    conn: &Conn,
    intended: Instant,
    rec: &Recorder<'_>,
) -> Result<(), Failure> {
    let opts = &load.options;
    let h2err = |e: h2::Error| Failure::from_h2(&e);
    let mut send_request = conn.ready().await.map_err(|_| Failure::Connect)?;
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = load.uri.clone();
    *request.headers_mut() = load.headers.clone();
    if let Some(rotating) = &opts.rotating {
        request
            .headers_mut()
            .insert(rotating.name.clone(), rotating.take().clone());
    }
    let (response, mut stream) = send_request.send_request(request, false).map_err(h2err)?;
    let frame = &load.request_frame;
    let sends = match opts.rpc {
        Rpc::ClientStream => opts.messages.max(1),
        Rpc::Unary | Rpc::ServerStream | Rpc::Bidi => 1,
    };
    for i in 0..sends {
        let last = i + 1 == sends && opts.rpc != Rpc::Bidi;
        send_data(&mut stream, frame.clone(), last)
            .await
            .map_err(h2err)?;
        rec.sent(frame.len());
    }
    let response = response.await.map_err(h2err)?;
    if response.status() != http::StatusCode::OK {
        return Err(Failure::Http(response.status().as_u16()));
    }
    if let Some(code) = status_of(response.headers()) {
        // Trailers-only.
        return if code == Code::Ok {
            Ok(())
        } else {
            Err(Failure::Status(code))
        };
    }
    let mut body = response.into_body();
    let mut deframer = Deframer::default();
    let mut round_trips = 1usize;
    let mut last_message: Option<Instant> = None;
    let mut sent_at = Instant::now();
    while let Some(chunk) = recv_data(&mut body).await {
        let chunk = chunk.map_err(h2err)?;
        rec.received_bytes(chunk.len());
        deframer.push(chunk);
        while deframer
            .next_frame()
            .map_err(|_| Failure::Protocol)?
            .is_some()
        {
            let now = Instant::now();
            rec.received_message();
            match (opts.rpc, last_message) {
                (Rpc::ServerStream, None) => rec.first_message(now.duration_since(intended)),
                (Rpc::ServerStream, Some(prev)) => rec.message(now.duration_since(prev)),
                (Rpc::Bidi, _) => {
                    rec.message(now.duration_since(sent_at));
                    if round_trips < opts.messages.max(1) {
                        round_trips += 1;
                        sent_at = Instant::now();
                        send_data(&mut stream, frame.clone(), false)
                            .await
                            .map_err(h2err)?;
                        rec.sent(frame.len());
                    } else {
                        stream.send_data(Bytes::new(), true).map_err(h2err)?;
                    }
                }
                _ => {}
            }
            last_message = Some(now);
        }
    }
    let trailers = poll_fn(|cx| body.poll_trailers(cx)).await.map_err(h2err)?;
    match trailers.as_ref().and_then(status_of) {
        Some(Code::Ok) => Ok(()),
        Some(code) => Err(Failure::Status(code)),
        None => Err(Failure::Protocol),
    }
}

/// The gRPC code of a stream reset, as the gRPC spec maps them
/// (`PROTOCOL-HTTP2.md`, "Errors").
fn code_of_reset(reason: h2::Reason) -> Code {
    match reason {
        h2::Reason::REFUSED_STREAM => Code::Unavailable,
        h2::Reason::CANCEL => Code::Cancelled,
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        _ => Code::Internal,
    }
}
