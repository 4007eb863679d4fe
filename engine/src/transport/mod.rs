//! What sits between a socket and HTTP/2 on either leg: TLS with rustls,
//! driven on monoio's owned buffers, its certificates and identities, and
//! socket options.

pub mod owned_tls;
pub mod socket;
pub mod tls;
