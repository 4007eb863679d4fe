//! Starting the proxy: [`ProxyBuilder`].
//!
//! `start` does everything that can fail before any traffic is taken: it
//! plans the cores, binds every worker's listener, starts each worker thread
//! and waits until each runtime is up. It returns the first problem as a
//! [`StartError`] and leaves nothing running behind it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::{AccessLogTarget, Config, Settings};
use crate::control::controller::{Controller, Running, Signals};
use crate::control::handle::ProxyHandle;
use crate::control::plan::{cluster_plans, listener_tls, route_table};
use crate::control::worker;
use crate::downstream::snapshot::Plan;
use crate::routing::director::{ClusterId, CoreId, DirectorRecipe};
use crate::routing::routes::RouteTable;
use crate::runtime::cores::{self, CoreSelection};
use crate::runtime::driver::Driver;
use crate::runtime::fds;
use crate::runtime::listener::bind_all;
use crate::runtime::mailbox;
use crate::telemetry::access_log::Writer;
use crate::telemetry::admin::ConfigInfo;
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

/// Configures and starts a proxy.
#[derive(Clone, Debug)]
pub struct ProxyBuilder {
    listen: SocketAddr,
    cores: CoreSelection,
    driver: Driver,
    settings: Settings,
    clusters: Vec<ClusterPlan>,
    tls: Option<ServerTls>,
    access_log: Option<AccessLogTarget>,
    /// Each cluster's endpoints as written, and their first answers.
    names: Vec<Vec<(String, Vec<SocketAddr>)>>,
    hosts_file: Option<std::path::PathBuf>,
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
            names: Vec::new(),
            hosts_file: None,
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
        builder.names = config.clusters.iter().map(|c| c.names.clone()).collect();
        builder.hosts_file = config.hosts_file.clone();
        builder.source = config.source.clone();
        builder.digest = config.digest.clone();
        let table = route_table(config, &builder.clusters).map_err(StartError::Routes)?;
        Ok((builder, table))
    }

    /// Writes an access log line per call to `target` (default: none).
    pub fn access_log(mut self, target: AccessLogTarget) -> ProxyBuilder {
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

    /// Which monoio driver the workers use (default: `Auto`, which is the
    /// legacy epoll driver for the workers: it measured faster).
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
        let endpoints: Vec<SocketAddr> = endpoints.into_iter().collect();
        // Addresses, not names: never resolved again.
        self.names.push(
            endpoints
                .iter()
                .map(|a| (a.to_string(), vec![*a]))
                .collect(),
        );
        self.clusters.push(ClusterPlan::new(name, endpoints, tls));
        ClusterId((self.clusters.len() - 1) as u32)
    }

    /// Binds, starts every worker with a director from `recipe`, and
    /// returns once all of them are serving.
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
        let (listeners, local_addr) =
            bind_all(self.listen, cpus.len()).map_err(|source| StartError::Bind {
                addr: self.listen,
                source,
            })?;
        let mut settings = self.settings.clone();
        if let Some(nofile) = fds::limit() {
            let fit = fds::connections_per_worker(nofile, cpus.len());
            if fit < settings.max_connections_per_worker {
                tracing::info!(
                    nofile,
                    workers = cpus.len(),
                    per_worker = fit,
                    "client connections per worker limited by the file descriptor limit"
                );
                settings.max_connections_per_worker = fit;
            }
        }
        let access_log = self
            .access_log
            .as_ref()
            .map(Writer::start)
            .transpose()
            .map_err(|e| StartError::AccessLog(e.to_string()))?;
        let plan = Plan {
            routes: None,
            clusters: self.clusters,
            tls: self.tls,
            version: 1,
        };
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        let signals = Signals::default();
        let spec = |i: usize, cpu: usize, listener, mailbox| worker::Spec {
            core: CoreId {
                worker: i,
                cpu: Some(cpu),
            },
            driver: self.driver,
            listener,
            recipe: recipe.clone(),
            plan: plan.clone(),
            access_log: access_log.as_ref().map(Writer::logger),
            settings: settings.clone(),
            mailbox,
            connect_failed: signals.connect_failed.clone(),
            ready: ready_tx.clone(),
        };
        let mut postboxes = Vec::with_capacity(cpus.len());
        let mut threads = Vec::with_capacity(cpus.len());
        for (i, (&cpu, listener)) in cpus.iter().zip(listeners).enumerate() {
            let (postbox, mailbox) = mailbox::channel().map_err(|e| StartError::Worker {
                worker: i,
                message: format!("cannot create control channel: {e}"),
            })?;
            threads.push(spawn(
                i,
                spec(i, cpu, listener, mailbox),
                signals.lost.clone(),
            )?);
            postboxes.push(postbox);
        }
        drop(ready_tx);
        let controller = Controller::new(
            postboxes,
            recipe.is_route_table(),
            plan.clusters.iter().map(|c| c.name.clone()).collect(),
            self.settings,
            ConfigInfo {
                version: 1,
                source: self.source,
                digest: self.digest,
                applied_at: std::time::SystemTime::now(),
            },
            Running {
                plan: Arc::new(plan),
                names: self.names,
                hosts_file: self.hosts_file,
                failing: Default::default(),
            },
            signals,
        );
        let controller = Arc::new(controller);
        controller.watch_names();
        // From here on, dropping the handle stops whatever started.
        let mut handle = ProxyHandle {
            local_addr,
            driver: self.driver,
            threads,
            control: controller,
            admin: None,
            access_log,
        };
        handle.driver = wait_ready(&ready_rx, cpus.len())?;
        tracing::info!(listen = %local_addr, workers = cpus.len(), driver = %handle.driver, ?cpus, "grpc-proxy serving");
        Ok(handle)
    }
}

/// Waits until `workers` workers are up; the driver they run.
fn wait_ready(
    ready: &crossbeam_channel::Receiver<Result<Driver, String>>,
    workers: usize,
) -> Result<Driver, StartError> {
    let mut driver = Driver::Auto;
    for i in 0..workers {
        driver = match ready.recv() {
            Ok(Ok(driver)) => driver,
            Ok(Err(message)) => return Err(StartError::Worker { worker: i, message }),
            Err(_) => {
                return Err(StartError::Worker {
                    worker: i,
                    message: "exited during start-up".into(),
                })
            }
        };
    }
    Ok(driver)
}

/// Starts worker `i`'s thread; a panic that ends it counts in `lost`.
fn spawn<R: DirectorRecipe>(
    i: usize,
    spec: worker::Spec<R>,
    lost: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<JoinHandle<()>, StartError> {
    /// Counts the thread as lost if it unwinds.
    struct Lost(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Lost {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
    std::thread::Builder::new()
        .name(format!("grpc-proxy-w{i}"))
        .spawn(move || {
            let _lost = Lost(lost);
            worker::run(spec)
        })
        .map_err(|e| StartError::Worker {
            worker: i,
            message: format!("cannot spawn thread: {e}"),
        })
}
