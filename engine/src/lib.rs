//! grpc-proxy: a thread-per-core gRPC pass-through proxy.
//!
//! Every worker core runs its own monoio runtime with its own SO_REUSEPORT
//! listener, director and upstream connections. For each call the [`Director`]
//! chooses a cluster (by method, authority, metadata, peer, TLS client
//! identity) or answers with a status; the relay then moves HTTP/2 frames
//! between client and upstream, on the engine's own HTTP/2 layer, without
//! decoding a single protobuf message.
//!
//! # Where things are
//!
//! Each folder is one part of the design and uses only the folders listed
//! above it (no cycles, between files or folders):
//!
//! 1. [`hpack`]: HPACK (RFC 7541), the header compression of HTTP/2.
//! 2. [`http2`]: HTTP/2 frames (RFC 9113): the engine's own frame layer.
//! 3. [`grpc`]: status codes and trailers-only answers, `grpc-timeout`,
//!    hop-by-hop headers.
//! 4. [`runtime`]: cores, monoio runtimes and drivers, the SO_REUSEPORT
//!    listeners, wake-up primitives, many timers on one task, a room that
//!    evicts its longest stay, the worker mailbox.
//! 5. [`config`]: the file's schema, parsing, units and validation.
//! 6. [`transport`]: TLS with rustls on monoio's owned buffers,
//!    certificates and identities, socket options, lingering close.
//! 7. [`telemetry`]: per-core metrics, the admin endpoint, the access log,
//!    warnings a peer can set off kept to one a second.
//! 8. [`routing`]: the [`Director`] trait, the declarative routes, verified
//!    bearer tokens (JWT) and header edits.
//! 9. [`upstream`]: endpoints, clusters and balancing, ejection, health
//!    checks, retry budgets.
//! 10. [`downstream`]: accepting client connections, what they share, and
//!     the config snapshot a connection and a call see.
//! 11. [`relay`]: calls on the engine's own HTTP/2 frame layer, both legs.
//! 12. [`control`]: [`ProxyBuilder`], [`ProxyHandle`] and the
//!     [`Controller`] (reload, scrape, drain), and the worker threads.
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

pub mod config;
pub mod control;
pub mod downstream;
pub mod grpc;
pub mod hpack;
pub mod http2;
pub mod relay;
pub mod routing;
pub mod runtime;
pub mod telemetry;
pub mod transport;
pub mod upstream;

pub use config::{Config, ConfigError, Settings};
pub use control::builder::{ProxyBuilder, StartError};
pub use control::controller::{Controller, ReloadError};
pub use control::handle::ProxyHandle;
pub use grpc::status::{Code, Status};
pub use routing::director::{Call, ClusterId, CoreId, Director, DirectorRecipe, Route};
pub use routing::edits::{Edits, HeaderEdits};
pub use routing::routes::RouteTable;
pub use runtime::cores::CoreSelection;
pub use runtime::driver::Driver;
pub use telemetry::admin::ConfigInfo;
pub use transport::tls::{ClientTls, PeerIdentity, ServerTls};
