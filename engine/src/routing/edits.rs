//! Header edits a route makes: what the request head sent upstream and
//! the response head sent to the client change, as the Go proxy's
//! director returns an outgoing context.
//!
//! A [`Director`](crate::routing::director::Director) returns [`Edits`]
//! with its route ([`Route::with_edits`](crate::Route::with_edits)); the
//! config file's routes have `request_headers` and `response_headers`,
//! whose values may use variables, filled in per call by
//! [`RouteEdits`](crate::routing::route_edits::RouteEdits).

use http::header::{HeaderName, HeaderValue};

use crate::config::edits::{is_authority, is_value, key};

/// A header edit the proxy cannot make, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct EditError(String);

/// What changes in one head. Keys are removed first, wherever they are in
/// the head, then values added at its end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub(crate) remove: Vec<HeaderName>,
    pub(crate) add: Vec<(HeaderName, HeaderValue)>,
    pub(crate) authority: Option<HeaderValue>,
}

impl HeaderEdits {
    /// No edits.
    pub fn new() -> HeaderEdits {
        HeaderEdits::default()
    }

    /// Drops every value of `name`.
    pub fn remove(mut self, name: &str) -> Result<HeaderEdits, EditError> {
        let name = key("remove", name).map_err(EditError)?;
        if !self.remove.contains(&name) {
            self.remove.push(name);
        }
        Ok(self)
    }

    /// Replaces every value of `name` with `value`.
    pub fn set(self, name: &str, value: &str) -> Result<HeaderEdits, EditError> {
        self.remove(name)?.add(name, value)
    }

    /// Appends `value` to `name`'s values.
    pub fn add(mut self, name: &str, value: &str) -> Result<HeaderEdits, EditError> {
        let name = key("add", name).map_err(EditError)?;
        self.add.push((name, header_value(value)?));
        Ok(self)
    }

    /// A new `:authority` (requests only; a response has none).
    pub fn authority(mut self, value: &str) -> Result<HeaderEdits, EditError> {
        if !is_authority(value) {
            return Err(EditError(format!(
                "authority: {value:?} is not a host and port such as users.internal:443"
            )));
        }
        self.authority = Some(header_value(value)?);
        Ok(self)
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty() && self.authority.is_none()
    }

    /// Whether a field of the head stays (an `:authority` that is
    /// replaced stays, with the new value: see [`HeaderEdits::value`]).
    pub(crate) fn keeps(&self, name: &[u8]) -> bool {
        !self.remove.iter().any(|r| r.as_str().as_bytes() == name)
    }

    /// The value a kept field is sent with.
    pub(crate) fn value<'a>(&'a self, name: &[u8], value: &'a [u8]) -> &'a [u8] {
        match &self.authority {
            Some(a) if name == b":authority" => a.as_bytes(),
            _ => value,
        }
    }

    /// The fields added at the end.
    pub(crate) fn added(&self) -> impl Iterator<Item = (&[u8], &[u8], bool)> {
        self.add
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes(), v.is_sensitive()))
    }
}

fn header_value(value: &str) -> Result<HeaderValue, EditError> {
    if !is_value(value) {
        return Err(EditError(format!(
            "{value:?} is not a valid metadata value (visible ASCII, spaces and tabs, none at either end)"
        )));
    }
    HeaderValue::from_str(value)
        .map_err(|_| EditError(format!("{value:?} is not a valid metadata value")))
}

/// The edits of both heads of a call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    /// The request head sent upstream.
    pub request: HeaderEdits,
    /// The response head sent to the client (the trailers of a response
    /// that has DATA are not edited).
    pub response: HeaderEdits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_refuses_what_cannot_be_edited() {
        let edits = HeaderEdits::new()
            .set("x-user", "alice")
            .and_then(|e| e.remove("authorization"))
            .and_then(|e| e.authority("users.internal"))
            .expect("valid edits");
        assert!(!edits.keeps(b"x-user") && !edits.keeps(b"authorization"));
        assert!(edits.keeps(b"x-other"));
        assert_eq!(edits.value(b":authority", b"old"), b"users.internal");
        assert!(HeaderEdits::new().set(":path", "/x").is_err());
        assert!(HeaderEdits::new().add("te", "trailers").is_err());
        assert!(HeaderEdits::new().add("x-a", "new\nline").is_err());
        assert!(HeaderEdits::new().add("x-a", " padded").is_err());
        assert!(HeaderEdits::new().authority("user@host").is_err());
    }
}
