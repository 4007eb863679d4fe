//! Starting, reloading and stopping the proxy: the builder, the handle and
//! controller that other threads hold, and the worker threads.
//!
//! In dependency order: `worker` (one core's thread), `plan` (a config's
//! files read for the workers), `controller` (drain, stop, scrape, reload),
//! `handle` (what the starter holds), `builder` (start-up).

pub mod builder;
pub mod controller;
pub mod handle;
mod plan;
pub(crate) mod worker;
