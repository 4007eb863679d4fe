//! A worker: one pinned thread, one monoio runtime, one listener, and this
//! core's director and upstream pool.
//!
//! Everything a call touches lives in [`Worker`], shared by the core's
//! tasks through `Rc`; nothing on the per-call path crosses threads. The
//! worker accepts until it is told to drain or stop (see
//! [`control`](crate::runtime::mailbox)); when draining it closes its listener, lets
//! every connection GOAWAY and finish, and exits when the last one closes
//! or the drain timeout passes.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::config::Settings;
use crate::downstream::snapshot::{Plan, Snapshot};
use crate::routing::director::{CoreId, DirectorRecipe};
use crate::runtime::driver::{block_on, Driver};
use crate::runtime::mailbox::Mailbox;
use crate::runtime::wake::{Latch, Notify};
use crate::telemetry::access_log::Logger;
use crate::telemetry::metrics::{CoreCounters, CoreReport, RouteRegistry};
use crate::upstream::pool::Pool;

/// The per-core state every task of this worker shares.
pub struct Worker {
    /// Routes, clusters and TLS for calls starting now; see
    /// [`snapshot`](crate::downstream::snapshot).
    current: RefCell<Rc<Snapshot>>,
    pub(crate) pool: Rc<Pool>,
    /// This core's counters.
    pub(crate) counters: CoreCounters,
    /// This core's route statistics, by name.
    routes: RouteRegistry,
    /// This core's access logger, when the log is on.
    pub(crate) access_log: Option<Logger>,
    pub(crate) settings: Rc<Settings>,
    pub(crate) h2: h2::server::Builder,
    pub(crate) drain: Latch,
    /// Set when the worker exits: every task that owns a socket watches it.
    pub(crate) stop: Rc<Latch>,
    connections: Cell<usize>,
    idle: Notify,
}

/// What the control thread can ask of a worker.
#[derive(Clone, Debug)]
pub enum Command {
    /// Stop accepting, GOAWAY every connection, finish in-flight calls up to
    /// the drain timeout, then exit.
    Drain,
    /// Exit now, cutting every connection.
    Stop,
    /// Swap in this configuration for calls that start from now on, then
    /// say so on `done`.
    Reload {
        /// The configuration.
        plan: std::sync::Arc<Plan>,
        /// Told the plan's version once this worker uses it.
        done: crossbeam_channel::Sender<u64>,
    },
    /// Report this worker's counters.
    Scrape(crossbeam_channel::Sender<CoreReport>),
}

/// What a worker thread is started with; `Send`.
pub struct Spec<R> {
    pub core: CoreId,
    pub driver: Driver,
    pub listener: std::net::TcpListener,
    pub recipe: R,
    pub plan: Plan,
    pub access_log: Option<Logger>,
    pub settings: Settings,
    pub mailbox: Mailbox<Command>,
    /// Told once the runtime is up and the listener registered, or why not.
    pub ready: crossbeam_channel::Sender<Result<Driver, String>>,
}

/// Runs a worker on the current thread until it stops.
pub fn run<R: DirectorRecipe>(spec: Spec<R>) {
    if let Some(cpu) = spec.core.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            tracing::warn!(
                worker = spec.core.worker,
                cpu,
                "could not pin worker to its CPU"
            );
        }
    }
    let driver = spec.driver.resolve();
    let ready = spec.ready.clone();
    if let Err(e) = block_on(driver, move || serve(spec, driver)) {
        let _ = ready.send(Err(format!("cannot start the {driver} runtime: {e}")));
    }
}

