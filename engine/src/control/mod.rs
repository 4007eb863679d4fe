//! Starting, reloading and stopping the proxy: the builder, the handle and
//! controller that other threads hold, the worker threads, and systemd's
//! notify protocol.
//!
//! In dependency order: `worker` (one core's thread), `plan` (a config's
//! files read for the workers), `controller` (drain, stop, scrape, reload,
//! liveness, endpoints resolved again), `discovery` (the thread that
//! resolves them), `handle` (what the starter holds), `builder`
//! (start-up), `systemd` (READY, RELOADING, STOPPING, the watchdog).

pub mod builder;
pub mod controller;
mod discovery;
pub mod handle;
mod plan;
pub mod systemd;
pub(crate) mod worker;
