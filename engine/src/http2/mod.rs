//! The engine's own HTTP/2 frame layer (RFC 9113), on both legs.
//!
//! - [`frame`]: the frame header, parsing payloads into borrowed frames
//!   with each frame's own rules checked, settings, and frame writers.
//! - [`connection`]: one connection as a state machine without I/O, for
//!   either role: stream states, flow control, limits, events out.
//! - [`headers`]: a decoded header block and RFC 9113's field rules.
//! - [`kept`]: the last block of each kind, reused while the same bytes
//!   come again with the HPACK table unchanged.
//! - [`streams`]: the per-connection stream table.
//! - [`outbox`]: the frames waiting to be written, payloads uncopied.

pub mod connection;
pub mod frame;
pub mod headers;
pub mod kept;
pub mod outbox;
pub mod streams;
