//! The upstream side of one core: HTTP/2 client connections per endpoint,
//! balancing, passive ejection and active health checks.

pub(crate) mod health;
pub mod pool;
