//! The client side of one core: accepting connections, the server they
//! share (settings, latches, the connection count), the config snapshot
//! each connection and call starts under, and what every call is given.

pub mod accept;
pub mod context;
pub mod server;
pub mod snapshot;
