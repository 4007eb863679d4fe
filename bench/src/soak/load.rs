//! What the soak drives through the proxy, all on one thread pinned to the
//! load CPU (a tokio current-thread runtime): the steady mixed load, the
//! probe, and the two faults that are clients (slow readers, resets).
//!
//! - Mixed load: the four RPC kinds, paced, on one connection per path:
//!   `steady` (routed to the upstream that stays) and `flaky` (metadata
//!   `x-soak-cluster: flaky`, routed to the upstream that is restarted);
//!   plus long-lived bidi streams on `steady`, a round trip every 100 ms for
//!   the whole run, that must outlive every fault.
//! - Probe: unary calls at a fixed rate on their own connection; each
//!   call's latency is kept per phase.
//! - Slow readers, during their phase: server streams of 16 KiB messages
//!   that nobody reads, on one connection that never returns window and one
//!   whose socket stops being read; they leave before the phase ends.
//! - Resets, during their phase: connections where every third call is
//!   cancelled midway (one of each kind in turn) and every 30th call the
//!   client vanishes with streams open.
//!
//! Every call's [`Outcome`] is counted by the phase it is attributed to: the
//! phase it ended in if that is a fault, else the one it started in (so a
//! call caught by a fault counts there, whichever side of the boundary).
//! The orchestrator moves the phase through a `watch` channel; `None` stops.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use grpc_loadtest::grpc::{self as wire, Deframer};
use grpc_loadtest::h2io::send_data;
use grpc_loadtest::run::Rpc;
use grpc_proxy::Code;
use h2::Reason;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::client::{self, call, Conn, Outcome, Reading, Shape};
use super::Fault;

/// Calls routed to the upstream that stays.
pub const STEADY: &str = "steady";
/// Calls routed to the upstream that is restarted.
pub const FLAKY: &str = "flaky";
/// Long-lived bidi streams on the steady path.
pub const LONG: &str = "steady long bidi";
/// The fixed-rate unary probe.
pub const PROBE: &str = "probe";
/// The slow readers' streams.
pub const SLOW: &str = "slow readers";
/// The resetting clients' calls, cancelled or not.
pub const RESETTERS: &str = "resetters";

const KINDS: [Rpc; 4] = [Rpc::Unary, Rpc::ServerStream, Rpc::ClientStream, Rpc::Bidi];
/// Paced loops per (path, kind).
const LOOPS: usize = 2;
const LONG_STREAMS: usize = 2;
const SLOW_STREAMS: usize = 8;
const RESET_CONNS: usize = 4;

/// What the load is told.
pub struct LoadPlan {
    /// The proxy's listener.
    pub proxy: SocketAddr,
    /// The phases, in order.
    pub schedule: Vec<Fault>,
    /// Mixed-load calls per second, over both paths and the four kinds.
    pub rate: f64,
    /// Probe calls per second.
    pub probe_rate: f64,
    /// How long slow readers hold their streams.
    pub slow_hold: Duration,
    /// The CPU to pin the load thread to.
    pub cpu: usize,
}

/// What the load saw.
#[derive(Default)]
pub struct LoadResults {
    /// Calls by (phase index, path, outcome label).
    pub tally: BTreeMap<(usize, &'static str, String), u64>,
    /// Probe latencies in microseconds, by phase index (OK calls only).
    pub probe_us: Vec<Vec<u64>>,
    /// First and last failure on the flaky path, by phase index.
    pub flaky_failing: Vec<Option<(Instant, Instant)>>,
}

struct Ctx {
    proxy: SocketAddr,
    schedule: Vec<Fault>,
    phase: watch::Receiver<Option<usize>>,
    results: RefCell<LoadResults>,
    probes_in_flight: Cell<usize>,
}

impl Ctx {
    fn phase(&self) -> Option<usize> {
        *self.phase.borrow()
    }

    fn record(&self, path: &'static str, started: usize, outcome: &Outcome) {
        let now = self.phase().unwrap_or(self.schedule.len() - 1);
        let phase = if self.schedule[now] == Fault::Quiet {
            started
        } else {
            now
        };
        let mut r = self.results.borrow_mut();
        *r.tally.entry((phase, path, outcome.label())).or_default() += 1;
        if path == FLAKY && outcome.is_error() {
            let t = Instant::now();
            let window = &mut r.flaky_failing[phase];
            *window = Some(window.map_or((t, t), |(first, _)| (first, t)));
        }
    }

