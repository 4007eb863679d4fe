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
//! would leave the table out of step with the peer's.

use crate::hpack::decoder::{DecodeError, Decoded, Decoder};

use super::headers::{HeaderList, Kind};

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
    /// or finds it there already. A block that can be reused is kept by
    /// swapping buffers with `block` (which the caller clears before the
    /// next block), so keeping costs no copy.
    pub fn decode(
        &mut self,
        kind: Kind,
        block: &mut Vec<u8>,
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
        if decoder.table().changes() == changes && !decoded.over_limit {
            std::mem::swap(&mut self.raw, block);
            self.decoded = decoded;
            self.changes = changes;
            self.valid = true;
        }
        Ok(decoded)
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
        let mut raw = block(HEAD);
        let first = kept
            .decode(Kind::Request, &mut raw, &mut decoder, 1 << 16)
            .expect("decodes");
        assert!(kept.valid);
        let listed = fields(&kept.list);
        // The block's bytes moved into the kept block; the caller's buffer
        // is the spare one now.
        assert!(raw.is_empty());
        // A second block, byte for byte the same: the list as it was.
        let mut again = block(HEAD);
        let second = kept
            .decode(Kind::Request, &mut again, &mut decoder, 1 << 16)
            .expect("decodes");
        assert_eq!(first, second);
        assert_eq!(fields(&kept.list), listed);
        assert_eq!(again, block(HEAD), "a reused block keeps its buffer");
        // Another path: decoded afresh.
        let mut other = block(&[(b":method", b"POST"), (b":path", b"/pkg.Svc/Other")]);
        kept.decode(Kind::Request, &mut other, &mut decoder, 1 << 16)
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
            let mut raw = inserting.to_vec();
            kept.decode(Kind::Trailers, &mut raw, &mut decoder, 1 << 16)
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
            let mut raw = vec![0x40, 4, b'x', b'-', b'i', b'd', 1, value];
            kept.decode(Kind::Trailers, &mut raw, decoder, 1 << 16)
                .expect("decodes");
        };
        // The newest entry of the dynamic table: index 62.
        let newest = [0x80 | 62];
        insert(b'7', &mut kept, &mut decoder);
        let mut raw = newest.to_vec();
        kept.decode(Kind::Trailers, &mut raw, &mut decoder, 1 << 16)
            .expect("decodes");
        assert!(kept.valid);
        assert_eq!(fields(&kept.list), [(b"x-id".to_vec(), b"7".to_vec())]);
        // The peer inserts another entry in a block of the other kind: the
        // same one byte now means another field.
        let mut heads = KeptBlock::default();
        insert(b'8', &mut heads, &mut decoder);
        let mut raw = newest.to_vec();
        kept.decode(Kind::Trailers, &mut raw, &mut decoder, 1 << 16)
            .expect("decodes");
        assert_eq!(fields(&kept.list), [(b"x-id".to_vec(), b"8".to_vec())]);
    }

    #[test]
    fn a_kept_list_is_not_reused_for_a_block_of_another_kind() {
        let (mut decoder, mut kept) = fresh();
        let status: &[(&[u8], &[u8])] = &[(b":status", b"200")];
        let mut raw = block(status);
        kept.decode(Kind::Response, &mut raw, &mut decoder, 1 << 16)
            .expect("decodes");
        assert!(kept.list.finish().is_ok());
        // The same bytes as trailers: a pseudo-header there is malformed,
        // which only a fresh decoding finds.
        let mut raw = block(status);
        kept.decode(Kind::Trailers, &mut raw, &mut decoder, 1 << 16)
            .expect("decodes");
        assert!(kept.list.finish().is_err());
    }

    #[test]
    fn a_list_over_the_limit_is_not_kept() {
        let (mut decoder, mut kept) = fresh();
        let mut raw = block(HEAD);
        let decoded = kept
            .decode(Kind::Request, &mut raw, &mut decoder, 40)
            .expect("decodes");
        assert!(decoded.over_limit);
        assert!(!kept.valid);
    }
}
