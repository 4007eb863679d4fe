//! Starting and stopping the proxy: [`ProxyBuilder`] and [`ProxyHandle`].
//!
//! `start` does everything that can fail before any traffic is taken: it
//! plans the cores, binds every worker's listener, starts each worker thread
//! and waits until each runtime is up. It returns the first problem as a
//! [`StartError`] and leaves nothing running behind it.
//!
//! [`ProxyHandle::reload`] applies a new config to a running proxy: routes,
//! clusters and TLS files, checked on the calling thread and swapped in by
//! every worker between calls (see [`snapshot`](crate::downstream::snapshot)).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Config, Settings};
use crate::control::worker::{self, Command};
use crate::downstream::snapshot::Plan;
use crate::routing::director::{ClusterId, CoreId, DirectorRecipe};
use crate::routing::routes::RouteTable;
use crate::runtime::cores::{self, CoreSelection};
use crate::runtime::driver::Driver;
use crate::runtime::mailbox::{self, Postbox};
use crate::telemetry::admin::{self, ConfigInfo};
use crate::telemetry::metrics::Merged;
use crate::transport::tls::{ClientTls, ServerTls};
use crate::upstream::cluster::ClusterPlan;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No listen address was given.
    #[error("no listen address: pass --listen or set `listen` in the config file")]
    NoListen,
    /// The core selection cannot be met.
    #[error("{0}")]
    Cores(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A worker could not start.
    #[error("worker {worker}: {message}")]
    Worker {
        /// The worker's index.
        worker: usize,
        /// What failed.
        message: String,
    },
    /// A route names something that does not exist.
    #[error("config: {0}")]
    Routes(String),
    /// A TLS certificate, key or CA file cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The access log cannot be opened.
    #[error("{0}")]
    AccessLog(String),
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReloadError(String);

/// Configures and starts a proxy.
#[derive(Clone, Debug)]
pub struct ProxyBuilder {
    listen: SocketAddr,
    cores: CoreSelection,
    driver: Driver,
    settings: Settings,
    clusters: Vec<ClusterPlan>,
    tls: Option<ServerTls>,
    access_log: Option<crate::config::AccessLogTarget>,
    source: String,
    digest: String,
}

impl ProxyBuilder {
    /// A proxy that will listen on `listen` (port 0 picks a free port).
    pub fn new(listen: SocketAddr) -> ProxyBuilder {
        ProxyBuilder {
            listen,
            cores: CoreSelection::All,
            driver: Driver::Auto,
            settings: Settings::default(),
            clusters: Vec::new(),
            tls: None,
            access_log: None,
            source: "ProxyBuilder".into(),
            digest: String::new(),
        }
    }

    /// A builder with the config's listener, cores, settings and clusters,
    /// and the declarative director of its routes.
    pub fn from_config(config: &Config) -> Result<(ProxyBuilder, RouteTable), StartError> {
        let listen = config.listen.ok_or(StartError::NoListen)?;
        let mut builder = ProxyBuilder::new(listen)
            .cores(config.cores.clone())
            .driver(config.driver)
            .settings(config.settings.clone());
        builder.clusters = cluster_plans(config).map_err(StartError::Tls)?;
        builder.tls = listener_tls(config).map_err(StartError::Tls)?;
        builder.access_log = config.access_log.clone();
        builder.source = config.source.clone();
        builder.digest = config.digest.clone();
        let table = route_table(config, &builder.clusters).map_err(StartError::Routes)?;
        Ok((builder, table))
    }

    /// Writes an access log line per call to `target` (default: none).
    pub fn access_log(mut self, target: crate::config::AccessLogTarget) -> ProxyBuilder {
        self.access_log = Some(target);
        self
    }

    /// Serves TLS on the listener (default: cleartext HTTP/2).
    pub fn tls(mut self, tls: ServerTls) -> ProxyBuilder {
        self.tls = Some(tls);
        self
    }

    /// Which cores run workers (default: all).
    pub fn cores(mut self, cores: CoreSelection) -> ProxyBuilder {
        self.cores = cores;
        self
    }

    /// Which monoio driver the workers use (default: io_uring if possible).
    pub fn driver(mut self, driver: Driver) -> ProxyBuilder {
        self.driver = driver;
        self
    }

    /// Limits and timeouts.
    pub fn settings(mut self, settings: Settings) -> ProxyBuilder {
        self.settings = settings;
        self
    }

    /// Adds a cluster of endpoints, balanced round robin, and returns its id
    /// for the director to route to.
    pub fn cluster(
        &mut self,
        name: &str,
        endpoints: impl IntoIterator<Item = SocketAddr>,
    ) -> ClusterId {
        self.cluster_with_tls(name, endpoints, None)
    }

    /// Adds a cluster whose endpoints are reached over TLS (when `tls` is
    /// given).
    pub fn cluster_with_tls(
        &mut self,
        name: &str,
        endpoints: impl IntoIterator<Item = SocketAddr>,
        tls: Option<ClientTls>,
    ) -> ClusterId {
        self.clusters
            .push(ClusterPlan::new(name, endpoints.into_iter().collect(), tls));
        ClusterId((self.clusters.len() - 1) as u32)
    }

    /// Binds, starts every worker with a director from `recipe`, and
    /// returns once all of them are serving.
    pub fn start<R: DirectorRecipe>(self, recipe: R) -> Result<ProxyHandle, StartError> {
        if let Some(c) = self.clusters.iter().find(|c| c.endpoints.is_empty()) {
            return Err(StartError::Routes(format!(
                "cluster {:?} has no endpoints",
                c.name
            )));
        }
        let cpus = self
            .cores
            .plan(&cores::available())
            .map_err(StartError::Cores)?;
        let (listeners, local_addr) = crate::runtime::listener::bind_all(self.listen, cpus.len())
            .map_err(|source| StartError::Bind {
            addr: self.listen,
            source,
        })?;
        let plan = Plan {
            routes: None,
            clusters: self.clusters,
            tls: self.tls,
            version: 1,
        };
        let access_log = self
            .access_log
            .as_ref()
            .map(crate::telemetry::access_log::Writer::start)
            .transpose()
            .map_err(|e| StartError::AccessLog(e.to_string()))?;
        let mut postboxes = Vec::with_capacity(cpus.len());
        let mut threads = Vec::with_capacity(cpus.len());
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        for (i, (cpu, listener)) in cpus.iter().zip(listeners).enumerate() {
            let (postbox, mailbox) = mailbox::channel().map_err(|e| StartError::Worker {
                worker: i,
                message: format!("cannot create control channel: {e}"),
            })?;
            let spec = worker::Spec {
                core: CoreId {
                    worker: i,
                    cpu: Some(*cpu),
                },
                driver: self.driver,
                listener,
                recipe: recipe.clone(),
                plan: plan.clone(),
                access_log: access_log
                    .as_ref()
                    .map(crate::telemetry::access_log::Writer::logger),
                settings: self.settings.clone(),
                mailbox,
                ready: ready_tx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("grpc-proxy-w{i}"))
                .spawn(move || worker::run(spec))
                .map_err(|e| StartError::Worker {
                    worker: i,
                    message: format!("cannot spawn thread: {e}"),
                })?;
            postboxes.push(postbox);
            threads.push(thread);
        }
        drop(ready_tx);
        let mut handle = ProxyHandle {
            local_addr,
            driver: self.driver,
            threads,
            control: Arc::new(Controller {
                postboxes,
                routes_reload: recipe.is_route_table(),
                cluster_names: plan.clusters.iter().map(|c| c.name.clone()).collect(),
                settings: self.settings.clone(),
                version: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                info: info_lock(ConfigInfo {
                    version: 1,
                    source: self.source,
                    digest: self.digest,
                    applied_at: std::time::SystemTime::now(),
                }),
            }),
            admin: None,
            access_log,
        };
        for i in 0..cpus.len() {
            match ready_rx.recv() {
                Ok(Ok(driver)) => handle.driver = driver,
                Ok(Err(message)) => return Err(StartError::Worker { worker: i, message }),
                Err(_) => {
                    return Err(StartError::Worker {
                        worker: i,
                        message: "exited during start-up".into(),
                    })
                }
            }
        }
        tracing::info!(listen = %local_addr, workers = cpus.len(), driver = %handle.driver, ?cpus, "grpc-proxy serving");
        Ok(handle)
    }
}

/// A running proxy. Dropping it stops the workers at once; call
/// [`shutdown`](ProxyHandle::shutdown) for a graceful drain.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: SocketAddr,
    driver: Driver,
    threads: Vec<JoinHandle<()>>,
    control: Arc<Controller>,
    admin: Option<crate::telemetry::admin::AdminServer>,
    access_log: Option<crate::telemetry::access_log::Writer>,
}

