//! One decoded header block, checked against RFC 9113's rules for
//! fields (section 8.2) and pseudo-headers (sections 8.3.1 and 8.3.2).
//!
//! [`HeaderList`] is reused: a connection keeps one, fills it from the
//! HPACK decoder's callback, and hands it out by reference until the next
//! block. Names and values sit in one byte buffer, so a block costs no
//! allocation once the buffers have grown to the connection's usual size.
//! Every rule a field can break is found as it is pushed, so the block
//! is never walked twice; [`HeaderList::finish`] checks what only the
//! whole block can tell (required pseudo-headers). A list also keeps its
//! fields as last encoded ([`HeaderList::encoded`]): a kept list that
//! serves call after call (see `kept`) is encoded once.

use std::cell::{Ref, RefCell};

use crate::hpack::encode_field;

/// What a header block is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request's head.
    Request,
    /// A response's head (informational or final).
    Response,
    /// Trailers: no pseudo-headers allowed.
    Trailers,
}

/// Why a block is malformed (section 8.1.1): a stream error of type
/// PROTOCOL_ERROR.
pub type Malformed = &'static str;

#[derive(Debug, Clone, Copy)]
struct Slot {
    at: u32,
    name: u32,
    value: u32,
    sensitive: bool,
}

/// Request pseudo-headers, in the order [`HeaderList::pseudo`] takes.
#[allow(missing_docs)]
pub mod pseudo {
    pub const METHOD: usize = 0;
    pub const SCHEME: usize = 1;
    pub const AUTHORITY: usize = 2;
    pub const PATH: usize = 3;
    pub const STATUS: usize = 4;
}

/// The fields of one header block.
#[derive(Debug, Clone)]
pub struct HeaderList {
    kind: Kind,
    bytes: Vec<u8>,
    fields: Vec<Slot>,
    pseudo: [Option<Slot>; 5],
    content_length: Option<u64>,
    malformed: Option<Malformed>,
    encoded: Memo,
}

/// Which of a list's fields an encoding holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Every field, pseudo-headers first.
    All,
    /// Every field but `content-length`.
    WithoutContentLength,
    /// Every field, with `:scheme` set to this one (a request's head on a
    /// leg whose transport the client's scheme does not name).
    WithScheme(&'static [u8]),
}

/// A list's fields as last encoded, and which of them.
#[derive(Debug, Default)]
struct Encoded {
    which: Option<Which>,
    bytes: Vec<u8>,
}

/// Where a list keeps its encoding: boxed, as most lists are never
/// encoded and an idle connection's list should not carry the room; not
/// cloned with the list (a copy is made to wait, not to be sent again).
#[derive(Debug, Default)]
struct Memo(RefCell<Option<Box<Encoded>>>);

impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl Default for HeaderList {
    fn default() -> Self {
        Self::new(Kind::Request)
    }
}

