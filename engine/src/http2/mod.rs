//! The engine's own HTTP/2 frame layer (RFC 9113), which is replacing the
//! `h2` crate on both legs.
//!
//! - [`frame`]: the frame header, parsing payloads into borrowed frames
//!   with each frame's own rules checked, settings, and frame writers.
pub mod frame;
