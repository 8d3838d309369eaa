//! Dates as jupyter_client writes and reads them.
//!
//! On the wire a date is ISO-8601 UTC with a `Z` suffix and at most six fractional digits,
//! the fraction omitted when the microseconds are zero (Python's `isoformat`). Readers accept
//! `Z`, `+HH:MM`, `+HHMM` and naive dates (taken as UTC, where ipyparallel would take local
//! time; our controllers run in UTC and we never write naive dates).

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Timelike, Utc};

/// A point in time, UTC, microsecond precision on the wire.
pub type Timestamp = DateTime<Utc>;

/// The current time, truncated to microseconds so that it survives a wire round trip.
pub fn now() -> Timestamp {
    let now = Utc::now();
    let micros = now.nanosecond() / 1_000 * 1_000;
    now.with_nanosecond(micros).unwrap_or(now)
}

/// Formats a date exactly as jupyter_client does: `2026-11-22T17:59:19.509005Z`.
pub fn format(date: &Timestamp) -> String {
    if date.nanosecond() / 1_000 == 0 {
        date.to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        date.to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

/// Parses a date in any form jupyter_client's date regex accepts; `None` if it is not one.
pub fn parse(text: &str) -> Option<Timestamp> {
    if !looks_like_date(text) {
        return None;
    }
    if let Ok(date) = DateTime::parse_from_rfc3339(text) {
        return Some(date.with_timezone(&Utc));
    }
    if let Ok(date) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z") {
        return Some(date.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|naive| naive.and_utc())
}

/// A cheap shape check, so that ordinary strings are not sent through the parsers.
fn looks_like_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 19
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && bytes[..4].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_micros_and_z() {
        let date = parse("2026-11-22T17:59:19.509005Z").unwrap();
        assert_eq!(format(&date), "2026-11-22T17:59:19.509005Z");
    }

    #[test]
    fn omits_a_zero_fraction_like_python() {
        let date = parse("2026-11-22T17:59:19Z").unwrap();
        assert_eq!(format(&date), "2026-11-22T17:59:19Z");
    }

    #[test]
    fn accepts_offsets_and_naive_dates() {
        let z = parse("2026-11-22T17:59:19.5Z").unwrap();
        assert_eq!(parse("2026-11-22T17:59:19.500000+00:00"), Some(z));
        assert_eq!(parse("2026-11-22T18:59:19.5+0100"), Some(z));
        assert_eq!(parse("2026-11-22T17:59:19.5"), Some(z));
    }

    #[test]
    fn rejects_ordinary_strings() {
        assert_eq!(parse("hello"), None);
        assert_eq!(parse("2026-11-22"), None);
        assert_eq!(parse("abcd-ef-ghTij:kl:mn"), None);
    }

    #[test]
    fn now_round_trips() {
        let t = now();
        assert_eq!(parse(&format(&t)), Some(t));
    }
}