impl HeaderList {
    /// An empty list for a block of this kind.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            bytes: Vec::new(),
            fields: Vec::new(),
            pseudo: [None; 5],
            content_length: None,
            malformed: None,
            encoded: Memo::default(),
        }
    }

    /// Empties the list, keeping its buffers, for a block of `kind`.
    pub fn reset(&mut self, kind: Kind) {
        self.kind = kind;
        self.bytes.clear();
        self.fields.clear();
        self.pseudo = [None; 5];
        self.content_length = None;
        self.malformed = None;
        self.forget_encoded();
    }

    /// The heap room its fields' bytes and slots hold (its encoding, when
    /// made, is about as large as the bytes).
    #[inline]
    pub fn room(&self) -> usize {
        self.bytes.capacity() + self.fields.capacity() * std::mem::size_of::<Slot>()
    }

    /// The kind of block.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Adds a decoded field. A rule it breaks is remembered (the first
    /// one) and reported by [`finish`](Self::finish); the field is not
    /// kept then.
    pub fn push(&mut self, name: &[u8], value: &[u8], sensitive: bool) {
        self.forget_encoded();
        if self.malformed.is_some() {
            return;
        }
        let pseudo = match self.check(name, value) {
            Ok(pseudo) => pseudo,
            Err(why) => {
                self.malformed = Some(why);
                return;
            }
        };
        let slot = Slot {
            at: self.bytes.len() as u32,
            name: name.len() as u32,
            value: value.len() as u32,
            sensitive,
        };
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        match pseudo {
            Some(index) => self.pseudo[index] = Some(slot),
            None => self.fields.push(slot),
        }
    }

    /// The rules of one field; for a pseudo-header, which one it is.
    fn check(&mut self, name: &[u8], value: &[u8]) -> Result<Option<usize>, Malformed> {
        check_value(value)?;
        if name.first() == Some(&b':') {
            // No stack pads these, and a path or authority with white space
            // at an end would slip past routes that name it.
            let space = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
            if space(value.first()) || space(value.last()) {
                return Err("white space around a pseudo-header value");
            }
            if !self.fields.is_empty() {
                return Err("pseudo-header after a regular field");
            }
            let Some(index) = pseudo_index(name) else {
                return Err("unknown pseudo-header");
            };
            let allowed = match self.kind {
                Kind::Request => index != pseudo::STATUS,
                Kind::Response => index == pseudo::STATUS,
                Kind::Trailers => false,
            };
            if !allowed {
                return Err("pseudo-header not allowed in this block");
            }
            if self.pseudo[index].is_some() {
                return Err("pseudo-header repeated");
            }
            return Ok(Some(index));
        }
        check_name(name)?;
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => Err("connection-specific field"),
            b"te" if value != b"trailers" => Err("te other than trailers"),
            b"content-length" => {
                let parsed = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or("content-length not a number")?;
                if self.content_length.is_some_and(|c| c != parsed) {
                    return Err("content-length repeated with another value");
                }
                self.content_length = Some(parsed);
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Checks what only the whole block can tell: a request has
    /// `:method`, `:scheme` and a non-empty `:path` (or is a CONNECT with
    /// `:authority` alone); a response has `:status`.
    pub fn finish(&self) -> Result<(), Malformed> {
        if let Some(why) = self.malformed {
            return Err(why);
        }
        match self.kind {
            Kind::Request => {
                if self.pseudo(pseudo::METHOD) == Some(b"CONNECT") {
                    let plain = self.pseudo[pseudo::SCHEME].is_none()
                        && self.pseudo[pseudo::PATH].is_none()
                        && self.pseudo[pseudo::AUTHORITY].is_some();
                    return if plain {
                        Ok(())
                    } else {
                        Err("CONNECT with :scheme or :path")
                    };
                }
                if self.pseudo[pseudo::METHOD].is_none() || self.pseudo[pseudo::SCHEME].is_none() {
                    return Err("request without :method or :scheme");
                }
                match self.pseudo(pseudo::PATH) {
                    Some(path) if !path.is_empty() => Ok(()),
                    _ => Err("request without :path"),
                }
            }
            Kind::Response => match self.pseudo(pseudo::STATUS) {
                Some(s) if s.len() == 3 && s.iter().all(u8::is_ascii_digit) => Ok(()),
                _ => Err("response without a valid :status"),
            },
            Kind::Trailers => Ok(()),
        }
    }

    /// A pseudo-header's value (see [`pseudo`]).
    pub fn pseudo(&self, index: usize) -> Option<&[u8]> {
        let slot = self.pseudo.get(index).copied().flatten()?;
        Some(self.value_of(slot))
    }

    /// The `content-length`, if the block had one.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The regular fields in order: name, value, never-indexed.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8], bool)> {
        self.fields
            .iter()
            .map(|&slot| (self.name_of(slot), self.value_of(slot), slot.sensitive))
    }

    /// The `i`-th regular field, as [`fields`](Self::fields) gives it.
    pub fn field(&self, i: usize) -> Option<(&[u8], &[u8], bool)> {
        let slot = *self.fields.get(i)?;
        Some((self.name_of(slot), self.value_of(slot), slot.sensitive))
    }

    /// The pseudo-headers in the order a peer expects them, then the
    /// regular fields: name, value, never-indexed.
    pub fn all(&self) -> impl Iterator<Item = (&[u8], &[u8], bool)> {
        self.pseudo
            .iter()
            .flatten()
            .map(|&slot| (self.name_of(slot), self.value_of(slot), slot.sensitive))
            .chain(self.fields())
    }

    /// The fields `which` picks, in the order of [`all`](Self::all).
    pub fn picked(&self, which: Which) -> impl Iterator<Item = (&[u8], &[u8], bool)> {
        self.all()
            .filter(move |(name, _, _)| {
                which != Which::WithoutContentLength || *name != b"content-length"
            })
            .map(move |(name, value, sensitive)| match which {
                Which::WithScheme(scheme) if name == b":scheme" => (name, scheme, sensitive),
                _ => (name, value, sensitive),
            })
    }

    /// The fields `which` picks, HPACK-encoded as
    /// [`encode_field`] does (static table and raw literals, so the bytes
    /// suit any connection): encoded on the first call, then kept until
    /// the list changes.
    pub fn encoded(&self, which: Which) -> Ref<'_, [u8]> {
        {
            let mut encoded = self.encoded.0.borrow_mut();
            let encoded = encoded.get_or_insert_with(Box::default);
            if encoded.which != Some(which) {
                let bytes = &mut encoded.bytes;
                bytes.clear();
                for (name, value, sensitive) in self.picked(which) {
                    encode_field(name, value, sensitive, bytes);
                }
                encoded.which = Some(which);
            }
        }
        Ref::map(self.encoded.0.borrow(), |e| {
            e.as_ref().map_or(&[][..], |e| &e.bytes[..])
        })
    }

    fn forget_encoded(&mut self) {
        if let Some(encoded) = self.encoded.0.get_mut() {
            encoded.which = None;
        }
    }

    /// The first value of a regular field.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _, _)| *n == name)
            .map(|(_, value, _)| value)
    }

    fn name_of(&self, slot: Slot) -> &[u8] {
        let at = slot.at as usize;
        &self.bytes[at..at + slot.name as usize]
    }

    fn value_of(&self, slot: Slot) -> &[u8] {
        let at = slot.at as usize + slot.name as usize;
        &self.bytes[at..at + slot.value as usize]
    }
}

