//! What sits between a socket and HTTP/2 on either leg: TLS with rustls,
//! driven on monoio's owned buffers, its certificates and identities,
//! socket options, and the lingering close of a client connection.

pub mod linger;
pub mod owned_tls;
pub mod socket;
pub mod tls;