    /// Sleeps up to `d`, less if the phase leaves `phase`.
    async fn sleep_in(&self, phase: usize, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < end && self.phase() == Some(phase) {
            tokio::time::sleep(Duration::from_millis(50).min(d)).await;
        }
    }
}

/// Starts the load thread; it connects, says so on `ready`, runs until the
/// phase is `None`, and returns what it saw.
pub fn start(
    plan: LoadPlan,
    phase: watch::Receiver<Option<usize>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> anyhow::Result<std::thread::JoinHandle<LoadResults>> {
    Ok(std::thread::Builder::new()
        .name("soak-load".into())
        .spawn(move || {
            core_affinity::set_for_current(core_affinity::CoreId { id: plan.cpu });
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return LoadResults::default();
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run(plan, phase, ready))
        })?)
}

async fn run(
    plan: LoadPlan,
    phase: watch::Receiver<Option<usize>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> LoadResults {
    let phases = plan.schedule.len();
    let ctx = Rc::new(Ctx {
        proxy: plan.proxy,
        schedule: plan.schedule,
        phase,
        results: RefCell::new(LoadResults {
            tally: BTreeMap::new(),
            probe_us: vec![Vec::new(); phases],
            flaky_failing: vec![None; phases],
        }),
        probes_in_flight: Cell::new(0),
    });
    let steady = Conn::new(plan.proxy, Reading::Normal);
    let flaky = Conn::new(plan.proxy, Reading::Normal);
    let probe_conn = Conn::new(plan.proxy, Reading::Normal);
    for c in [&steady, &flaky, &probe_conn] {
        if let Err(o) = c.ready().await {
            let _ = ready.send(Err(format!(
                "cannot connect to the proxy at {}: {}",
                plan.proxy,
                o.label()
            )));
            return LoadResults::default();
        }
    }
    let _ = ready.send(Ok(()));

    let mut tasks = Vec::new();
    let period = Duration::from_secs_f64((2 * KINDS.len() * LOOPS) as f64 / plan.rate);
    for (path, conn) in [(STEADY, &steady), (FLAKY, &flaky)] {
        for rpc in KINDS {
            let mut shape = Shape::new(plan.proxy, rpc, 100).messages(10);
            if rpc == Rpc::ServerStream {
                shape = shape.with(wire::RESPONSE_SIZE, 1024);
            }
            if path == FLAKY {
                shape = shape.with("x-soak-cluster", "flaky");
            }
            for _ in 0..LOOPS {
                tasks.push(tokio::task::spawn_local(paced(
                    ctx.clone(),
                    conn.clone(),
                    shape.clone(),
                    path,
                    period,
                )));
            }
        }
    }
    for _ in 0..LONG_STREAMS {
        tasks.push(tokio::task::spawn_local(long_bidi(
            ctx.clone(),
            steady.clone(),
        )));
    }
    tasks.push(tokio::task::spawn_local(probe(
        ctx.clone(),
        probe_conn,
        Duration::from_secs_f64(1.0 / plan.probe_rate),
    )));
    tasks.push(tokio::task::spawn_local(on_phase(
        ctx.clone(),
        Fault::SlowReaders,
        move |ctx, phase| Box::pin(slow_readers(ctx, phase, plan.slow_hold)),
    )));
    tasks.push(tokio::task::spawn_local(on_phase(
        ctx.clone(),
        Fault::ClientResets,
        |ctx, phase| Box::pin(resetters(ctx, phase)),
    )));

    let mut rx = ctx.phase.clone();
    while rx.borrow_and_update().is_some() {
        if rx.changed().await.is_err() {
            break;
        }
    }
    // Calls in flight finish (bounded), so that the tally is complete.
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    steady.abort();
    flaky.abort();
    let results = std::mem::take(&mut *ctx.results.borrow_mut());
    results
}

/// Calls of one shape at a fixed pace (a slow call delays the next).
async fn paced(ctx: Rc<Ctx>, conn: Rc<Conn>, shape: Shape, path: &'static str, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(started) = ctx.phase() else { return };
        let outcome = call(&conn, &shape).await;
        ctx.record(path, started, &outcome);
    }
}

/// One bidi stream for the whole run, a round trip every 100 ms; reopened
/// (and counted) if it ends early.
async fn long_bidi(ctx: Rc<Ctx>, conn: Rc<Conn>) {
    let shape = Shape::new(ctx.proxy, Rpc::Bidi, 100);
    while let Some(started) = ctx.phase() {
        let outcome = match long_call(&ctx, &conn, &shape).await {
            Ok(o) | Err(o) => o,
        };
        ctx.record(LONG, started, &outcome);
        if ctx.phase().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn long_call(ctx: &Ctx, conn: &Conn, shape: &Shape) -> Result<Outcome, Outcome> {
    let (response, mut stream) = shape.open(conn).await?;
    send_data(&mut stream, shape.frame(), false).await?;
    let mut body = match client::head(response).await? {
        Ok(body) => body,
        Err(ended) => return Ok(ended),
    };
    let mut deframer = Deframer::default();
    loop {
        if client::one_message(&mut body, &mut deframer)
            .await?
            .is_none()
        {
            // The stream ended without our end: take its status.
            return Ok(client::trailers(&mut body).await?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if ctx.phase().is_none() {
            stream.send_data(bytes::Bytes::new(), true)?;
            while client::one_message(&mut body, &mut deframer)
                .await?
                .is_some()
            {}
            return Ok(client::trailers(&mut body).await?);
        }
        send_data(&mut stream, shape.frame(), false).await?;
    }
}

/// Unary calls at a fixed rate, each on its own task so that a slow one
/// never delays the schedule; latency from the call's start.
async fn probe(ctx: Rc<Ctx>, conn: Rc<Conn>, period: Duration) {
    let shape = Rc::new(Shape::new(ctx.proxy, Rpc::Unary, 10));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let Some(phase) = ctx.phase() else { break };
        let (ctx, conn, shape) = (ctx.clone(), conn.clone(), shape.clone());
        ctx.probes_in_flight.set(ctx.probes_in_flight.get() + 1);
        tokio::task::spawn_local(async move {
            let t0 = Instant::now();
            let outcome = call(&conn, &shape).await;
            if outcome == Outcome::Status(Code::Ok) {
                ctx.results.borrow_mut().probe_us[phase].push(t0.elapsed().as_micros() as u64);
            }
            ctx.record(PROBE, phase, &outcome);
            ctx.probes_in_flight.set(ctx.probes_in_flight.get() - 1);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctx.probes_in_flight.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type PhaseTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Runs `task` at the start of every phase of kind `fault`, until stopped.
async fn on_phase(ctx: Rc<Ctx>, fault: Fault, task: impl Fn(Rc<Ctx>, usize) -> PhaseTask) {
    let mut rx = ctx.phase.clone();
    loop {
        let current = *rx.borrow_and_update();
        let Some(phase) = current else { return };
        if ctx.schedule[phase] == fault {
            task(ctx.clone(), phase).await;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Opens server streams nobody reads, holds them, and leaves: the
/// window-starved connection resets its streams, the paused one vanishes.
async fn slow_readers(ctx: Rc<Ctx>, phase: usize, hold: Duration) {
    let shape = Shape::new(ctx.proxy, Rpc::ServerStream, 10)
        .messages(1_000_000)
        .with(wire::RESPONSE_SIZE, 16 * 1024);
    let mut held = Vec::new();
    for reading in [Reading::Normal, Reading::Pausable] {
        let conn = Conn::new(ctx.proxy, reading);
        let mut opened = Vec::new();
        for _ in 0..SLOW_STREAMS {
            let call: Result<_, Outcome> = async {
                let (response, mut stream) = shape.open(&conn).await?;
                send_data(&mut stream, shape.frame(), true).await?;
                Ok((response, stream))
            }
            .await;
            match call {
                Ok(call) => opened.push(call),
                Err(o) => ctx.record(SLOW, phase, &o),
            }
        }
        let mut streams = Vec::new();
        for (response, stream) in opened {
            match tokio::time::timeout(Duration::from_secs(5), client::head(response)).await {
                Ok(Ok(Ok(body))) => streams.push((body, stream)),
                Ok(Ok(Err(o))) => ctx.record(SLOW, phase, &o),
                Ok(Err(e)) => ctx.record(SLOW, phase, &Outcome::from(e)),
                Err(_) => ctx.record(
                    SLOW,
                    phase,
                    &Outcome::Other("no response headers within 5 s".into()),
                ),
            }
        }
        if reading == Reading::Pausable {
            conn.pause_reading();
        }
        held.push((conn, reading, streams));
    }
    ctx.sleep_in(phase, hold).await;
    for (conn, reading, streams) in held {
        let outcome = match reading {
            Reading::Normal => Outcome::Cancelled,
            Reading::Pausable => Outcome::Left,
        };
        for _ in &streams {
            ctx.record(SLOW, phase, &outcome);
        }
        // Dropping a stream nobody finished resets it (CANCEL); let the
        // resets go out before the connection does.
        drop(streams);
        if reading == Reading::Normal {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        conn.abort();
    }
}

/// Clients that cancel calls midway, while the phase lasts.
async fn resetters(ctx: Rc<Ctx>, phase: usize) {
    let loops: Vec<_> = (0..RESET_CONNS)
        .map(|i| tokio::task::spawn_local(reset_loop(ctx.clone(), phase, i)))
        .collect();
    for l in loops {
        let _ = l.await;
    }
}

async fn reset_loop(ctx: Rc<Ctx>, phase: usize, seed: usize) {
    let conn = Conn::new(ctx.proxy, Reading::Normal);
    let whole: Vec<Shape> = KINDS
        .iter()
        .map(|&rpc| Shape::new(ctx.proxy, rpc, 100).messages(5))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut n = seed;
    while ctx.phase() == Some(phase) {
        tick.tick().await;
        n += 1;
        // Two whole calls for each cancelled one: a client that cancels
        // some of its calls, not a rapid-reset flood (which the proxy
        // closes on purpose once half of 100 streams are reset).
        let outcome = if n.is_multiple_of(3) {
            cancel_midway(&ctx, &conn, KINDS[(n / 3) % KINDS.len()]).await
        } else {
            call(&conn, &whole[n % whole.len()]).await
        };
        ctx.record(RESETTERS, phase, &outcome);
        if n.is_multiple_of(30) {
            vanish(&ctx, &conn, phase).await;
        }
    }
}

/// One call cancelled (RST_STREAM CANCEL) after it got going.
async fn cancel_midway(ctx: &Ctx, conn: &Conn, rpc: Rpc) -> Outcome {
    let result: Result<(), Outcome> = async {
        match rpc {
            Rpc::Unary => {
                let shape = Shape::new(ctx.proxy, rpc, 100).with(wire::DELAY, "50ms");
                let (_response, mut stream) = shape.open(conn).await?;
                send_data(&mut stream, shape.frame(), true).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                stream.send_reset(Reason::CANCEL);
            }
            Rpc::ServerStream => {
                let shape = Shape::new(ctx.proxy, rpc, 100)
                    .messages(1000)
                    .with(wire::DELAY, "1ms");
                let (response, mut stream) = shape.open(conn).await?;
                send_data(&mut stream, shape.frame(), true).await?;
                let mut body = client::head(response).await??;
                let mut deframer = Deframer::default();
                for _ in 0..2 {
                    if client::one_message(&mut body, &mut deframer)
                        .await?
                        .is_none()
                    {
                        return Err(client::trailers(&mut body).await?);
                    }
                }
                // Dropping both halves of an unfinished stream resets it.
            }
            Rpc::ClientStream => {
                let shape = Shape::new(ctx.proxy, rpc, 100);
                let (_response, mut stream) = shape.open(conn).await?;
                for _ in 0..3 {
                    send_data(&mut stream, shape.frame(), false).await?;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                stream.send_reset(Reason::CANCEL);
            }
            Rpc::Bidi => {
                let shape = Shape::new(ctx.proxy, rpc, 100);
                let (response, mut stream) = shape.open(conn).await?;
                send_data(&mut stream, shape.frame(), false).await?;
                let mut body = client::head(response).await??;
                let mut deframer = Deframer::default();
                for i in 0..3 {
                    if client::one_message(&mut body, &mut deframer)
                        .await?
                        .is_none()
                    {
                        return Err(client::trailers(&mut body).await?);
                    }
                    if i < 2 {
                        send_data(&mut stream, shape.frame(), false).await?;
                    }
                }
                stream.send_reset(Reason::CANCEL);
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Outcome::Cancelled,
        Err(o) => o,
    }
}

/// Opens three bidi streams, has one round trip on each, and drops the
/// connection under them.
async fn vanish(ctx: &Ctx, conn: &Conn, phase: usize) {
    let shape = Shape::new(ctx.proxy, Rpc::Bidi, 100);
    let mut open = Vec::new();
    for _ in 0..3 {
        let going: Result<_, Outcome> = async {
            let (response, mut stream) = shape.open(conn).await?;
            send_data(&mut stream, shape.frame(), false).await?;
            let mut body = client::head(response).await??;
            if client::one_message(&mut body, &mut Deframer::default())
                .await?
                .is_none()
            {
                return Err(client::trailers(&mut body).await?);
            }
            Ok((body, stream))
        }
        .await;
        match going {
            Ok(call) => open.push(call),
            Err(o) => ctx.record(RESETTERS, phase, &o),
        }
    }
    conn.abort();
    for _ in &open {
        ctx.record(RESETTERS, phase, &Outcome::Left);
    }
}
