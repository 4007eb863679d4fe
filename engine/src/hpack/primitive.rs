//! HPACK's integers and string literals (RFC 7541, section 5).
//!
//! Decoding reads from a header block at a cursor and never reads past its
//! end. Integers are capped at 2^32 - 1, far above any length or index a
//! block can hold, so a run of continuation bytes cannot overflow.

use bytes::BufMut;

use super::huffman::{self, HuffmanError};

/// A representation that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrimitiveError {
    /// The block ends inside it.
    #[error("header block ends inside a representation")]
    Truncated,
    /// An integer above 2^32 - 1.
    #[error("integer overflows")]
    Overflow,
    /// A Huffman-coded string that RFC 7541 forbids.
    #[error(transparent)]
    Huffman(#[from] HuffmanError),
}

/// Reads an integer with an `n`-bit prefix at `*pos`, moving past it.
pub fn decode_integer(n: u8, src: &[u8], pos: &mut usize) -> Result<usize, PrimitiveError> {
    let mask = ((1u16 << n) - 1) as u8;
    let first = *src.get(*pos).ok_or(PrimitiveError::Truncated)? & mask;
    *pos += 1;
    if first < mask {
        return Ok(usize::from(first));
    }
    let mut value = u64::from(mask);
    for shift in (0..).step_by(7) {
        let byte = *src.get(*pos).ok_or(PrimitiveError::Truncated)?;
        *pos += 1;
        value += u64::from(byte & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(PrimitiveError::Overflow);
        }
        if byte & 0x80 == 0 {
            break;
        }
        if shift >= 28 {
            return Err(PrimitiveError::Overflow);
        }
    }
    Ok(value as usize)
}

/// Writes `value` with an `n`-bit prefix; `flags` fills the first byte's
/// bits above the prefix.
#[inline]
pub fn encode_integer(n: u8, flags: u8, value: usize, dst: &mut impl BufMut) {
    let mask = (1usize << n) - 1;
    if value < mask {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        dst.put_u8(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    dst.put_u8(rest as u8);
}

/// Where a decoded string is: raw in the block, or decoded into scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// `block[start..end]`, as sent.
    Block(usize, usize),
    /// `scratch[start..end]`, Huffman-decoded.
    Scratch(usize, usize),
}

/// Reads a string literal at `*pos`, decoding Huffman into `scratch`.
pub fn decode_string(
    src: &[u8],
    pos: &mut usize,
    scratch: &mut Vec<u8>,
) -> Result<Text, PrimitiveError> {
    let huffman = src.get(*pos).ok_or(PrimitiveError::Truncated)? & 0x80 != 0;
    let len = decode_integer(7, src, pos)?;
    let start = *pos;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= src.len())
        .ok_or(PrimitiveError::Truncated)?;
    *pos = end;
    if !huffman {
        return Ok(Text::Block(start, end));
    }
    let from = scratch.len();
    huffman::decode(&src[start..end], scratch)?;
    Ok(Text::Scratch(from, scratch.len()))
}

/// Writes `text` as a raw (not Huffman-coded) string literal.
#[inline]
pub fn encode_raw_string(text: &[u8], dst: &mut impl BufMut) {
    encode_integer(7, 0, text.len(), dst);
    dst.put_slice(text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_7541_appendix_c1_integers() {
        let mut out = Vec::new();
        encode_integer(5, 0, 10, &mut out);
        assert_eq!(out, [0b01010]);
        out.clear();
        encode_integer(5, 0, 1337, &mut out);
        assert_eq!(out, [0b11111, 0b1001_1010, 0b0000_1010]);
        out.clear();
        encode_integer(8, 0, 42, &mut out);
        assert_eq!(out, [42]);
        let mut pos = 0;
        assert_eq!(
            decode_integer(5, &[0b111_11111, 0x9a, 0x0a], &mut pos),
            Ok(1337)
        );
        assert_eq!(pos, 3);
    }

    #[test]
    fn long_and_short_integers_fail_cleanly() {
        let mut pos = 0;
        assert_eq!(
            decode_integer(5, &[0x1f, 0x80], &mut pos),
            Err(PrimitiveError::Truncated)
        );
        let mut pos = 0;
        let big = [0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(
            decode_integer(5, &big, &mut pos),
            Err(PrimitiveError::Overflow)
        );
        let mut pos = 0;
        let endless = [0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert_eq!(
            decode_integer(5, &endless, &mut pos),
            Err(PrimitiveError::Overflow)
        );
        let mut pos = 0;
        let mut scratch = Vec::new();
        assert_eq!(
            decode_string(&[0x05, b'a'], &mut pos, &mut scratch),
            Err(PrimitiveError::Truncated)
        );
    }

    proptest! {
        #[test]
        fn integers_round_trip(n in 1u8..=8, value in 0usize..=u32::MAX as usize, flags in any::<u8>()) {
            let flags = flags & !(((1u16 << n) - 1) as u8);
            let mut out = Vec::new();
            encode_integer(n, flags, value, &mut out);
            prop_assert_eq!(out[0] & flags, flags);
            let mut pos = 0;
            prop_assert_eq!(decode_integer(n, &out, &mut pos), Ok(value));
            prop_assert_eq!(pos, out.len());
        }
    }
}
