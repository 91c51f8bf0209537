//! Event timestamps: RFC 3339, or naive ISO-8601 read as UTC, to microseconds since the epoch.
//!
//! Every event carries one, so parsing is on the hot path. chrono's `parse_from_str` interprets
//! its format string for each call (about a fifth of decoding an event, measured with `perf`); the
//! fixed-layout forms that events actually use (`2024-03-11T15:57:09`, optional fraction, `Z` or a
//! `±HH:MM` offset) are read here by position instead, and anything else falls through to chrono.
//! The fast path only ever answers what chrono would (a property test holds the two together):
//! it leaves every case it does not fully check (leap seconds, `t` or space separators, more than
//! nine fraction digits, odd offsets) to chrono.

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// Parses RFC 3339, or naive ISO-8601 (`2024-03-11T15:57:09[.ffffff]`, read as UTC).
pub fn parse_timestamp_micros(text: &str) -> Option<i64> {
    fixed_layout(text.as_bytes()).or_else(|| general(text))
}

/// chrono alone: the definition the fast path must agree with.
fn general(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_micros())
}

/// `YYYY-MM-DDTHH:MM:SS`, then an optional `.` and 1–9 digits, then nothing, `Z`, or `±HH:MM`.
/// `None` means "not this layout" (chrono decides), never "invalid".
fn fixed_layout(bytes: &[u8]) -> Option<i64> {
    if bytes.len() < 19 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' {
        return None;
    }
    if bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let year = digits(&bytes[0..4])?;
    let month = digits(&bytes[5..7])?;
    let day = digits(&bytes[8..10])?;
    let hour = digits(&bytes[11..13])?;
    let minute = digits(&bytes[14..16])?;
    let second = digits(&bytes[17..19])?;
    // 60 (a leap second) is chrono's to interpret.
    if second > 59 {
        return None;
    }
    let mut rest = &bytes[19..];
    let mut nanos = 0u32;
    if let Some((b'.', fraction)) = rest.split_first() {
        let len = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || len > 9 {
            return None;
        }
        nanos = digits(&fraction[..len])? * 10u32.pow(9 - len as u32);
        rest = &fraction[len..];
    }
    let offset_seconds = match rest {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (hours, minutes) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'-' {
                -magnitude
            } else {
                magnitude
            }
        }
        _ => return None,
    };
    let local = NaiveDate::from_ymd_opt(year as i32, month, day)?.and_hms_nano_opt(hour, minute, second, nanos)?;
    Some(local.and_utc().timestamp_micros() - offset_seconds * 1_000_000)
}

/// The value of a run of ASCII digits (at most nine, so it fits).
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |value, b| b.is_ascii_digit().then(|| value * 10 + u32::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn naive_and_rfc3339_agree() {
        assert_eq!(parse_timestamp_micros("2024-03-11T15:57:09"), parse_timestamp_micros("2024-03-11T15:57:09Z"));
        assert_eq!(
            parse_timestamp_micros("2024-03-11T17:57:09.5+02:00"),
            parse_timestamp_micros("2024-03-11T15:57:09.500")
        );
        assert_eq!(parse_timestamp_micros("2024-03-11T15:57:09"), Some(1_710_172_629_000_000));
        assert_eq!(parse_timestamp_micros("yesterday"), None);
    }

    #[test]
    fn what_the_fast_path_leaves_to_chrono_still_parses() {
        // A leap second, a space separator, lower-case markers, ten fraction digits.
        for text in
            ["2016-12-31T23:59:60Z", "2024-03-11 15:57:09Z", "2024-03-11t15:57:09z", "2024-03-11T15:57:09.1234567891Z"]
        {
            assert_eq!(fixed_layout(text.as_bytes()), None, "{text}");
            assert_eq!(parse_timestamp_micros(text), general(text), "{text}");
            assert!(parse_timestamp_micros(text).is_some(), "{text}");
        }
    }

    #[test]
    fn impossible_dates_and_times_are_rejected() {
        for text in ["2023-02-29T00:00:00", "2024-13-01T00:00:00", "2024-01-01T24:00:00", "2024-01-01T00:60:00Z"] {
            assert_eq!(parse_timestamp_micros(text), None, "{text}");
        }
        assert!(parse_timestamp_micros("2024-02-29T00:00:00").is_some());
    }

    /// Timestamp-like text: mostly well formed, with any character possibly replaced, so both
    /// near misses and valid values of every field are covered.
    fn timestamp_like() -> impl Strategy<Value = String> {
        let field = |max: u32, width: usize| (0..=max).prop_map(move |v| format!("{v:0width$}"));
        let fraction = prop_oneof![Just(String::new()), "\\.[0-9]{0,11}"];
        let zone = prop_oneof![Just(String::new()), Just("Z".to_owned()), "[+-][0-2][0-9]:[0-6][0-9]", ".{0,3}"];
        (
            (field(9999, 4), field(13, 2), field(32, 2), field(25, 2), field(61, 2), field(61, 2)),
            fraction,
            zone,
            proptest::option::of((0usize..26, any::<char>())),
        )
            .prop_map(|((y, mo, d, h, mi, s), fraction, zone, replace)| {
                let mut text = format!("{y}-{mo}-{d}T{h}:{mi}:{s}{fraction}{zone}");
                if let Some((at, c)) = replace {
                    let mut chars: Vec<char> = text.chars().collect();
                    if at < chars.len() {
                        chars[at] = c;
                    }
                    text = chars.into_iter().collect();
                }
                text
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn the_fast_path_answers_what_chrono_answers(text in timestamp_like()) {
            prop_assert_eq!(parse_timestamp_micros(&text), general(&text));
        }
    }
}