fn pseudo_index(name: &[u8]) -> Option<usize> {
    match name {
        b":method" => Some(pseudo::METHOD),
        b":scheme" => Some(pseudo::SCHEME),
        b":authority" => Some(pseudo::AUTHORITY),
        b":path" => Some(pseudo::PATH),
        b":status" => Some(pseudo::STATUS),
        _ => None,
    }
}

/// The bytes a field name may hold: RFC 9110's `tchar`, less upper case
/// (section 8.2.1).
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8,
            b'a'..=b'z' | b'0'..=b'9' | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*'
            | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~');
        b += 1;
    }
    table
};

/// A field name: a non-empty token in lower case (section 8.2.1).
fn check_name(name: &[u8]) -> Result<(), Malformed> {
    if name.is_empty() {
        return Err("empty field name");
    }
    match name.iter().find(|&&b| !TOKEN[usize::from(b)]) {
        None => Ok(()),
        Some(b) if b.is_ascii_uppercase() => Err("upper-case field name"),
        Some(_) => Err("invalid character in a field name"),
    }
}

/// A field value: no NUL, CR or LF (section 8.2.1). White space at
/// either end, which the section also calls malformed, is taken: gRPC
/// leaves spaces in `grpc-message` unencoded, and grpc-go, grpc-java and
/// tonic send a status such as "no such user: " raw, as they take one
/// (as do h2, Go's http2 and Envoy, which turns nghttp2's check off).
fn check_value(value: &[u8]) -> Result<(), Malformed> {
    if has_nul_cr_or_lf(value) {
        return Err("NUL, CR or LF in a field value");
    }
    Ok(())
}