/// The control side of a running proxy, shareable with other threads (the
/// admin endpoint, signal handlers): reload, scrape, drain. Never on a
/// worker's per-call path.
#[derive(Debug)]
pub struct Controller {
    postboxes: Vec<Postbox<Command>>,
    /// Whether the director is the config's route table (replaced by a
    /// reload) rather than one written in Rust (kept).
    routes_reload: bool,
    /// The clusters at start, by `ClusterId`: a Rust director's ids must
    /// keep meaning the same clusters.
    cluster_names: Vec<String>,
    settings: Settings,
    version: AtomicU64,
    draining: AtomicBool,
    /// The control side only: reloads are rare and never on a worker.
    #[allow(clippy::disallowed_types)]
    info: std::sync::Mutex<ConfigInfo>,
}

impl ProxyHandle {
    /// The address the workers listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The driver the workers run (never `Auto`).
    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// The control side, to share with other threads.
    pub fn controller(&self) -> Arc<Controller> {
        self.control.clone()
    }

    /// Starts a graceful drain: stop accepting, GOAWAY every connection,
    /// let in-flight calls finish up to the drain timeout. Returns at once.
    pub fn drain(&self) {
        self.control.drain();
    }

    /// Cuts every connection now. Returns at once.
    pub fn stop(&self) {
        self.control.stop();
    }

