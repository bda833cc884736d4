//! How popsync shows a time to a person or a script: UTC to the second,
//! RFC 3339 (`2026-12-02T05:09:25Z`). Used by the `--dry-run` plan and by
//! `seen list`; the seen-store keeps its own, finer format.

use chrono::{DateTime, Utc};

/// `t` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_seconds(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
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
}
