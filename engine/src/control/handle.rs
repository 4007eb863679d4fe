//! A running proxy, as its starter holds it: addresses, the workers'
//! threads, the admin endpoint and the access log writer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::control::controller::{Controller, ReloadError};
use crate::runtime::driver::Driver;
use crate::telemetry::access_log::Writer;
use crate::telemetry::admin::{AdminServer, ReloadFn};
use crate::telemetry::metrics::Merged;

/// A running proxy. Dropping it stops the workers at once; call
/// [`shutdown`](ProxyHandle::shutdown) for a graceful drain.
#[derive(Debug)]
pub struct ProxyHandle {
    pub(super) local_addr: SocketAddr,
    pub(super) driver: Driver,
    pub(super) threads: Vec<JoinHandle<()>>,
    pub(super) control: Arc<Controller>,
    pub(super) admin: Option<AdminServer>,
    pub(super) access_log: Option<Writer>,
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
        self.control.version()
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
        reload: Option<ReloadFn>,
    ) -> std::io::Result<SocketAddr> {
        let server = AdminServer::start(addr, self.control.clone(), reload)?;
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
