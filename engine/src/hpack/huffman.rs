//! HPACK's Huffman code (RFC 7541, section 5.2 and appendix B).
//!
//! Decoding reads the bits through a 64-bit window and looks the next
//! twelve up in a table that gives the one or two symbols whose codes fill
//! them (a token's characters have codes of five to eight bits, so most
//! lookups yield two). The rare longer codes are read as the canonical
//! code they are (RFC 7541's code is canonical: codes of one length are
//! consecutive, in symbol order). The tables are built once per process
//! from the code table below, the only source of truth; they cost 17 KiB,
//! shared by every connection.
//!
//! A string fails to decode if it contains the EOS symbol, or if its
//! padding is longer than seven bits or not a prefix of EOS (all ones), as
//! section 5.2 requires.

use std::sync::OnceLock;

use bytes::BufMut;

/// The code of each symbol (256 octets, then EOS): its bits, right-aligned,
/// and its length.
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),
    (0x7fffd8, 23),
    (0xfffffe2, 28),
    (0xfffffe3, 28),
    (0xfffffe4, 28),
    (0xfffffe5, 28),
    (0xfffffe6, 28),
    (0xfffffe7, 28),
    (0xfffffe8, 28),
    (0xffffea, 24),
    (0x3ffffffc, 30),
    (0xfffffe9, 28),
    (0xfffffea, 28),
    (0x3ffffffd, 30),
    (0xfffffeb, 28),
    (0xfffffec, 28),
    (0xfffffed, 28),
    (0xfffffee, 28),
    (0xfffffef, 28),
    (0xffffff0, 28),
    (0xffffff1, 28),
    (0xffffff2, 28),
    (0x3ffffffe, 30),
    (0xffffff3, 28),
    (0xffffff4, 28),
    (0xffffff5, 28),
    (0xffffff6, 28),
    (0xffffff7, 28),
    (0xffffff8, 28),
    (0xffffff9, 28),
    (0xffffffa, 28),
    (0xffffffb, 28),
    (0x14, 6),
    (0x3f8, 10),
    (0x3f9, 10),
    (0xffa, 12),
    (0x1ff9, 13),
    (0x15, 6),
    (0xf8, 8),
    (0x7fa, 11),
    (0x3fa, 10),
    (0x3fb, 10),
    (0xf9, 8),
    (0x7fb, 11),
    (0xfa, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),
    (0x1a, 6),
    (0x1b, 6),
    (0x1c, 6),
    (0x1d, 6),
    (0x1e, 6),
    (0x1f, 6),
    (0x5c, 7),
    (0xfb, 8),
    (0x7ffc, 15),
    (0x20, 6),
    (0xffb, 12),
    (0x3fc, 10),
    (0x1ffa, 13),
    (0x21, 6),
    (0x5d, 7),
    (0x5e, 7),
    (0x5f, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6a, 7),
    (0x6b, 7),
    (0x6c, 7),
    (0x6d, 7),
    (0x6e, 7),
    (0x6f, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),
    (0xfc, 8),
    (0x73, 7),
    (0xfd, 8),
    (0x1ffb, 13),
    (0x7fff0, 19),
    (0x1ffc, 13),
    (0x3ffc, 14),
    (0x22, 6),
    (0x7ffd, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),
    (0x28, 6),
    (0x29, 6),
    (0x2a, 6),
    (0x7, 5),
    (0x2b, 6),
    (0x76, 7),
    (0x2c, 6),
    (0x8, 5),
    (0x9, 5),
    (0x2d, 6),
    (0x77, 7),
    (0x78, 7),
    (0x79, 7),
    (0x7a, 7),
    (0x7b, 7),
    (0x7ffe, 15),
    (0x7fc, 11),
    (0x3ffd, 14),
    (0x1ffd, 13),
    (0xffffffc, 28),
    (0xfffe6, 20),
    (0x3fffd2, 22),
    (0xfffe7, 20),
    (0xfffe8, 20),
    (0x3fffd3, 22),
    (0x3fffd4, 22),
    (0x3fffd5, 22),
    (0x7fffd9, 23),
    (0x3fffd6, 22),
    (0x7fffda, 23),
    (0x7fffdb, 23),
    (0x7fffdc, 23),
    (0x7fffdd, 23),
    (0x7fffde, 23),
    (0xffffeb, 24),
    (0x7fffdf, 23),
    (0xffffec, 24),
    (0xffffed, 24),
    (0x3fffd7, 22),
    (0x7fffe0, 23),
    (0xffffee, 24),
    (0x7fffe1, 23),
    (0x7fffe2, 23),
    (0x7fffe3, 23),
    (0x7fffe4, 23),
    (0x1fffdc, 21),
    (0x3fffd8, 22),
    (0x7fffe5, 23),
    (0x3fffd9, 22),
    (0x7fffe6, 23),
    (0x7fffe7, 23),
    (0xffffef, 24),
    (0x3fffda, 22),
    (0x1fffdd, 21),
    (0xfffe9, 20),
    (0x3fffdb, 22),
    (0x3fffdc, 22),
    (0x7fffe8, 23),
    (0x7fffe9, 23),
    (0x1fffde, 21),
    (0x7fffea, 23),
    (0x3fffdd, 22),
    (0x3fffde, 22),
    (0xfffff0, 24),
    (0x1fffdf, 21),
    (0x3fffdf, 22),
    (0x7fffeb, 23),
    (0x7fffec, 23),
    (0x1fffe0, 21),
    (0x1fffe1, 21),
    (0x3fffe0, 22),
    (0x1fffe2, 21),
    (0x7fffed, 23),
    (0x3fffe1, 22),
    (0x7fffee, 23),
    (0x7fffef, 23),
    (0xfffea, 20),
    (0x3fffe2, 22),
    (0x3fffe3, 22),
    (0x3fffe4, 22),
    (0x7ffff0, 23),
    (0x3fffe5, 22),
    (0x3fffe6, 22),
    (0x7ffff1, 23),
    (0x3ffffe0, 26),
    (0x3ffffe1, 26),
    (0xfffeb, 20),
    (0x7fff1, 19),
    (0x3fffe7, 22),
    (0x7ffff2, 23),
    (0x3fffe8, 22),
    (0x1ffffec, 25),
    (0x3ffffe2, 26),
    (0x3ffffe3, 26),
    (0x3ffffe4, 26),
    (0x7ffffde, 27),
    (0x7ffffdf, 27),
    (0x3ffffe5, 26),
    (0xfffff1, 24),
    (0x1ffffed, 25),
    (0x7fff2, 19),
    (0x1fffe3, 21),
    (0x3ffffe6, 26),
    (0x7ffffe0, 27),
    (0x7ffffe1, 27),
    (0x3ffffe7, 26),
    (0x7ffffe2, 27),
    (0xfffff2, 24),
    (0x1fffe4, 21),
    (0x1fffe5, 21),
    (0x3ffffe8, 26),
    (0x3ffffe9, 26),
    (0xffffffd, 28),
    (0x7ffffe3, 27),
    (0x7ffffe4, 27),
    (0x7ffffe5, 27),
    (0xfffec, 20),
    (0xfffff3, 24),
    (0xfffed, 20),
    (0x1fffe6, 21),
    (0x3fffe9, 22),
    (0x1fffe7, 21),
    (0x1fffe8, 21),
    (0x7ffff3, 23),
    (0x3fffea, 22),
    (0x3fffeb, 22),
    (0x1ffffee, 25),
    (0x1ffffef, 25),
    (0xfffff4, 24),
    (0xfffff5, 24),
    (0x3ffffea, 26),
    (0x7ffff4, 23),
    (0x3ffffeb, 26),
    (0x7ffffe6, 27),
    (0x3ffffec, 26),
    (0x3ffffed, 26),
    (0x7ffffe7, 27),
    (0x7ffffe8, 27),
    (0x7ffffe9, 27),
    (0x7ffffea, 27),
    (0x7ffffeb, 27),
    (0xffffffe, 28),
    (0x7ffffec, 27),
    (0x7ffffed, 27),
    (0x7ffffee, 27),
    (0x7ffffef, 27),
    (0x7fffff0, 27),
    (0x3ffffee, 26),
    (0x3fffffff, 30),
];

