//! gRPC status codes and the trailers-only responses the proxy itself makes.
//!
//! Key types: [`Code`] (the 17 canonical codes) and [`Status`] (a code and a
//! message). Every error the proxy creates reaches the client as a
//! trailers-only response: one HEADERS frame with END_STREAM carrying
//! `:status 200`, `content-type: application/grpc`, `grpc-status` and a
//! percent-encoded `grpc-message`. (HTTP/2 resets are mapped to codes where
//! the relay meets them: `relay::calls::status_of_reset`.)
//!
//! Cost: building a response allocates the header map; the status value is a
//! static header and the message is encoded only when it is not empty.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

/// A canonical gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

const NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

const VALUES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

const ALL: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

impl Code {
    /// The numeric value sent in `grpc-status`.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The code with this numeric value, if it is one of the 17.
    pub fn from_u8(value: u8) -> Option<Code> {
        ALL.get(usize::from(value)).copied()
    }

    /// The spec's name, e.g. `PERMISSION_DENIED`.
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(VALUES[self as usize])
    }
}

impl Code {
    /// The code in the `grpc-status` of trailers (or of a trailers-only
    /// response); `None` without one, UNKNOWN for a value that is not a
    /// code.
    pub fn from_trailers(headers: &HeaderMap) -> Option<Code> {
        let value = headers.get("grpc-status")?;
        Some(
            std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.parse::<u8>().ok())
                .and_then(Code::from_u8)
                .unwrap_or(Code::Unknown),
        )
    }

    /// The code the gRPC spec maps a non-gRPC HTTP answer's status to.
    pub fn from_http_status(status: u16) -> Code {
        match status {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for a status code name that is not one of the 17.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown gRPC status code {0:?} (expected a name such as PERMISSION_DENIED or a number 0-16)"
)]
pub struct UnknownCode(String);

impl FromStr for Code {
    type Err = UnknownCode;

    /// Accepts `PERMISSION_DENIED`, `permission_denied`, `PermissionDenied`
    /// and `7`.
    fn from_str(s: &str) -> Result<Code, UnknownCode> {
        if let Ok(n) = s.parse::<u8>() {
            return Code::from_u8(n).ok_or_else(|| UnknownCode(s.to_owned()));
        }
        let normal: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        NAMES
            .iter()
            .position(|name| name.replace('_', "") == normal)
            .map(|i| ALL[i])
            .ok_or_else(|| UnknownCode(s.to_owned()))
    }
}

/// A gRPC status: a code and a human-readable message, and optionally
/// when the client may retry (`grpc-retry-pushback-ms`, gRPC's retry
/// design A6: clients with a retry policy wait that long instead of their
/// own back-off).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: Cow<'static, str>,
    pushback: Option<std::time::Duration>,
}

impl Status {
    /// A status with this code and message.
    pub fn new(code: Code, message: impl Into<Cow<'static, str>>) -> Status {
        Status {
            code,
            message: message.into(),
            pushback: None,
        }
    }

    /// The same status, telling the client to retry no sooner than
    /// `after`.
    pub fn with_pushback(mut self, after: std::time::Duration) -> Status {
        self.pushback = Some(after);
        self
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// When the client may retry, if the status says
    /// (`grpc-retry-pushback-ms`).
    pub fn pushback(&self) -> Option<std::time::Duration> {
        self.pushback
    }

    /// The message, unencoded.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `grpc-status` and `grpc-message` headers for this status.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(3);
        self.write_headers(&mut headers);
        headers
    }

    fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("grpc-status", self.code.header_value());
        if !self.message.is_empty() {
            if let Ok(value) = HeaderValue::from_maybe_shared(percent_encode(&self.message)) {
                headers.insert("grpc-message", value);
            }
        }
        if let Some(after) = self.pushback {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            headers.insert("grpc-retry-pushback-ms", HeaderValue::from(ms));
        }
    }

    /// A trailers-only response carrying this status: send it with
    /// END_STREAM set.
    pub fn to_trailers_only(&self) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.reserve(3);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        self.write_headers(headers);
        response
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Percent-encodes a `grpc-message` as the gRPC spec asks: bytes outside
/// printable ASCII, and `%` itself, become `%XX`.
pub fn percent_encode(message: &str) -> bytes::Bytes {
    let needs = |b: u8| !(0x20..=0x7e).contains(&b) || b == b'%';
    if !message.bytes().any(needs) {
        return bytes::Bytes::copy_from_slice(message.as_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(message.len() * 3);
    for b in message.bytes() {
        if needs(b) {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_in_every_spelling() {
        for s in [
            "PERMISSION_DENIED",
            "permission_denied",
            "PermissionDenied",
            "7",
        ] {
            assert_eq!(s.parse::<Code>().ok(), Some(Code::PermissionDenied), "{s}");
        }
        assert!("17".parse::<Code>().is_err());
        assert!("nope".parse::<Code>().is_err());
        for code in ALL {
            assert_eq!(code.name().parse::<Code>().ok(), Some(code));
            assert_eq!(Code::from_u8(code.as_u8()), Some(code));
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(&percent_encode("plain text")[..], b"plain text");
        assert_eq!(&percent_encode("50% off")[..], b"50%25 off");
        assert_eq!(&percent_encode("caf\u{e9}\n")[..], b"caf%C3%A9%0A");
    }

    #[test]
    fn trailers_only_response_is_complete() {
        let response = Status::new(Code::Unavailable, "no upstream").to_trailers_only();
        assert_eq!(response.status(), StatusCode::OK);
        let h = response.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "no upstream");
    }

    #[test]
    fn codes_are_read_from_trailers_and_http_statuses() {
        let mut h = HeaderMap::new();
        assert_eq!(Code::from_trailers(&h), None);
        h.insert("grpc-status", HeaderValue::from_static("7"));
        assert_eq!(Code::from_trailers(&h), Some(Code::PermissionDenied));
        h.insert("grpc-status", HeaderValue::from_static("99"));
        assert_eq!(Code::from_trailers(&h), Some(Code::Unknown));
        assert_eq!(Code::from_http_status(503), Code::Unavailable);
        assert_eq!(Code::from_http_status(404), Code::Unimplemented);
        assert_eq!(Code::from_http_status(500), Code::Unknown);
    }
}
