//! The relay: gRPC calls carried on the engine's own HTTP/2 frame layer
//! ([`http2`](crate::http2)) on both legs, with no task, waker or buffer
//! per stream. It is chosen with `[http2] frame_path = "own"`; the default
//! is still the h2 path (`downstream` and `forward`).
//!
//! - [`downstream`]: a client connection: read, route, forward.
//! - [`upstream`]: an upstream connection: connect, read, forward back.
//! - [`worker`]: the worker's calls and upstream connections.
//! - [`calls`]: a call's two streams and what waits between them.
//! - [`wire`]: a connection's shared state and its writer.
//!
//! Not yet on this path (the h2 path has them): TLS on either leg,
//! retries, the proxy's own deadlines, the access log, keepalive PINGs,
//! health checks and ejection, idle and age limits of client connections.

pub mod calls;
pub mod downstream;
pub mod upstream;
pub mod wire;
pub mod worker;
