//! The client side of one core: connections (TLS and HTTP/2 handshakes,
//! accepting streams, retiring and draining) and the calls on them, each
//! with the config snapshot it started under.

pub mod accept;
pub mod call;
pub(crate) mod connection;
pub mod server;
pub mod snapshot;
