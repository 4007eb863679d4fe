//! A decoded header block kept with the bytes it came from.
//!
//! Decoding a block depends only on its bytes and the HPACK table, so a
//! block that left the table as it found it decodes to the same list the
//! next time the same bytes come with the table unchanged. That is the
//! common case on a busy connection: once a peer has indexed its fields,
//! each request of a method, each response head and each `grpc-status: 0`
//! is the same few bytes again (h2-based clients never index `:path`, so
//! a request's block still carries the path as a Huffman literal, the
//! same literal every time). The list is then reused as it is: no
//! decoding, no Huffman, no checks, no copies.
//!
//! A block that changed the table (an insert, a size update) is never
//! kept: decoding it again would change the table again, so skipping it
//! would leave the table out of step with the peer's. Nor is a block
//! above [`KEEP_AT_MOST`]: what a connection keeps stays small whatever
//! its peer sends.

use crate::hpack::decoder::{DecodeError, Decoded, Decoder};

use super::headers::{HeaderList, Kind};

/// The largest block kept (a gRPC head with a bearer token is about
/// 1 KiB).
pub const KEEP_AT_MOST: usize = 4096;

/// The last block of one kind on a connection, and its list.
#[derive(Debug, Default)]
pub struct KeptBlock {
    /// The block's bytes, while `valid`.
    raw: Vec<u8>,
    /// What it decoded to.
    pub list: HeaderList,
    decoded: Decoded,
    /// The table's change count when the block was decoded (it did not
    /// move during the decoding).
    changes: u64,
    /// `raw`, `list` and `decoded` belong together, and may be reused.
    valid: bool,
}

impl KeptBlock {
    /// Decodes `block` into [`list`](Self::list) for a block of `kind`,
    /// or finds it there already.
    pub fn decode(
        &mut self,
        kind: Kind,
        block: &[u8],
        decoder: &mut Decoder,
        max_list_size: usize,
    ) -> Result<Decoded, DecodeError> {
        let changes = decoder.table().changes();
        if self.valid && self.changes == changes && self.list.kind() == kind && self.raw == *block {
            return Ok(self.decoded);
        }
        self.valid = false;
        self.list.reset(kind);
        let list = &mut self.list;
        let decoded = decoder.decode(block, max_list_size, |f| {
            list.push(f.name, f.value, f.sensitive)
        })?;
        if decoder.table().changes() == changes
            && !decoded.over_limit
            && block.len() <= KEEP_AT_MOST
        {
            self.raw.clear();
            self.raw.extend_from_slice(block);
            self.decoded = decoded;
            self.changes = changes;
            self.valid = true;
        }
        Ok(decoded)
    }
}

impl KeptBlock {
    /// The room its list's fields and its bytes hold (its list's encoding
    /// grows with them).
    #[inline]
    pub fn room(&self) -> usize {
        self.list.room() + self.raw.capacity()
    }

    /// Lets go of its list, and the list's encoding, if it holds more
    /// than `most` bytes of room: a block of a few bytes may decode to a
    /// list as large as the header list limit, and the connection would
    /// keep that room for good.
    pub fn shrink(&mut self, most: usize) {
        if self.room() > most {
            *self = KeptBlock::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::encoder::encode_field;

    fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            encode_field(name, value, false, &mut out);
        }
        out
    }

    fn fresh() -> (Decoder, KeptBlock) {
        (Decoder::new(4096), KeptBlock::default())
    }