const EOS: usize = 256;

/// A string whose Huffman coding RFC 7541 forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid Huffman-coded string")]
pub struct HuffmanError;

/// Bits the fast table is indexed by.
const FAST: u32 = 12;

/// What the next [`FAST`] bits hold: one or two whole codes (`count` is
/// 0 when they begin with a longer code).
#[derive(Clone, Copy, Default)]
struct Fast {
    symbols: [u8; 2],
    /// Whole codes in the bits: 0, 1 or 2.
    count: u8,
    /// Their bits.
    used: u8,
}

struct Tables {
    fast: [Fast; 1 << FAST],
    /// For each length, the first code of that length (canonical order),
    /// how many there are, and where their symbols start in `sorted`.
    first_code: [u32; 31],
    count: [u16; 31],
    offset: [u16; 31],
    /// Symbols by (length, value): the canonical order.
    sorted: [u16; 257],
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Box<Tables>> = OnceLock::new();
    TABLES.get_or_init(build)
}

impl Tables {
    /// The code at the top of `window` of at most `max` bits: its symbol
    /// and length, or `None` if no code of `max` bits or fewer is there.
    fn code(&self, window: u64, max: u32) -> Option<(usize, u32)> {
        for len in 5..=max.min(30) {
            let code = (window >> (64 - len)) as u32;
            let first = self.first_code[len as usize];
            if code >= first && code - first < u32::from(self.count[len as usize]) {
                let at = usize::from(self.offset[len as usize]) + (code - first) as usize;
                return Some((usize::from(self.sorted[at]), len));
            }
        }
        None
    }
}

