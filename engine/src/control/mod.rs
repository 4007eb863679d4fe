//! Starting, reloading and stopping the proxy: the builder, the handle and
//! controller that other threads hold, and the worker threads.

pub mod proxy;
pub(crate) mod worker;
