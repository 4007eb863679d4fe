//! The HPACK decoder (RFC 7541, sections 3 and 6): one per connection and
//! direction, fed whole header blocks (HEADERS plus its CONTINUATIONs).
//!
//! Fields are handed to a callback as slices: of the block itself for raw
//! strings, of the static or dynamic table for indexed ones, and of a
//! scratch buffer the decoder keeps for Huffman-coded ones. Nothing is
//! allocated per field; the scratch buffer grows to the largest single
//! field seen and stays.
//!
//! A block is always decoded to its end, even past the header list size
//! limit, because the dynamic table must see every insert or later blocks
//! would decode wrongly; past the limit the callback is simply no longer
//! called and [`Decoded::over_limit`] says so. Any malformed representation
//! is a [`DecodeError`], which RFC 9113 makes a connection error of type
//! COMPRESSION_ERROR: the table can no longer be trusted.

use super::primitive::{decode_integer, decode_string, PrimitiveError, Text};
use super::table::{entry_size, DynamicTable, STATIC};

/// A header block HPACK cannot decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A malformed integer or string.
    #[error(transparent)]
    Primitive(#[from] PrimitiveError),
    /// Index 0, or one past the end of the tables.
    #[error("no table entry at index {0}")]
    Index(usize),
    /// A table size above what our settings allow.
    #[error("dynamic table size update to {size} above the limit of {limit}")]
    TableSize {
        /// The size asked for.
        size: usize,
        /// Our SETTINGS_HEADER_TABLE_SIZE.
        limit: usize,
    },
    /// A table size update after the block's first field (section 4.2).
    #[error("dynamic table size update after a header field")]
    LateTableSizeUpdate,
}

/// One decoded header field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name, as sent (HPACK does not check case or characters).
    pub name: &'a [u8],
    /// The value.
    pub value: &'a [u8],
    /// Sent as "never indexed" (section 7.1.3): an intermediary must
    /// forward it the same way.
    pub sensitive: bool,
}

/// What a whole block came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decoded {
    /// The header list size (RFC 9113, section 6.5.2): each field's name
    /// and value lengths plus 32.
    pub list_size: usize,
    /// The list outgrew the limit; fields after that were not handed out.
    pub over_limit: bool,
}

/// Where a field's name comes from.
#[derive(Clone, Copy)]
enum Name {
    Static(&'static [u8]),
    Table(usize),
    Text(Text),
}

/// A name that outlives an insert into the dynamic table.
#[derive(Clone, Copy)]
enum Kept {
    Static(&'static [u8]),
    Text(Text),
}

/// The decoding state of one direction of one connection.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// Our SETTINGS_HEADER_TABLE_SIZE: the largest table the peer may use.
    limit: usize,
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder whose peer may use a table of up to `limit` bytes (what we
    /// announce as SETTINGS_HEADER_TABLE_SIZE; 4096 unless we say
    /// otherwise).
    pub fn new(limit: usize) -> Self {
        Self {
            table: DynamicTable::new(limit),
            limit,
            scratch: Vec::new(),
        }
    }

    /// Frees the scratch buffer (see the module's notes); the dynamic
    /// table, which is the connection's state, stays.
    pub fn release_scratch(&mut self) {
        self.scratch = Vec::new();
    }

    /// Frees the scratch buffer if it holds more than `most` bytes of
    /// room (a long Huffman string grew it).
    #[inline]
    pub fn shrink_scratch(&mut self, most: usize) {
        if self.scratch.capacity() > most {
            self.release_scratch();
        }
    }

    /// The dynamic table (for tests and metrics).
    pub fn table(&self) -> &DynamicTable {
        &self.table
    }

    /// Decodes a whole header block, handing each field to `each` while the
    /// list stays within `max_list_size`.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list_size: usize,
        mut each: impl FnMut(Field<'_>),
    ) -> Result<Decoded, DecodeError> {
        let Self {
            table,
            limit,
            scratch,
        } = self;
        let mut done = Decoded::default();
        let mut emit = |field: Field<'_>| {
            done.list_size = done
                .list_size
                .saturating_add(entry_size(field.name, field.value));
            if done.list_size > max_list_size {
                done.over_limit = true;
            }
            if !done.over_limit {
                each(field);
            }
        };
        let mut pos = 0;
        let mut fields = false;
        while let Some(&first) = block.get(pos) {
            scratch.clear();
            if first & 0x80 != 0 {
                // Indexed field (6.1).
                let index = decode_integer(7, block, &mut pos)?;
                let (name, value) = lookup(table, index)?;
                emit(Field {
                    name,
                    value,
                    sensitive: false,
                });
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing (6.2.1).
                let name = match read_name(6, block, &mut pos, table, scratch)? {
                    Name::Static(name) => Kept::Static(name),
                    Name::Text(t) => Kept::Text(t),
                    Name::Table(index) => {
                        // The insert below may evict the entry the name
                        // is in: copy it out first.
                        let from = scratch.len();
                        scratch.extend_from_slice(lookup(table, index)?.0);
                        Kept::Text(Text::Scratch(from, scratch.len()))
                    }
                };
                let value = decode_string(block, &mut pos, scratch)?;
                let name = match name {
                    Kept::Static(name) => name,
                    Kept::Text(t) => text(t, block, scratch),
                };
                let value = text(value, block, scratch);
                emit(Field {
                    name,
                    value,
                    sensitive: false,
                });
                table.insert(name, value);
            } else if first & 0x20 != 0 {
                // Dynamic table size update (6.3).
                if fields {
                    return Err(DecodeError::LateTableSizeUpdate);
                }
                let size = decode_integer(5, block, &mut pos)?;
                if size > *limit {
                    return Err(DecodeError::TableSize {
                        size,
                        limit: *limit,
                    });
                }
                table.set_max_size(size);
                continue;
            } else {
                // Literal without indexing (6.2.2) or never indexed (6.2.3).
                let sensitive = first & 0x10 != 0;
                let name = read_name(4, block, &mut pos, table, scratch)?;
                let value = decode_string(block, &mut pos, scratch)?;
                emit(Field {
                    name: resolve_name(name, block, scratch, table),
                    value: text(value, block, scratch),
                    sensitive,
                });
            }
            fields = true;
        }
        Ok(done)
    }
}

fn lookup(table: &DynamicTable, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    match index {
        0 => Err(DecodeError::Index(0)),
        1..=61 => Ok(STATIC[index - 1]),
        _ => table.get(index - 62).ok_or(DecodeError::Index(index)),
    }
}

/// Reads a literal's name: an index with an `n`-bit prefix, or (index 0) a
/// string that follows.
fn read_name(
    n: u8,
    block: &[u8],
    pos: &mut usize,
    table: &DynamicTable,
    scratch: &mut Vec<u8>,
) -> Result<Name, DecodeError> {
    match decode_integer(n, block, pos)? {
        0 => Ok(Name::Text(decode_string(block, pos, scratch)?)),
        index @ 1..=61 => Ok(Name::Static(STATIC[index - 1].0)),
        index => {
            lookup(table, index)?;
            Ok(Name::Table(index))
        }
    }
}

fn resolve_name<'a>(
    name: Name,
    block: &'a [u8],
    scratch: &'a [u8],
    table: &'a DynamicTable,
) -> &'a [u8] {
    match name {
        Name::Static(name) => name,
        Name::Text(t) => text(t, block, scratch),
        // Checked by read_name; an empty name cannot happen.
        Name::Table(index) => lookup(table, index).map_or(&[], |(name, _)| name),
    }
}

