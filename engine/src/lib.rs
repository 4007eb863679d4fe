//! grpc-proxy: a thread-per-core gRPC pass-through proxy.
//!
//! Every worker core runs its own monoio runtime with its own SO_REUSEPORT
//! listener, director and upstream pool. For each call the [`Director`]
//! chooses a cluster (by method, authority, metadata, peer, TLS client
//! identity) or answers with a status; the splice then moves HTTP/2 frames
//! between client and upstream without decoding a single protobuf message.
//!
//! Where things are: [`listener`], `worker` and [`runtime`] (the cores),
//! `server` and `call` (downstream connections and calls), [`director`] and
//! [`routes`], [`pool`] (upstream connections, balancing, ejection),
//! `health` (active checks), [`splice`] (frames, flow control, retries),
//! [`tls`], [`snapshot`] (the config a call sees; reloads), [`metrics`] and
//! [`admin`], [`access_log`], [`control`] (the control side to workers).
//!
//! # A director in Rust
//!
//! ```no_run
//! use grpc_proxy::{Call, Code, CoreId, ProxyBuilder, Route, Status};
//!
//! let mut builder = ProxyBuilder::new("127.0.0.1:50051".parse().unwrap());
//! let users = builder.cluster("users", ["127.0.0.1:50052".parse().unwrap()]);
//! let billing = builder.cluster("billing", ["127.0.0.1:50053".parse().unwrap()]);
//!
//! // The recipe runs once per core; the director it returns stays there.
//! let proxy = builder
//!     .start(move |_core: CoreId| {
//!         move |call: &Call<'_>| {
//!             if call.header("authorization") != Some("Bearer let-me-in") {
//!                 return Route::Reject(Status::new(Code::Unauthenticated, "missing token"));
//!             }
//!             match call.service() {
//!                 "example.Users" => Route::to(users),
//!                 "example.Billing" => Route::to(billing),
//!                 _ => Route::Reject(Status::new(Code::Unimplemented, "unknown service")),
//!             }
//!         }
//!     })
//!     .expect("proxy starts");
//! proxy.wait();
//! ```
#![deny(missing_docs)]

pub mod access_log;
pub mod admin;
mod call;
pub mod config;
pub mod control;
pub mod cores;
pub mod director;
pub mod goaway;
pub mod headers;
mod health;
pub mod listener;
pub mod metrics;
pub mod pool;
mod proxy;
pub mod routes;
pub mod runtime;
mod server;
pub mod signal;
pub mod snapshot;
pub mod splice;
pub mod status;
pub mod timeout;
pub mod tls;
mod worker;
pub mod write_batch;

pub use config::{Config, ConfigError, Settings};
pub use cores::CoreSelection;
pub use director::{Call, ClusterId, CoreId, Director, DirectorRecipe, Route};
pub use proxy::{ConfigInfo, Controller, ProxyBuilder, ProxyHandle, ReloadError, StartError};
pub use routes::RouteTable;
pub use runtime::Driver;
pub use status::{Code, Status};
pub use tls::{ClientTls, PeerIdentity, ServerTls};
