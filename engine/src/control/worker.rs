//! A worker: one pinned thread, one monoio runtime, one listener, and this
//! core's director, relay and downstream server.
//!
//! The worker builds the core's parts from its [`Spec`] and wires them:
//! the [`Server`] (what connections and calls share, each call with a
//! narrow [`CallContext`]), the [`Relay`] (calls on the engine's HTTP/2
//! layer, both legs), the clusters' health checks, and the mailbox
//! through which the control side asks for a drain, a stop, a reload or a
//! scrape. Nothing on the per-call path crosses threads. The worker accepts
//! until it is told to drain or stop; when draining it closes its listener,
//! lets every connection GOAWAY and finish, and exits when the last one
//! closes or the drain timeout passes.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::downstream::accept::accept_with;
use crate::downstream::context::CallContext;
use crate::downstream::server::Server;
use crate::downstream::snapshot::{Plan, Snapshot};
use crate::relay::worker::Relay;
use crate::routing::director::{CoreId, DirectorRecipe};
use crate::runtime::driver::{block_on, Driver};
use crate::runtime::mailbox::Mailbox;
use crate::runtime::wake::Latch;
use crate::telemetry::access_log::{Logger, FLUSH_EVERY};
use crate::telemetry::metrics::{CoreCounters, CoreReport, RouteRegistry};
use crate::upstream::cluster::Cluster;
use crate::upstream::health;

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
    /// Answer at once: the worker's runtime is turning (the watchdog).
    Ping(crossbeam_channel::Sender<()>),
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
    /// Shared with the control side: set when an upstream connect fails.
    pub connect_failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
    let driver = match spec.driver {
        // Measured (README, "Drivers"): the relay spends less kernel time
        // per call on the legacy (epoll) driver, whose reads and writes are
        // plain syscalls on ready sockets.
        Driver::Auto => Driver::Legacy,
        driver => driver.resolve(),
    };
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
    let worker = Rc::new(Worker::new(
        spec.core,
        &spec.plan,
        spec.recipe,
        spec.settings,
        spec.access_log,
        spec.connect_failed,
    ));
    // The mailbox is polled here rather than spawned, so that it ends with
    // the worker (see `close`); a control side that is gone stops it.
    let w = worker.clone();
    let mailbox = async move {
        spec.mailbox.run(|command| w.on_command(command)).await;
        w.server.stop.set();
    };
    let mut mailbox = std::pin::pin!(mailbox);
    if worker.calls().access_log.is_some() {
        monoio::spawn(flush_access_log(
            worker.server.calls.clone(),
            worker.server.stop.clone(),
        ));
    }
    if spec.core.worker == 0 {
        // One trimmer is enough: malloc_trim covers every thread's arena.
        monoio::spawn(trim_heap(worker.server.stop.clone()));
    }
    let _ = spec.ready.send(Ok(driver));
    tracing::debug!(worker = spec.core.worker, cpu = ?spec.core.cpu, %driver, "worker started");

    let server = &worker.server;
    let relay = Relay::new(server.clone());
    *worker.relay.borrow_mut() = Some(relay.clone());
    let relay_tasks = relay.live();
    relay.spawn(relay.clone().run_deadlines());
    relay.spawn(relay.clone().run_keepers(driver == Driver::Legacy));
    relay.spawn(relay.clone().run_clock());
    relay.spawn(crate::relay::wire::Flusher::run(server.stop.clone()));
    let drainer = relay.clone();
    let drain = server.clone();
    relay.spawn(async move {
        monoio::select! {
            _ = drain.drain.wait() => drainer.drain(),
            _ = drain.stop.wait() => {}
        }
        drain.stop.wait().await;
        drainer.stop_all();
    });
    let accepting = accept_with(server, &listener, move |_, tcp, peer| {
        crate::relay::downstream::serve(relay.clone(), tcp, peer)
    });
    monoio::select! {
        _ = accepting => {}
        _ = server.drain.wait() => {}
        _ = server.stop.wait() => {}
        _ = &mut mailbox => {}
    }
    drop(listener);
    if !server.stop.is_set() {
        monoio::select! {
            _ = server.idle() => {}
            _ = server.stop.wait() => {}
            _ = &mut mailbox => {}
            _ = monoio::time::sleep(server.settings.drain_timeout) => {
                tracing::warn!(worker = spec.core.worker, connections = server.connections(),
                    "drain timeout: cutting remaining connections");
            }
        }
    }
    worker.close(relay_tasks).await;
}

/// Starts the health checks of the clusters in `next` that were not in
/// `previous`, each check on a connection of its own (see
/// [`probe`](crate::relay::probe)).
fn watch_health(
    settings: &Rc<Settings>,
    stop: &Rc<Latch>,
    next: &[Rc<Cluster>],
    previous: &[Rc<Cluster>],
) {
    let prober = crate::relay::probe::OwnProbe::new(settings.clone());
    health::watch_new(&prober, stop, next, previous);
}

