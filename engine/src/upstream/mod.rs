//! The upstream side of one core: HTTP/2 client connections per endpoint,
//! balancing, passive ejection and active health checks.
//!
//! In dependency order: `error` (why no stream could be opened),
//! `endpoint` (an address, its connections, back-off and ejection),
//! `cluster` (endpoints and balancing), `connect` (one new connection),
//! `pool` (a stream for each call), `health` (active checks).

pub mod cluster;
pub mod connect;
pub mod endpoint;
pub mod error;
pub(crate) mod health;
pub mod pool;
