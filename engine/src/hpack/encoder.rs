//! The HPACK encoder: the static table and raw literals only.
//!
//! A proxy re-encodes every header block it forwards. Indexing into the
//! peer's dynamic table would save bytes on the wire but costs a table
//! search and an insert per field, and Huffman coding costs a table lookup
//! per byte; on loopback and LAN links neither pays for itself. Since this
//! encoder never inserts, the peer's dynamic table stays empty whatever
//! size it allows, and there is no encoder state at all.
//!
//! Fields that arrived as "never indexed" leave as "never indexed"
//! (RFC 7541, section 7.1.3).

use bytes::BufMut;

use super::primitive::{encode_integer, encode_raw_string};
use super::table::find_static;

/// Appends one field's representation to `dst`.
pub fn encode_field(name: &[u8], value: &[u8], sensitive: bool, dst: &mut impl BufMut) {
    let never = if sensitive { 0x10 } else { 0x00 };
    match find_static(name, value) {
        Some((index, true)) if !sensitive => encode_integer(7, 0x80, usize::from(index), dst),
        Some((index, _)) => {
            encode_integer(4, never, usize::from(index), dst);
            encode_raw_string(value, dst);
        }
        None => {
            dst.put_u8(never);
            encode_raw_string(name, dst);
            encode_raw_string(value, dst);
        }
    }
}

/// The most bytes [`encode_field`] writes for a field.
pub fn max_encoded_len(name: &[u8], value: &[u8]) -> usize {
    // A first byte, and each length's integer: at most 1 + 5 bytes.
    1 + 6 + name.len() + 6 + value.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::decoder::Decoder;
    use proptest::prelude::*;

    #[test]
    fn a_grpc_request_head_is_small() {
        let mut out = Vec::new();
        encode_field(b":method", b"POST", false, &mut out);
        encode_field(b":scheme", b"http", false, &mut out);
        assert_eq!(out, [0x83, 0x86]);
        out.clear();
        encode_field(b":path", b"/pkg.Svc/Call", false, &mut out);
        assert_eq!(out[0], 0x04);
        assert_eq!(out.len(), 2 + 13);
        out.clear();
        encode_field(b"te", b"trailers", false, &mut out);
        assert_eq!(out, b"\x00\x02te\x08trailers");
        out.clear();
        encode_field(b"authorization", b"secret", true, &mut out);
        assert_eq!(out, b"\x1f\x08\x06secret");
    }

    proptest! {
        #[test]
        fn round_trips_through_the_decoder(
            fields in proptest::collection::vec(
                (
                    prop_oneof![
                        Just(b":method".to_vec()),
                        Just(b":path".to_vec()),
                        Just(b":status".to_vec()),
                        Just(b"www-authenticate".to_vec()),
                        Just(b"content-type".to_vec()),
                        proptest::collection::vec(any::<u8>(), 0..40),
                    ],
                    prop_oneof![
                        Just(b"GET".to_vec()),
                        Just(b"200".to_vec()),
                        Just(b"/".to_vec()),
                        proptest::collection::vec(any::<u8>(), 0..300),
                    ],
                    any::<bool>(),
                ),
                0..20,
            ),
        ) {
            let mut block = Vec::new();
            let mut bound = 0;
            for (name, value, sensitive) in &fields {
                encode_field(name, value, *sensitive, &mut block);
                bound += max_encoded_len(name, value);
            }
            prop_assert!(block.len() <= bound);
            let mut decoder = Decoder::new(4096);
            let mut out = Vec::new();
            decoder
                .decode(&block, usize::MAX, |f| out.push((f.name.to_vec(), f.value.to_vec(), f.sensitive)))
                .expect("our own block decodes");
            prop_assert_eq!(out, fields);
            prop_assert!(decoder.table().is_empty());
        }
    }
}