fn build() -> Box<Tables> {
    let mut t = Box::new(Tables {
        fast: [Fast::default(); 1 << FAST],
        first_code: [0; 31],
        count: [0; 31],
        offset: [0; 31],
        sorted: [0; 257],
    });
    let mut order: Vec<usize> = (0..CODES.len()).collect();
    order.sort_by_key(|&s| (CODES[s].1, s));
    let mut code = 0u32;
    let mut last_len = 0u8;
    for (i, &symbol) in order.iter().enumerate() {
        let (bits, len) = CODES[symbol];
        code <<= len - last_len;
        if len != last_len {
            t.first_code[usize::from(len)] = code;
            t.offset[usize::from(len)] = i as u16;
            last_len = len;
        }
        assert_eq!(code, bits, "RFC 7541's Huffman code is canonical");
        t.count[usize::from(len)] += 1;
        t.sorted[i] = symbol as u16;
        code += 1;
    }
    for prefix in 0..1u64 << FAST {
        let window = prefix << (64 - FAST);
        let Some((a, first)) = t.code(window, FAST) else {
            continue;
        };
        let mut entry = Fast {
            symbols: [a as u8, 0],
            count: 1,
            used: first as u8,
        };
        if let Some((b, second)) = t.code(window << first, FAST - first) {
            entry.symbols[1] = b as u8;
            entry.count = 2;
            entry.used = (first + second) as u8;
        }
        t.fast[prefix as usize] = entry;
    }
    t
}

/// Appends the decoding of `src` to `dst`.
///
/// `dst` grows by at most `src.len() * 8 / 5` bytes; on error it may hold
/// part of the string.
pub fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let t = tables();
    dst.reserve(src.len() * 8 / 5);
    let mut bits = Bits {
        window: 0,
        have: 0,
        at: 0,
    };
    let mut out = Out {
        buf: [0; 128],
        len: 0,
    };
    // While eight bytes can be read at once, the window is kept at 56 bits
    // or more without a branch (F. Giesen's "bit reader, variant 4"), which
    // leaves room for two fast lookups, or one and a code of 30 bits.
    while let Some(word) = src.get(bits.at..bits.at + 8) {
        let word = u64::from_be_bytes(<[u8; 8]>::try_from(word).unwrap_or_default());
        bits.window |= word >> bits.have;
        bits.at += ((63 - bits.have) >> 3) as usize;
        bits.have |= 56;
        for _ in 0..2 {
            bits.step(t, &mut out, dst)?;
        }
    }
    // The last bytes, one at a time; then the end, which is padding.
    loop {
        while bits.have <= 56 {
            let Some(&byte) = src.get(bits.at) else {
                break;
            };
            // Bits already read ahead from this byte are the same bits.
            bits.window |= u64::from(byte) << (56 - bits.have);
            bits.have += 8;
            bits.at += 1;
        }
        if bits.have == 0 {
            break;
        }
        if !bits.step(t, &mut out, dst)? {
            // No whole code in what is left: it must be padding, at most
            // seven bits, all ones.
            let have = bits.have;
            if have <= 7 && bits.window >> (64 - have) == (1 << have) - 1 {
                break;
            }
            return Err(HuffmanError);
        }
    }
    dst.extend_from_slice(&out.buf[..out.len]);
    Ok(())
}

/// The bits of a string being decoded: `have` of them at the top of
/// `window` (anything below them is the string's next bits or zeros), the
/// next unread byte at `at`.
struct Bits {
    window: u64,
    have: u32,
    at: usize,
}

/// Decoded bytes, gathered here so that a lookup's one or two symbols are
/// stored without a branch, and appended in batches.
struct Out {
    buf: [u8; 128],
    len: usize,
}

