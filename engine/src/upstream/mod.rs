//! The upstream side of one core: endpoints, clusters and balancing,
//! passive ejection and active health checks, and what requests held for
//! a retry may pin.
//!
//! In dependency order: `error` (why a call found no upstream),
//! `endpoint` (an address, back-off and ejection), `cluster` (endpoints
//! and balancing), `health` (active checks), `retry_budget`.

pub mod cluster;
pub mod endpoint;
pub mod error;
pub(crate) mod health;
pub mod retry_budget;
