//! grpc-loadtest: a gRPC load generator that measures streaming latency,
//! and the thread-per-core echo upstream it measures against.
#![deny(missing_docs)]

pub mod demo;
pub mod grpc;
pub mod h2io;
pub mod hdrlog;
pub mod plot;
pub mod reflection;
pub mod report;
pub mod run;
pub mod schema;
pub mod serve;