    /// Waits until every worker has exited.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.admin.take();
        if let Some(log) = self.access_log.take() {
            log.finish();
        }
    }

    /// See [`Controller::reload`].
    pub fn reload(&self, config: &Config) -> Result<u64, ReloadError> {
        self.control.reload(config)
    }

    /// The version of the config the workers run: 1 at start, one more per
    /// reload.
    pub fn config_version(&self) -> u64 {
        self.control.version.load(Ordering::Relaxed)
    }

    /// Every worker's counters, merged.
    pub fn metrics(&self) -> Merged {
        self.control.metrics()
    }

    /// Serves the admin endpoint on `addr` (see [`crate::telemetry::admin`]),
    /// on its own thread; `reload` is what `POST /reload` runs (re-read the
    /// config and apply it), if anything. Returns the bound address.
    pub fn serve_admin(
        &mut self,
        addr: SocketAddr,
        reload: Option<crate::telemetry::admin::ReloadFn>,
    ) -> std::io::Result<SocketAddr> {
        let server =
            crate::telemetry::admin::AdminServer::start(addr, self.control.clone(), reload)?;
        let bound = server.local_addr();
        self.admin = Some(server);
        Ok(bound)
    }

    /// Drains, then waits.
    pub fn shutdown(self) {
        self.drain();
        self.wait();
    }
}

