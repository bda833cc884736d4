//! popsync's two time formats, both RFC 3339 in UTC: to the second for a
//! person or a script (`2026-12-02T05:09:25Z`: the `--dry-run` plan, `seen
//! list`), and to the microsecond in the seen-store, so that rows written
//! within one second keep their order.

use chrono::{DateTime, SecondsFormat, Utc};

/// `t` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_seconds(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `t` as the seen-store keeps it: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn store_micros(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A time the seen-store kept; `None` if it is not RFC 3339.
pub fn parse_store(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn shows_utc_to_the_second() {
        let t = Utc.with_ymd_and_hms(2026, 12, 2, 5, 9, 25).unwrap();
        assert_eq!(utc_seconds(&t), "2026-12-02T05:09:25Z");
    }

    #[test]
    fn the_store_format_reads_back_to_the_microsecond() {
        let t = Utc.with_ymd_and_hms(2026, 12, 2, 5, 9, 25).unwrap()
            + chrono::Duration::microseconds(123_456);
        assert_eq!(store_micros(t), "2026-12-02T05:09:25.123456Z");
        assert_eq!(parse_store(&store_micros(t)), Some(t));
        assert_eq!(parse_store("yesterday"), None);
    }
}