impl Bits {
    /// Decodes the next one or two codes; `false` if no whole code is
    /// left in the bits at hand.
    #[inline(always)]
    fn step(&mut self, t: &Tables, out: &mut Out, dst: &mut Vec<u8>) -> Result<bool, HuffmanError> {
        if out.len > out.buf.len() - 2 {
            dst.extend_from_slice(&out.buf[..out.len]);
            out.len = 0;
        }
        let fast = t.fast[(self.window >> (64 - FAST)) as usize];
        if fast.count != 0 && u32::from(fast.used) <= self.have {
            out.buf[out.len] = fast.symbols[0];
            out.buf[out.len + 1] = fast.symbols[1];
            out.len += usize::from(fast.count);
            self.window <<= fast.used;
            self.have -= u32::from(fast.used);
            return Ok(true);
        }
        match t.code(self.window, self.have) {
            Some((EOS, _)) => Err(HuffmanError),
            Some((symbol, len)) => {
                out.buf[out.len] = symbol as u8;
                out.len += 1;
                self.window <<= len;
                self.have -= len;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The length of `src` once Huffman-coded.
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src
        .iter()
        .map(|&b| usize::from(CODES[usize::from(b)].1))
        .sum();
    bits.div_ceil(8)
}

/// Appends the Huffman coding of `src` to `dst`, padded with ones.
pub fn encode(src: &[u8], dst: &mut impl BufMut) {
    let mut bits: u64 = 0;
    let mut pending = 0u32;
    for &byte in src {
        let (code, len) = CODES[usize::from(byte)];
        bits = (bits << len) | u64::from(code);
        pending += u32::from(len);
        while pending >= 8 {
            pending -= 8;
            dst.put_u8((bits >> pending) as u8);
        }
    }
    if pending > 0 {
        let pad = 8 - pending;
        dst.put_u8(((bits << pad) as u8) | ((1u8 << pad) - 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded(src: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(src, &mut out).map(|()| out)
    }

    /// The slowest correct decoder: one bit at a time, against the code
    /// table itself.
    fn reference(src: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let (mut out, mut code, mut len) = (Vec::new(), 0u32, 0u8);
        for i in 0..src.len() * 8 {
            code = (code << 1) | u32::from((src[i / 8] >> (7 - i % 8)) & 1);
            len += 1;
            if let Some(symbol) = CODES.iter().position(|&c| c == (code, len)) {
                if symbol == EOS {
                    return Err(HuffmanError);
                }
                out.push(symbol as u8);
                (code, len) = (0, 0);
            } else if len == 30 {
                return Err(HuffmanError);
            }
        }
        if len <= 7 && code == (1 << len) - 1 {
            Ok(out)
        } else {
            Err(HuffmanError)
        }
    }

    #[test]
    fn rfc_7541_appendix_c4_strings() {
        let cases: [(&str, &[u8]); 4] = [
            (
                "www.example.com",
                &[
                    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
                ],
            ),
            ("no-cache", &[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]),
            (
                "custom-key",
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f],
            ),
            (
                "custom-value",
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf],
            ),
        ];
        for (text, coded) in cases {
            assert_eq!(decoded(coded).as_deref(), Ok(text.as_bytes()), "{text}");
            let mut out = Vec::new();
            encode(text.as_bytes(), &mut out);
            assert_eq!(out, coded, "{text}");
            assert_eq!(encoded_len(text.as_bytes()), coded.len());
        }
    }

    #[test]
    fn padding_must_be_short_and_all_ones() {
        // '0' is 00000; three bits of ones pad it to a byte.
        assert_eq!(decoded(&[0b0000_0111]).as_deref(), Ok(&b"0"[..]));
        // Padding with a zero bit is not a prefix of EOS.
        assert_eq!(decoded(&[0b0000_0110]), Err(HuffmanError));
        // A whole byte of ones is eight bits of padding.
        assert_eq!(decoded(&[0b0000_0111, 0xff]), Err(HuffmanError));
        assert_eq!(decoded(&[0xff]), Err(HuffmanError));
        assert_eq!(decoded(&[]).as_deref(), Ok(&b""[..]));
    }

    #[test]
    fn eos_in_a_string_is_an_error() {
        // EOS is thirty ones; pad to 32 bits with ones.
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError));
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut coded = Vec::new();
            encode(&bytes, &mut coded);
            prop_assert_eq!(coded.len(), encoded_len(&bytes));
            prop_assert_eq!(decoded(&coded), Ok(bytes));
        }

        #[test]
        fn any_bytes_decode_as_the_bit_by_bit_reference_does(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decoded(&bytes), reference(&bytes));
        }

        #[test]
        fn strings_of_rare_bytes_decode_as_the_reference_does(bytes in proptest::collection::vec(prop_oneof![0u8..32, 127u8..=255, any::<u8>()], 0..64)) {
            let mut coded = Vec::new();
            encode(&bytes, &mut coded);
            prop_assert_eq!(decoded(&coded), reference(&coded));
            // Cut short, or with a byte changed: still the same answer.
            if let Some(last) = coded.len().checked_sub(1) {
                prop_assert_eq!(decoded(&coded[..last]), reference(&coded[..last]));
                coded[last / 2] ^= 0x5a;
                prop_assert_eq!(decoded(&coded), reference(&coded));
            }
        }

        #[test]
        fn any_bytes_decode_or_fail_within_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            let _ = decode(&bytes, &mut out);
            prop_assert!(out.len() <= bytes.len() * 8 / 5);
        }
    }
}