/// The parts of one core, and what only the worker does with them.
struct Worker {
    core: CoreId,
    server: Rc<Server>,
    /// Set once serving: its upstream connections to addresses a new plan
    /// no longer has are retired.
    relay: std::cell::RefCell<Option<Rc<Relay>>>,
    /// This core's route statistics, by name, kept across reloads.
    routes: RouteRegistry,
}

impl Worker {
    /// Builds the core's server and first snapshot, and starts the health
    /// checks of its clusters.
    fn new<R: DirectorRecipe>(
        core: CoreId,
        plan: &Plan,
        recipe: R,
        settings: Settings,
        access_log: Option<Logger>,
        connect_failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Worker {
        let settings = Rc::new(settings);
        let stop = Rc::new(Latch::default());
        let routes = RouteRegistry::default();
        let first = Rc::new(Snapshot::first(plan, &recipe, core, &routes));
        watch_health(&settings, &stop, &first.clusters, &[]);
        let calls = Rc::new(CallContext::new(
            Rc::new(CoreCounters::default()),
            access_log,
            &settings,
            connect_failed,
        ));
        Worker {
            core,
            server: Rc::new(Server::new(first, settings, stop, calls)),
            relay: std::cell::RefCell::new(None),
            routes,
        }
    }

    fn calls(&self) -> &CallContext {
        &self.server.calls
    }

    fn on_command(&self, command: Command) {
        match command {
            Command::Drain => self.server.drain.set(),
            Command::Stop => self.server.stop.set(),
            Command::Reload { plan, done } => {
                self.reload(&plan);
                let _ = done.send(plan.version);
            }
            Command::Scrape(reply) => {
                let _ = reply.send(self.report());
            }
            Command::Ping(reply) => {
                let _ = reply.send(());
            }
        }
    }

    /// Swaps in the snapshot of `plan` for calls starting from now, and
    /// checks the health of the clusters it brings.
    fn reload(&self, plan: &Plan) {
        let previous = self.server.snapshot();
        let next = Rc::new(previous.next(plan, self.core, &self.routes));
        watch_health(
            &self.server.settings,
            &self.server.stop,
            &next.clusters,
            &previous.clusters,
        );
        let keep: std::collections::HashSet<std::net::SocketAddr> = next
            .clusters
            .iter()
            .flat_map(|c| c.endpoints().iter().map(|e| e.addr()))
            .collect();
        self.server.swap(next);
        drop(previous);
        if let Some(relay) = self.relay.borrow().as_ref() {
            relay.retire_upstreams(&keep);
        }
        self.routes.forget_unused();
        tracing::debug!(
            worker = self.core.worker,
            version = plan.version,
            "config reloaded"
        );
    }

    /// This core's counters, for a scrape.
    fn report(&self) -> CoreReport {
        let mut report = CoreReport::new(self.core.worker, &self.calls().counters, &self.routes);
        report.connections_active = self.server.connections() as u64;
        report.tls_handshakes = self.server.handshakes.occupied() as u64;
        report.tls_handshakes_evicted = self.server.handshakes.evicted();
        let budget = &self.calls().retry_budget;
        report.retry_held_bytes = budget.used() as u64;
        report.retry_holds_refused = budget.refused();
        report.clusters = self
            .server
            .snapshot()
            .clusters
            .iter()
            .map(|c| (c.name().to_owned(), c.report()))
            .collect();
        report
    }

    /// Closes every connection this worker owns before its runtime ends.
    ///
    /// monoio drops only the tasks that are ready to run when a runtime
    /// ends; a task waiting on I/O would outlive it with its socket open. So
    /// every task that owns a socket watches `stop`, and the worker waits
    /// (briefly) until they have all let go: client connections and the
    /// relay's tasks (`relay_tasks`), whose wakers sit in values they own
    /// and would otherwise keep the worker's state, its access log sender
    /// included, alive for good.
    async fn close(&self, relay_tasks: Rc<std::cell::Cell<usize>>) {
        self.server.stop.set();
        let calls = self.calls();
        let deadline = Instant::now() + Duration::from_secs(1);
        while (self.server.connections() > 0 || relay_tasks.get() > 0) && Instant::now() < deadline
        {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some(log) = &calls.access_log {
            log.flush(&calls.counters);
        }
    }
}

/// Returns freed memory to the system now and then, until `stop`.
async fn trim_heap(stop: Rc<Latch>) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(crate::runtime::heap::TRIM_EVERY) => {}
            _ = stop.wait() => return,
        }
        let started = Instant::now();
        crate::runtime::heap::trim();
        tracing::trace!(took = ?started.elapsed(), "heap trimmed");
    }
}

/// Hands the access log's buffer to its writer now and then, so that a
/// quiet core's lines do not wait for a full batch.
async fn flush_access_log(calls: Rc<CallContext>, stop: Rc<Latch>) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(FLUSH_EVERY) => {}
            _ = stop.wait() => {}
        }
        if let Some(log) = &calls.access_log {
            log.flush(&calls.counters);
        }
        if stop.is_set() {
            return;
        }
    }
}