/// Whether `value` holds a NUL, CR or LF byte. Eight bytes at a time: a
/// word has a zero byte if subtracting 1 from each byte borrows into a
/// high bit that the byte itself did not have (exact for "any byte";
/// only which byte can be wrong, and that is not asked). Values are
/// mostly shorter than a SIMD register, where a search library falls
/// back to a byte at a time.
fn has_nul_cr_or_lf(value: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    let mut words = value.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        if zero_byte(x) | zero_byte(x ^ (ONES * 0x0d)) | zero_byte(x ^ (ONES * 0x0a)) {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b == 0 || b == b'\r' || b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(kind: Kind, fields: &[(&str, &str)]) -> HeaderList {
        let mut list = HeaderList::new(kind);
        for (n, v) in fields {
            list.push(n.as_bytes(), v.as_bytes(), false);
        }
        list
    }

    const REQUEST: [(&str, &str); 4] = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/a.B/C"),
        (":authority", "x"),
    ];

    #[test]
    fn nul_cr_and_lf_are_found_at_every_position_and_nothing_else_is() {
        let clean: Vec<u8> = (0..=255u8)
            .filter(|b| ![0, b'\r', b'\n'].contains(b))
            .collect();
        for len in 0..40 {
            // Every other byte value, across word boundaries.
            let value: Vec<u8> = clean
                .iter()
                .cycle()
                .skip(len * 7)
                .take(len)
                .copied()
                .collect();
            assert!(!has_nul_cr_or_lf(&value), "{value:?}");
            for at in 0..len {
                for bad in [0, b'\r', b'\n'] {
                    let mut v = value.clone();
                    v[at] = bad;
                    assert!(has_nul_cr_or_lf(&v), "{bad} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn a_grpc_request_is_well_formed() {
        let mut fields = REQUEST.to_vec();
        fields.extend([
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-bin", ""),
        ]);
        let l = list(Kind::Request, &fields);
        assert_eq!(l.finish(), Ok(()));
        assert_eq!(l.pseudo(pseudo::PATH), Some(&b"/a.B/C"[..]));
        assert_eq!(l.get(b"te"), Some(&b"trailers"[..]));
        let names: Vec<&[u8]> = l.all().map(|(n, _, _)| n).collect();
        assert_eq!(
            names[..4],
            [&b":method"[..], b":scheme", b":authority", b":path"]
        );
        assert_eq!(names.len(), 7);
    }

    #[test]
    fn each_rule_of_section_8_is_checked() {
        let bad: &[(Kind, &[(&str, &str)])] = &[
            (Kind::Request, &[(":method", "POST"), (":scheme", "http")]),
            (
                Kind::Request,
                &[(":method", "POST"), (":scheme", "http"), (":path", "")],
            ),
            (Kind::Request, &[(":path", "/"), (":path", "/")]),
            (Kind::Request, &[(":status", "200")]),
            (Kind::Request, &[(":foo", "x")]),
            (Kind::Request, &[("a", "b"), (":method", "GET")]),
            (Kind::Request, &[("Upper", "x")]),
            (Kind::Request, &[("a b", "x")]),
            (Kind::Request, &[("", "x")]),
            (Kind::Request, &[("connection", "close")]),
            (Kind::Request, &[("te", "gzip")]),
            (Kind::Request, &[("x", "a\nb")]),
            (
                Kind::Request,
                &[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":authority", "admin.example "),
                    (":path", "/a.B/C"),
                ],
            ),
            (Kind::Request, &[("content-length", "1x")]),
            (
                Kind::Request,
                &[("content-length", "1"), ("content-length", "2")],
            ),
            (Kind::Response, &[(":method", "GET")]),
            (Kind::Response, &[("x", "y")]),
            (Kind::Response, &[(":status", "20")]),
            (Kind::Trailers, &[(":status", "200")]),
        ];
        for (kind, fields) in bad {
            let mut all = if *kind == Kind::Request && fields.len() == 1 {
                REQUEST.to_vec()
            } else {
                Vec::new()
            };
            if fields.iter().any(|(n, _)| n.starts_with(':')) {
                all.clear();
            }
            all.extend_from_slice(fields);
            assert!(list(*kind, &all).finish().is_err(), "{kind:?} {all:?}");
        }
        let fine: &[(Kind, &[(&str, &str)])] = &[
            (Kind::Response, &[(":status", "200"), ("grpc-status", "0")]),
            (
                Kind::Trailers,
                &[("grpc-status", "0"), ("grpc-message", "")],
            ),
            (
                Kind::Request,
                &[(":method", "CONNECT"), (":authority", "x:1")],
            ),
            (
                Kind::Trailers,
                &[("grpc-status", "5"), ("grpc-message", "no such user: ")],
            ),
            (Kind::Response, &[(":status", "200"), ("x", " a\t")]),
        ];
        for (kind, fields) in fine {
            assert_eq!(list(*kind, fields).finish(), Ok(()), "{kind:?} {fields:?}");
        }
    }

    #[test]
    fn reset_keeps_the_buffers() {
        let mut l = list(Kind::Request, &REQUEST);
        let capacity = l.bytes.capacity();
        l.reset(Kind::Trailers);
        assert_eq!(l.all().count(), 0);
        assert_eq!(l.bytes.capacity(), capacity);
        l.push(b"grpc-status", b"0", false);
        assert_eq!(l.finish(), Ok(()));
    }

    #[test]
    fn a_lists_encoding_follows_its_fields_and_which_of_them() {
        let mut l = list(
            Kind::Response,
            &[(":status", "200"), ("content-length", "5"), ("x-a", "1")],
        );
        let by_hand = |fields: &[(&str, &str)]| {
            let mut out = Vec::new();
            for (n, v) in fields {
                encode_field(n.as_bytes(), v.as_bytes(), false, &mut out);
            }
            out
        };
        let all = by_hand(&[(":status", "200"), ("content-length", "5"), ("x-a", "1")]);
        let without = by_hand(&[(":status", "200"), ("x-a", "1")]);
        assert_eq!(&*l.encoded(Which::All), &all[..]);
        assert_eq!(&*l.encoded(Which::All), &all[..]);
        assert_eq!(&*l.encoded(Which::WithoutContentLength), &without[..]);
        // A new field, or a new block, is encoded afresh.
        l.push(b"x-b", b"2", false);
        let more = by_hand(&[(":status", "200"), ("x-a", "1"), ("x-b", "2")]);
        assert_eq!(&*l.encoded(Which::WithoutContentLength), &more[..]);
        l.reset(Kind::Trailers);
        l.push(b"grpc-status", b"0", false);
        assert_eq!(
            &*l.encoded(Which::All),
            &by_hand(&[("grpc-status", "0")])[..]
        );
        // A never-indexed field stays never-indexed.
        l.push(b"authorization", b"secret", true);
        let mut sensitive = by_hand(&[("grpc-status", "0")]);
        encode_field(b"authorization", b"secret", true, &mut sensitive);
        assert_eq!(&*l.encoded(Which::All), &sensitive[..]);
    }
}
