//! The gRPC vocabulary the proxy needs without decoding a message: status
//! codes and the trailers-only answers the proxy makes, the `grpc-timeout`
//! header, and which request headers cross a hop. Depends on nothing else
//! in the engine.

pub mod headers;
pub mod status;
pub mod timeout;
