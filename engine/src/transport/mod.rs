//! What sits between a socket and HTTP/2 on either leg: TLS with rustls
//! (through a poll adapter for h2, and driven on owned buffers for the own
//! frame path), HTTP/2 connection set-up, write batching, and the scan of
//! inbound frame headers that reads an upstream's GOAWAY.

pub mod goaway;
pub mod http2;
pub mod owned_tls;
pub mod socket;
pub mod tls;
pub mod write_batch;