async fn serve<R: DirectorRecipe>(spec: Spec<R>, driver: Driver) {
    let listener = match monoio::net::TcpListener::from_std(spec.listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = spec
                .ready
                .send(Err(format!("cannot register listener: {e}")));
            return;
        }
    };
    let settings = Rc::new(spec.settings);
    let stop = Rc::new(Latch::default());
    let routes = RouteRegistry::default();
    let first = Rc::new(Snapshot::first(
        &spec.plan,
        &spec.recipe,
        spec.core,
        &routes,
    ));
    drop(spec.recipe);
    let worker = Rc::new(Worker {
        current: RefCell::new(first.clone()),
        pool: Rc::new(Pool::new(settings.clone(), stop.clone())),
        counters: CoreCounters::default(),
        routes,
        access_log: spec.access_log,
        h2: crate::downstream::connection::builder(&settings),
        settings,
        drain: Latch::default(),
        stop,
        connections: Cell::new(0),
        idle: Notify::default(),
    });
    crate::upstream::health::watch_new(&worker.pool, &first.clusters, &[]);
    drop(first);
    let w = worker.clone();
    let core = spec.core;
    // The mailbox is polled here rather than spawned, so that it ends with
    // the worker (see `close`).
    let stop = worker.stop.clone();
    let mailbox = spec.mailbox.run(move |command| match command {
        Command::Drain => w.drain.set(),
        Command::Stop => w.stop.set(),
        Command::Reload { plan, done } => {
            let previous = w.snapshot();
            let next = Rc::new(previous.next(&plan, core, &w.routes));
            *w.current.borrow_mut() = next.clone();
            crate::upstream::health::watch_new(&w.pool, &next.clusters, &previous.clusters);
            tracing::debug!(
                worker = core.worker,
                version = plan.version,
                "config reloaded"
            );
            let _ = done.send(plan.version);
        }
        Command::Scrape(reply) => {
            let _ = reply.send(w.report(core.worker));
        }
    });
    // A control side that is gone stops the worker.
    let mailbox = async move {
        mailbox.await;
        stop.set();
    };
    if worker.access_log.is_some() {
        monoio::spawn(flush_access_log(worker.clone()));
    }
    let mut mailbox = std::pin::pin!(mailbox);
    let _ = spec.ready.send(Ok(driver));
    tracing::debug!(worker = spec.core.worker, cpu = ?spec.core.cpu, %driver, "worker started");

    monoio::select! {
        _ = accept_loop(&worker, &listener) => {}
        _ = worker.drain.wait() => {}
        _ = worker.stop.wait() => {}
        _ = &mut mailbox => {}
    }
    drop(listener);
    if !worker.stop.is_set() {
        let timeout = worker.settings.drain_timeout;
        monoio::select! {
            _ = wait_idle(&worker) => {}
            _ = worker.stop.wait() => {}
            _ = &mut mailbox => {}
            _ = monoio::time::sleep(timeout) => {
                tracing::warn!(worker = spec.core.worker, connections = worker.connections.get(),
                    "drain timeout: cutting remaining connections");
            }
        }
    }
    close(&worker).await;
}

impl Worker {
    /// The configuration for a call that starts now.
    pub(crate) fn snapshot(&self) -> Rc<Snapshot> {
        self.current.borrow().clone()
    }

    /// This core's counters, for a scrape.
    fn report(&self, core: usize) -> CoreReport {
        let mut report = CoreReport::new(core, &self.counters, &self.routes);
        report.connections_active = self.connections.get() as u64;
        report.clusters = self
            .snapshot()
            .clusters
            .iter()
            .map(|c| (c.name().to_owned(), c.report()))
            .collect();
        report
    }
}

/// Hands the access log's buffer to its writer now and then, so that a
/// quiet core's lines do not wait for a full batch.
async fn flush_access_log(worker: Rc<Worker>) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(crate::telemetry::access_log::FLUSH_EVERY) => {}
            _ = worker.stop.wait() => {}
        }
        if let Some(log) = &worker.access_log {
            log.flush(&worker.counters);
        }
        if worker.stop.is_set() {
            return;
        }
    }
}

/// Closes every connection this worker owns before its runtime ends.
///
/// monoio drops only the tasks that are ready to run when a runtime ends; a
/// task waiting on I/O would outlive it with its socket open. So every task
/// that owns a socket watches `stop`, and the worker waits (briefly) until
/// they have all let go.
async fn close(worker: &Worker) {
    worker.stop.set();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while (worker.connections.get() > 0 || worker.pool.live_connections() > 0)
        && std::time::Instant::now() < deadline
    {
        monoio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    if let Some(log) = &worker.access_log {
        log.flush(&worker.counters);
    }
}

async fn wait_idle(worker: &Worker) {
    while worker.connections.get() > 0 {
        worker.idle.notified().await;
    }
}

async fn accept_loop(worker: &Rc<Worker>, listener: &monoio::net::TcpListener) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: log, pause briefly, go on serving.
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if worker.connections.get() >= worker.settings.max_connections_per_worker {
            tracing::debug!(%peer, "connection limit reached; closing new connection");
            continue;
        }
        worker.connections.set(worker.connections.get() + 1);
        crate::telemetry::metrics::add(&worker.counters.connections_accepted, 1);
        let w = worker.clone();
        monoio::spawn(async move {
            crate::downstream::connection::serve(w.clone(), tcp, peer).await;
            w.connections.set(w.connections.get() - 1);
            if w.connections.get() == 0 {
                w.idle.notify_all();
            }
        });
    }
}
