//! HPACK (RFC 7541): header compression for HTTP/2.
//!
//! - [`decoder`]: one per connection and direction; decodes whole header
//!   blocks into slices, with the header list size enforced as it goes.
//! - [`encoder`]: stateless; the static table and raw literals only.
//! - [`table`]: the static table and the decoder's dynamic table.
//! - [`huffman`] and [`primitive`]: the code and the integer and string
//!   representations beneath them.
//!
//! Nothing here panics on any input or allocates past what the block in
//! hand can justify; every malformed block is a typed error.

pub mod decoder;
pub mod encoder;
pub mod huffman;
pub mod primitive;
pub mod table;

pub use decoder::{DecodeError, Decoded, Decoder, Field};
pub use encoder::encode_field;