fn text<'a>(t: Text, block: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
    match t {
        Text::Block(start, end) => &block[start..end],
        Text::Scratch(start, end) => &scratch[start..end],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| {
                u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16).expect("hex")
            })
            .collect()
    }

    fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        decoder
            .decode(block, usize::MAX, |f| {
                out.push((
                    String::from_utf8_lossy(f.name).into_owned(),
                    String::from_utf8_lossy(f.value).into_owned(),
                ));
            })
            .expect("a valid block");
        out
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    fn table_of(decoder: &Decoder) -> Vec<(String, String)> {
        (0..decoder.table().len())
            .map(|i| {
                let (n, v) = decoder.table().get(i).expect("entry");
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn rfc_7541_c2_single_representations() {
        let mut d = Decoder::new(4096);
        let c21 = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        assert_eq!(
            decode_all(&mut d, &c21),
            pairs(&[("custom-key", "custom-header")])
        );
        assert_eq!(d.table().size(), 55);
        let mut d = Decoder::new(4096);
        let c22 = hex("040c 2f73 616d 706c 652f 7061 7468");
        assert_eq!(
            decode_all(&mut d, &c22),
            pairs(&[(":path", "/sample/path")])
        );
        assert!(d.table().is_empty());
        let c23 = hex("1008 7061 7373 776f 7264 0673 6563 7265 74");
        let mut sensitive = false;
        d.decode(&c23, usize::MAX, |f| sensitive = f.sensitive)
            .expect("valid");
        assert!(sensitive);
        assert!(d.table().is_empty());
        assert_eq!(decode_all(&mut d, &hex("82")), pairs(&[(":method", "GET")]));
    }

    /// C.3 (raw) and C.4 (Huffman): three requests on one connection.
    #[test]
    fn rfc_7541_c3_c4_requests() {
        let first = pairs(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ]);
        let mut second = first.clone();
        second.push(("cache-control".into(), "no-cache".into()));
        let third = pairs(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]);
        let raw = [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ];
        let huffman = [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ];
        for blocks in [raw, huffman] {
            let mut d = Decoder::new(4096);
            assert_eq!(decode_all(&mut d, &hex(blocks[0])), first);
            assert_eq!(d.table().size(), 57);
            assert_eq!(decode_all(&mut d, &hex(blocks[1])), second);
            assert_eq!(d.table().size(), 110);
            assert_eq!(decode_all(&mut d, &hex(blocks[2])), third);
            assert_eq!(d.table().size(), 164);
            assert_eq!(
                table_of(&d),
                pairs(&[
                    ("custom-key", "custom-value"),
                    ("cache-control", "no-cache"),
                    (":authority", "www.example.com"),
                ])
            );
        }
    }

    /// C.5 (raw) and C.6 (Huffman): three responses with a 256-byte table,
    /// so entries are evicted.
    #[test]
    fn rfc_7541_c5_c6_responses_with_eviction() {
        let raw = [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
             3d31",
        ];
        let huffman = [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ];
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
        let location = "https://www.example.com";
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        for blocks in [raw, huffman] {
            let mut d = Decoder::new(256);
            assert_eq!(
                decode_all(&mut d, &hex(blocks[0])),
                pairs(&[
                    (":status", "302"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", location),
                ])
            );
            assert_eq!(d.table().size(), 222);
            assert_eq!(
                decode_all(&mut d, &hex(blocks[1])),
                pairs(&[
                    (":status", "307"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", location),
                ])
            );
            assert_eq!(d.table().size(), 222);
            assert_eq!(
                decode_all(&mut d, &hex(blocks[2])),
                pairs(&[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", date2),
                    ("location", location),
                    ("content-encoding", "gzip"),
                    ("set-cookie", cookie),
                ])
            );
            assert_eq!(d.table().size(), 215);
            assert_eq!(
                table_of(&d),
                pairs(&[
                    ("set-cookie", cookie),
                    ("content-encoding", "gzip"),
                    ("date", date2),
                ])
            );
        }
    }

    #[test]
    fn bad_indices_and_size_updates_are_errors() {
        let mut d = Decoder::new(4096);
        let mut check = |block: &[u8]| d.decode(block, usize::MAX, |_| {});
        assert_eq!(check(&[0x80]), Err(DecodeError::Index(0)));
        assert_eq!(check(&[0xbe]), Err(DecodeError::Index(62)));
        assert_eq!(check(&[0x7e, 0x00]), Err(DecodeError::Index(62)));
        // 4097 > 4096.
        assert_eq!(
            check(&[0x3f, 0xe2, 0x1f]),
            Err(DecodeError::TableSize {
                size: 4097,
                limit: 4096
            })
        );
        // A size update after a field.
        assert_eq!(check(&[0x82, 0x20]), Err(DecodeError::LateTableSizeUpdate));
        // Two at the start are fine.
        assert!(check(&[0x20, 0x3f, 0xe1, 0x1f, 0x82]).is_ok());
        assert_eq!(
            check(&[0x40, 0x01]),
            Err(DecodeError::Primitive(PrimitiveError::Truncated))
        );
    }

    #[test]
    fn past_the_list_limit_fields_stop_but_the_table_keeps_up() {
        let mut d = Decoder::new(4096);
        // custom-key: custom-header (55), then :method GET (42).
        let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572 82");
        let mut seen = 0;
        let done = d.decode(&block, 60, |_| seen += 1).expect("valid");
        assert_eq!(seen, 1);
        assert_eq!(
            done,
            Decoded {
                list_size: 97,
                over_limit: true
            }
        );
        // The table got the insert even so.
        assert_eq!(
            decode_all(&mut d, &[0xbe]),
            pairs(&[("custom-key", "custom-header")])
        );
        // A list past the limit from its first field hands out nothing.
        let mut seen = 0;
        let done = d.decode(&[0xbe], 54, |_| seen += 1).expect("valid");
        assert!(done.over_limit);
        assert_eq!(seen, 0);
    }

    #[test]
    fn an_incremental_name_from_an_entry_the_insert_evicts() {
        // Table of 64 bytes: "ab: c" (35) fits alone. Then a literal with
        // incremental indexing naming entry 62 ("ab") with a value long
        // enough to evict it.
        let mut d = Decoder::new(64);
        let mut first = vec![0x40, 0x02, b'a', b'b', 0x01, b'c'];
        first.push(0xbe);
        assert_eq!(
            decode_all(&mut d, &first),
            pairs(&[("ab", "c"), ("ab", "c")])
        );
        let second = [0x7e, 0x03, b'x', b'y', b'z'];
        assert_eq!(decode_all(&mut d, &second), pairs(&[("ab", "xyz")]));
        assert_eq!(table_of(&d), pairs(&[("ab", "xyz")]));
    }

    proptest! {
        /// Arbitrary bytes never panic, never hand out more than the limit,
        /// and never grow the scratch buffer past what the block could hold.
        #[test]
        fn arbitrary_blocks_fail_cleanly(
            blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8),
            limit in 0usize..5000,
        ) {
            let mut d = Decoder::new(limit);
            let mut longest = 0;
            for block in blocks {
                longest = longest.max(block.len());
                let mut handed = 0;
                let _ = d.decode(&block, 300, |f| handed += entry_size(f.name, f.value));
                prop_assert!(handed <= 300);
                prop_assert!(d.scratch.capacity() <= longest * 4 + 64);
                prop_assert!(d.table().size() <= limit);
                prop_assert!(d.table().held() <= 2 * limit);
            }
        }
    }
}
