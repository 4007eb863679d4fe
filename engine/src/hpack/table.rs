//! HPACK's two tables (RFC 7541, section 2.3): the static one, and the
//! dynamic one a decoder keeps per connection.
//!
//! [`DynamicTable`] keeps its entries' bytes in one buffer, newest at the
//! end, and evicts from the front by moving a start offset; the dead prefix
//! is dropped once it is larger than what is live. So an insert copies the
//! entry once and allocates only until the buffer reaches its working size,
//! and the memory held stays below twice the table's size. Lookups hand out
//! slices of that buffer.

use std::collections::VecDeque;

/// The static table: index 1 is the first entry.
pub const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// What an entry costs against the table's size (section 4.1).
pub fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// Which bytes begin a name of the static table. Most of what a gRPC
/// peer sends that is not there (`grpc-status`, `grpc-timeout`, ...)
/// is ruled out by its first byte, before any name of its length is
/// compared with it.
const FIRST_BYTES: [bool; 256] = {
    let mut first = [false; 256];
    let mut i = 0;
    while i < STATIC.len() {
        first[STATIC[i].0[0] as usize] = true;
        i += 1;
    }
    first
};

/// Where `name` (and, if it matches too, `value`) sits in the static table:
/// the index, and whether the value matched.
pub fn find_static(name: &[u8], value: &[u8]) -> Option<(u8, bool)> {
    if !FIRST_BYTES[usize::from(*name.first()?)] {
        return None;
    }
    let (first, values): (u8, &[&[u8]]) = match name {
        b":authority" => (1, &[]),
        b":method" => (2, &[b"GET", b"POST"]),
        b":path" => (4, &[b"/", b"/index.html"]),
        b":scheme" => (6, &[b"http", b"https"]),
        b":status" => (8, &[b"200", b"204", b"206", b"304", b"400", b"404", b"500"]),
        b"accept-encoding" => (16, &[b"gzip, deflate"]),
        b"content-type" => (31, &[]),
        b"user-agent" => (58, &[]),
        b"authorization" => (23, &[]),
        b"content-length" => (28, &[]),
        b"content-encoding" => (26, &[]),
        b"accept" => (19, &[]),
        b"date" => (33, &[]),
        b"server" => (54, &[]),
        b"cache-control" => (24, &[]),
        b"cookie" => (32, &[]),
        b"host" => (38, &[]),
        b"location" => (46, &[]),
        b"set-cookie" => (55, &[]),
        b"accept-charset" => (15, &[]),
        b"accept-language" => (17, &[]),
        b"accept-ranges" => (18, &[]),
        b"access-control-allow-origin" => (20, &[]),
        b"age" => (21, &[]),
        b"allow" => (22, &[]),
        b"content-disposition" => (25, &[]),
        b"content-language" => (27, &[]),
        b"content-location" => (29, &[]),
        b"content-range" => (30, &[]),
        b"etag" => (34, &[]),
        b"expect" => (35, &[]),
        b"expires" => (36, &[]),
        b"from" => (37, &[]),
        b"if-match" => (39, &[]),
        b"if-modified-since" => (40, &[]),
        b"if-none-match" => (41, &[]),
        b"if-range" => (42, &[]),
        b"if-unmodified-since" => (43, &[]),
        b"last-modified" => (44, &[]),
        b"link" => (45, &[]),
        b"max-forwards" => (47, &[]),
        b"proxy-authenticate" => (48, &[]),
        b"proxy-authorization" => (49, &[]),
        b"range" => (50, &[]),
        b"referer" => (51, &[]),
        b"refresh" => (52, &[]),
        b"retry-after" => (53, &[]),
        b"strict-transport-security" => (56, &[]),
        b"transfer-encoding" => (57, &[]),
        b"vary" => (59, &[]),
        b"via" => (60, &[]),
        b"www-authenticate" => (61, &[]),
        _ => return None,
    };
    match values.iter().position(|v| *v == value) {
        Some(i) => Some((first + i as u8, true)),
        None => Some((first, false)),
    }
}

/// One entry's place in [`DynamicTable`]'s buffer.
#[derive(Clone, Copy)]
struct Entry {
    /// Offset of the name from the start of everything ever inserted.
    at: usize,
    name: u32,
    value: u32,
}

/// A decoder's dynamic table (section 2.3.2): newest entry first.
#[derive(Debug, Default)]
pub struct DynamicTable {
    bytes: Vec<u8>,
    /// The total offset of `bytes[0]`.
    base: usize,
    entries: VecDeque<Entry>,
    /// The sum of the entries' sizes.
    size: usize,
    max_size: usize,
    /// Inserts and size changes so far: while it stays the same, so does
    /// the table.
    changes: u64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}@{}", self.name, self.value, self.at)
    }
}