    fn fields(list: &HeaderList) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.fields()
            .map(|(n, v, _)| (n.to_vec(), v.to_vec()))
            .collect()
    }

    const HEAD: &[(&[u8], &[u8])] = &[
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/pkg.Svc/Call"),
        (b"te", b"trailers"),
    ];

    #[test]
    fn the_same_block_on_an_unchanged_table_is_not_decoded_again() {
        let (mut decoder, mut kept) = fresh();
        let raw = block(HEAD);
        let first = kept
            .decode(Kind::Request, &raw, &mut decoder, 1 << 16)
            .expect("decodes");
        assert!(kept.valid);
        let listed = fields(&kept.list);
        // A second block, byte for byte the same: the list as it was.
        let again = block(HEAD);
        let second = kept
            .decode(Kind::Request, &again, &mut decoder, 1 << 16)
            .expect("decodes");
        assert_eq!(first, second);
        assert_eq!(fields(&kept.list), listed);
        // Another path: decoded afresh.
        let other = block(&[(b":method", b"POST"), (b":path", b"/pkg.Svc/Other")]);
        kept.decode(Kind::Request, &other, &mut decoder, 1 << 16)
            .expect("decodes");
        assert_eq!(
            kept.list.pseudo(super::super::headers::pseudo::PATH),
            Some(&b"/pkg.Svc/Other"[..])
        );
    }

    #[test]
    fn a_block_that_changes_the_table_is_decoded_every_time() {
        // Literal with incremental indexing, new name: "x-id: 7".
        let inserting = [0x40, 4, b'x', b'-', b'i', b'd', 1, b'7'];
        let (mut decoder, mut kept) = fresh();
        for round in 1..=3 {
            kept.decode(Kind::Trailers, &inserting, &mut decoder, 1 << 16)
                .expect("decodes");
            assert!(!kept.valid);
            // Each decoding inserted again, as the peer's encoder did.
            assert_eq!(decoder.table().len(), round);
        }
    }

    #[test]
    fn the_same_bytes_after_the_table_changed_are_decoded_again() {
        let (mut decoder, mut kept) = fresh();
        let insert = |value: u8, kept: &mut KeptBlock, decoder: &mut Decoder| {
            let raw = [0x40, 4, b'x', b'-', b'i', b'd', 1, value];
            kept.decode(Kind::Trailers, &raw, decoder, 1 << 16)
                .expect("decodes");
        };
        // The newest entry of the dynamic table: index 62.
        let newest = [0x80 | 62];
        insert(b'7', &mut kept, &mut decoder);
        kept.decode(Kind::Trailers, &newest, &mut decoder, 1 << 16)
            .expect("decodes");
        assert!(kept.valid);
        assert_eq!(fields(&kept.list), [(b"x-id".to_vec(), b"7".to_vec())]);
        // The peer inserts another entry in a block of the other kind: the
        // same one byte now means another field.
        let mut heads = KeptBlock::default();
        insert(b'8', &mut heads, &mut decoder);
        kept.decode(Kind::Trailers, &newest, &mut decoder, 1 << 16)
            .expect("decodes");
        assert_eq!(fields(&kept.list), [(b"x-id".to_vec(), b"8".to_vec())]);
    }

    #[test]
    fn a_kept_list_is_not_reused_for_a_block_of_another_kind() {
        let (mut decoder, mut kept) = fresh();
        let status: &[(&[u8], &[u8])] = &[(b":status", b"200")];
        let raw = block(status);
        kept.decode(Kind::Response, &raw, &mut decoder, 1 << 16)
            .expect("decodes");
        assert!(kept.list.finish().is_ok());
        // The same bytes as trailers: a pseudo-header there is malformed,
        // which only a fresh decoding finds.
        let raw = block(status);
        kept.decode(Kind::Trailers, &raw, &mut decoder, 1 << 16)
            .expect("decodes");
        assert!(kept.list.finish().is_err());
    }

    #[test]
    fn a_large_block_is_not_kept() {
        let (mut decoder, mut kept) = fresh();
        let long = vec![b'a'; KEEP_AT_MOST];
        let raw = block(&[(b"x-long", &long)]);
        kept.decode(Kind::Trailers, &raw, &mut decoder, 1 << 16)
            .expect("decodes");
        assert!(!kept.valid);
        assert_eq!(kept.raw.capacity(), 0);
    }

    #[test]
    fn a_list_over_the_limit_is_not_kept() {
        let (mut decoder, mut kept) = fresh();
        let raw = block(HEAD);
        let decoded = kept
            .decode(Kind::Request, &raw, &mut decoder, 40)
            .expect("decodes");
        assert!(decoded.over_limit);
        assert!(!kept.valid);
    }
}
