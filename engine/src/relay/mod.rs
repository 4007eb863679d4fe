//! The relay: gRPC calls carried on the engine's own HTTP/2 frame layer
//! ([`http2`](crate::http2)) on both legs, with no task, waker or buffer
//! per stream.
//!
//! - [`downstream`]: a client connection: TLS, read, route, forward.
//! - [`upstream`]: an upstream connection: connect, TLS, read, forward
//!   back, retry what the upstream refused unprocessed.
//! - [`worker`]: the worker's calls and upstream connections, deadlines.
//! - [`calls`]: a call's two streams and what waits between them.
//! - [`keeper`]: client connections' preface deadline, keepalive, idle
//!   and age timers.
//! - [`not_grpc`]: the proxy's own answer to a request that is not gRPC.
//! - [`probe`]: health checks, each on a connection of its own.
//! - [`wire`]: a connection's shared state, its reader and its writer.

pub mod calls;
pub mod downstream;
pub mod keeper;
pub mod not_grpc;
pub mod probe;
pub mod upstream;
pub mod wire;
pub mod worker;
