//! Starting and stopping the proxy: [`ProxyBuilder`] and [`ProxyHandle`].
//!
//! `start` does everything that can fail before any traffic is taken: it
//! plans the cores, binds every worker's listener, starts each worker thread
//! and waits until each runtime is up. It returns the first problem as a
//! [`StartError`] and leaves nothing running behind it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use crate::config::{Config, Settings};
use crate::control::{self, Command, Postbox};
use crate::cores::{self, CoreSelection};
use crate::director::{ClusterId, CoreId, DirectorRecipe};
use crate::routes::RouteTable;
use crate::runtime::Driver;
use crate::worker;

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
}

/// Configures and starts a proxy.
#[derive(Clone, Debug)]
pub struct ProxyBuilder {
    listen: SocketAddr,
    cores: CoreSelection,
    driver: Driver,
    settings: Settings,
    clusters: Vec<(String, Vec<SocketAddr>)>,
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
        let ids: HashMap<String, ClusterId> = config
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    builder.cluster(&c.name, c.endpoints.iter().copied()),
                )
            })
            .collect();
        let table = RouteTable::new(&config.routes, &ids).map_err(StartError::Routes)?;
        Ok((builder, table))
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
        self.clusters
            .push((name.to_owned(), endpoints.into_iter().collect()));
        ClusterId((self.clusters.len() - 1) as u32)
    }

    /// Binds, starts every worker with a director from `recipe`, and
    /// returns once all of them are serving.
    pub fn start<R: DirectorRecipe>(self, recipe: R) -> Result<ProxyHandle, StartError> {
        if let Some((name, _)) = self.clusters.iter().find(|(_, e)| e.is_empty()) {
            return Err(StartError::Routes(format!(
                "cluster {name:?} has no endpoints"
            )));
        }
        let cpus = self
            .cores
            .plan(&cores::available())
            .map_err(StartError::Cores)?;
        let (listeners, local_addr) =
            crate::listener::bind_all(self.listen, cpus.len()).map_err(|source| {
                StartError::Bind {
                    addr: self.listen,
                    source,
                }
            })?;
        let endpoints: Vec<Vec<SocketAddr>> =
            self.clusters.iter().map(|(_, e)| e.clone()).collect();
        let mut handle = ProxyHandle {
            local_addr,
            driver: self.driver,
            postboxes: Vec::with_capacity(cpus.len()),
            threads: Vec::with_capacity(cpus.len()),
        };
        let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
        for (i, (cpu, listener)) in cpus.iter().zip(listeners).enumerate() {
            let (postbox, mailbox) = control::channel().map_err(|e| StartError::Worker {
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
                clusters: endpoints.clone(),
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
            handle.postboxes.push(postbox);
            handle.threads.push(thread);
        }
        drop(ready_tx);
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
    postboxes: Vec<Postbox>,
    threads: Vec<JoinHandle<()>>,
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

    /// Starts a graceful drain: stop accepting, GOAWAY every connection,
    /// let in-flight calls finish up to the drain timeout. Returns at once.
    pub fn drain(&self) {
        self.postboxes.iter().for_each(|p| p.send(Command::Drain));
    }

    /// Cuts every connection now. Returns at once.
    pub fn stop(&self) {
        self.postboxes.iter().for_each(|p| p.send(Command::Stop));
    }

    /// Waits until every worker has exited.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Drains, then waits.
    pub fn shutdown(self) {
        self.drain();
        self.wait();
    }
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