impl Controller {
    /// Starts a graceful drain (see [`ProxyHandle::drain`]); `/ready` says
    /// 503 from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.postboxes.iter().for_each(|p| p.send(Command::Drain));
    }

    /// Cuts every connection now.
    pub fn stop(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.postboxes.iter().for_each(|p| p.send(Command::Stop));
    }

    /// Whether the proxy is draining (or stopped).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The running config's version and source.
    pub fn config_info(&self) -> ConfigInfo {
        match self.info.lock() {
            Ok(info) => info.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Every worker's counters, merged; a worker that does not answer
    /// within a second (stuck or gone) is left out.
    pub fn metrics(&self) -> Merged {
        let (tx, rx) = crossbeam_channel::unbounded();
        for p in &self.postboxes {
            p.send(Command::Scrape(tx.clone()));
        }
        drop(tx);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let mut reports = Vec::with_capacity(self.postboxes.len());
        while reports.len() < self.postboxes.len() {
            match rx.recv_deadline(deadline) {
                Ok(report) => reports.push(report),
                Err(_) => break,
            }
        }
        Merged::new(reports)
    }

    /// Applies `config` to calls that start from now on: routes, clusters
    /// and TLS files (re-read). Connections and calls in flight are not
    /// touched; clusters whose endpoints and TLS settings did not change
    /// keep their upstream connections. Returns once every worker uses the
    /// new config, with its version (1 is the config at start).
    ///
    /// Everything is checked first; on error nothing changes. The listener,
    /// cores, driver, limits, admin endpoint and access log need a restart:
    /// changes to them are logged and ignored. A proxy started with a
    /// director written in Rust keeps it, and its clusters must keep their
    /// names and order.
    pub fn reload(&self, config: &Config) -> Result<u64, ReloadError> {
        let clusters = cluster_plans(config).map_err(ReloadError)?;
        let tls = listener_tls(config).map_err(ReloadError)?;
        let routes = if self.routes_reload {
            Some(route_table(config, &clusters).map_err(ReloadError)?)
        } else {
            let names: Vec<&String> = clusters.iter().map(|c| &c.name).collect();
            if names.len() != self.cluster_names.len()
                || names.iter().zip(&self.cluster_names).any(|(a, b)| *a != b)
            {
                return Err(ReloadError(format!(
                    "this proxy's director routes to clusters {:?} by position; a reload must keep them",
                    self.cluster_names
                )));
            }
            None
        };
        if config.settings != self.settings {
            tracing::warn!("changed limits or timeouts take effect only after a restart");
        }
        let version = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        let plan = Arc::new(Plan {
            routes,
            clusters,
            tls,
            version,
        });
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        for p in &self.postboxes {
            p.send(Command::Reload {
                plan: plan.clone(),
                done: done_tx.clone(),
            });
        }
        drop(done_tx);
        for _ in &self.postboxes {
            if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                return Err(ReloadError(format!(
                    "not every worker took config version {version} (exited or stuck)"
                )));
            }
        }
        let info = ConfigInfo {
            version,
            source: config.source.clone(),
            digest: config.digest.clone(),
            applied_at: std::time::SystemTime::now(),
        };
        match self.info.lock() {
            Ok(mut current) => *current = info,
            Err(poisoned) => *poisoned.into_inner() = info,
        }
        tracing::info!(version, source = %config.source, routes = self.routes_reload, "config reloaded");
        Ok(version)
    }
}

impl admin::Control for Controller {
    fn metrics(&self) -> Merged {
        Controller::metrics(self)
    }

    fn is_draining(&self) -> bool {
        Controller::is_draining(self)
    }

    fn config_info(&self) -> ConfigInfo {
        Controller::config_info(self)
    }
}

/// The lock around the running config's description: the control side
/// only (reloads, `/config`), never a worker.
#[allow(clippy::disallowed_types)]
fn info_lock(info: ConfigInfo) -> std::sync::Mutex<ConfigInfo> {
    std::sync::Mutex::new(info)
}

/// The config's clusters, with their TLS files read.
fn cluster_plans(config: &Config) -> Result<Vec<ClusterPlan>, String> {
    config
        .clusters
        .iter()
        .map(|c| {
            let tls = c
                .tls
                .as_ref()
                .map(|t| ClientTls::load(t, &t.server_name))
                .transpose()
                .map_err(|e| format!("cluster {:?}: {e}", c.name))?;
            Ok(ClusterPlan {
                name: c.name.clone(),
                endpoints: c.endpoints.clone(),
                tls,
                tls_config: c.tls.clone(),
                balance: c.balance,
                health_check: c.health_check.clone(),
                outlier: c.outlier.clone(),
            })
        })
        .collect()
}

fn listener_tls(config: &Config) -> Result<Option<ServerTls>, String> {
    config
        .tls
        .as_ref()
        .map(ServerTls::load)
        .transpose()
        .map_err(|e| format!("listener: {e}"))
}

fn route_table(config: &Config, clusters: &[ClusterPlan]) -> Result<RouteTable, String> {
    let ids: HashMap<String, ClusterId> = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.clone(), ClusterId(i as u32)))
        .collect();
    RouteTable::new(&config.routes, &ids)
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}