impl DynamicTable {
    /// An empty table that holds at most `max_size` (section 4.1).
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size,
            ..Self::default()
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many times the table has changed (an insert, or a size
    /// update, even to the same size): two equal counts mean an unchanged
    /// table between them.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The sum of the entries' sizes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Entry `index`, where 0 is the newest.
    pub fn get(&self, index: usize) -> Option<(&[u8], &[u8])> {
        let entry = *self
            .entries
            .get(self.entries.len().checked_sub(index + 1)?)?;
        let at = entry.at - self.base;
        let mid = at + entry.name as usize;
        Some((
            &self.bytes[at..mid],
            &self.bytes[mid..mid + entry.value as usize],
        ))
    }

    /// Adds an entry, evicting the oldest to make room; an entry larger
    /// than the whole table empties it and is not added (section 4.4).
    pub fn insert(&mut self, name: &[u8], value: &[u8]) {
        self.changes += 1;
        let size = entry_size(name, value);
        if size > self.max_size {
            self.entries.clear();
            self.bytes.clear();
            self.base = 0;
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - size);
        self.compact();
        let at = self.base + self.bytes.len();
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.entries.push_back(Entry {
            at,
            name: name.len() as u32,
            value: value.len() as u32,
        });
        self.size += size;
    }

    /// Changes the maximum size, evicting what no longer fits.
    pub fn set_max_size(&mut self, max_size: usize) {
        self.changes += 1;
        self.max_size = max_size;
        self.evict_to(max_size);
        self.compact();
    }

    fn evict_to(&mut self, target: usize) {
        while self.size > target {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.size -= old.name as usize + old.value as usize + 32;
        }
        if self.entries.is_empty() {
            self.bytes.clear();
            self.base = 0;
        }
    }

    /// Drops the evicted prefix of the buffer once it outweighs the rest.
    fn compact(&mut self) {
        let Some(first) = self.entries.front() else {
            return;
        };
        let dead = first.at - self.base;
        if dead > 0 && dead >= self.bytes.len() - dead {
            self.bytes.drain(..dead);
            self.base += dead;
        }
    }

    /// Bytes held by the buffer (for tests of the memory bound).
    pub fn held(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_static_entry_is_found_where_it_is() {
        for (i, (name, value)) in STATIC.iter().enumerate() {
            let index = i as u8 + 1;
            let (found, exact) = find_static(name, value).expect("a static name");
            assert!(exact || value.is_empty(), "{index}");
            if exact {
                assert_eq!(found, index);
            } else {
                assert_eq!(STATIC[usize::from(found) - 1].0, *name);
            }
        }
        assert_eq!(find_static(b":method", b"PUT"), Some((2, false)));
        assert_eq!(find_static(b"grpc-timeout", b"1S"), None);
        assert_eq!(find_static(b"", b""), None);
    }

    proptest! {
        #[test]
        fn find_static_agrees_with_a_search_of_the_table(
            name in prop_oneof![
                (0..STATIC.len()).prop_map(|i| STATIC[i].0.to_vec()),
                proptest::collection::vec(any::<u8>(), 0..30),
                "[a-z:-]{1,28}".prop_map(String::into_bytes),
            ],
            value in prop_oneof![
                (0..STATIC.len()).prop_map(|i| STATIC[i].1.to_vec()),
                proptest::collection::vec(any::<u8>(), 0..8),
            ],
        ) {
            let first = STATIC.iter().position(|(n, _)| *n == name.as_slice());
            let exact = STATIC
                .iter()
                .position(|(n, v)| *n == name.as_slice() && *v == value.as_slice() && !v.is_empty());
            let want = match (first, exact) {
                (_, Some(i)) => Some((i as u8 + 1, true)),
                (Some(i), None) => Some((i as u8 + 1, false)),
                (None, None) => None,
            };
            prop_assert_eq!(find_static(&name, &value), want);
        }
    }

    #[test]
    fn eviction_follows_section_4_4() {
        let mut table = DynamicTable::new(100);
        table.insert(b"a", b"1"); // 34
        table.insert(b"b", b"2"); // 68
        assert_eq!(table.get(0), Some((&b"b"[..], &b"2"[..])));
        assert_eq!(table.get(1), Some((&b"a"[..], &b"1"[..])));
        table.insert(b"c", b"3"); // 102 > 100: "a" goes
        assert_eq!(table.len(), 2);
        assert_eq!(table.get(1), Some((&b"b"[..], &b"2"[..])));
        assert_eq!(table.get(2), None);
        table.insert(&[b'x'; 80], b""); // 112 > 100: empties the table
        assert!(table.is_empty());
        assert_eq!(table.size(), 0);
        table.insert(b"d", b"4");
        table.set_max_size(0);
        assert!(table.is_empty());
    }

    proptest! {
        /// The table matches a plain model, and never holds more than
        /// twice its size in bytes.
        #[test]
        fn matches_a_model(
            max in 0usize..300,
            ops in proptest::collection::vec((0usize..80, 0usize..80, any::<bool>()), 0..200),
        ) {
            let mut table = DynamicTable::new(max);
            let mut model: VecDeque<(Vec<u8>, Vec<u8>)> = VecDeque::new();
            let mut max = max;
            for (n, (name_len, value_len, resize)) in ops.into_iter().enumerate() {
                if resize && name_len < 20 {
                    max = name_len * 10;
                    table.set_max_size(max);
                } else {
                    let name = vec![b'a' + (n % 26) as u8; name_len];
                    let value = vec![b'0' + (n % 10) as u8; value_len];
                    table.insert(&name, &value);
                    model.push_front((name, value));
                }
                let mut size: usize = model.iter().map(|(a, b)| entry_size(a, b)).sum();
                while size > max {
                    let (a, b) = model.pop_back().expect("entries");
                    size -= entry_size(&a, &b);
                }
                prop_assert_eq!(table.len(), model.len());
                prop_assert_eq!(table.size(), size);
                for (i, (a, b)) in model.iter().enumerate() {
                    prop_assert_eq!(table.get(i), Some((&a[..], &b[..])));
                }
                prop_assert!(table.held() <= 2 * max);
            }
        }
    }
}
