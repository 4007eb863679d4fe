//! What the proxy tells its operators: per-core counters merged at scrape
//! time, the admin endpoint, the access log, and warnings a peer can set
//! off, kept to one a second.

pub mod access_log;
pub mod admin;
pub mod metrics;
pub mod warnings;
