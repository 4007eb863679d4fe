//! What the proxy tells its operators: per-core counters merged at scrape
//! time, the admin endpoint, and the access log.

pub mod access_log;
pub mod admin;
pub mod metrics;
