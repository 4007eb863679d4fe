//! The `grpc-timeout` header: parsing and formatting.
//!
//! The value is at most 8 ASCII digits followed by a unit: `H` hours, `M`
//! minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds.
//! A malformed value sets no deadline here and goes on as sent, unless a
//! route timeout replaces it: the upstream answers it as it would directly
//! (grpc-go's server with INTERNAL).

use std::time::Duration;

/// Parses a `grpc-timeout` value; `None` when it is malformed.
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value, rounding up to the finest
/// unit whose count fits in 8 digits.
pub fn format(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (size, unit) in units {
        let count = nanos.div_ceil(size);
        if count <= MAX {
            return format!("{count}{unit}");
        }
    }
    format!("{MAX}H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse(b"99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse(b"7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            &b""[..],
            b"S",
            b"100",
            b"123456789S",
            b"1s",
            b"-1S",
            b"1.5S",
            b" 1S",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn formats_round_trip() {
        for d in [
            Duration::from_nanos(5),
            Duration::from_millis(1500),
            Duration::from_secs(3600 * 24 * 365),
        ] {
            let text = format(d);
            let back = parse(text.as_bytes()).expect("formatted value parses");
            assert!(back >= d, "{text} parsed to {back:?} < {d:?}");
        }
        assert_eq!(format(Duration::from_millis(1500)), "1500000u");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_parse_or_are_ignored(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn formatting_rounds_up_and_parses(nanos in any::<u64>()) {
                let d = Duration::from_nanos(nanos);
                let back = parse(format(d).as_bytes()).expect("formatted values parse");
                prop_assert!(back >= d);
            }
        }
    }
}
