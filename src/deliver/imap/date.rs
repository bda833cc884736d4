//! The INTERNALDATE an appended message gets: the time it reached its first
//! mail server, so that imported mail sorts where it belongs (RFC 9051
//! 6.3.12): the date of its first `Received:` header, else its `Date:`,
//! else the time of the run.

use chrono::{DateTime, FixedOffset, Utc};

use crate::headers;

/// The INTERNALDATE for a message whose header block starts `head`, in
/// IMAP's date-time form: `"02-Dec-2026 07:36:09 +0000"` (quotes included).
pub fn internaldate(head: &[u8], now: DateTime<Utc>) -> String {
    let when = received_date(head)
        .or_else(|| headers::field(head, "Date").and_then(|d| parse(&d)))
        .unwrap_or_else(|| now.fixed_offset());
    format!("\"{}\"", when.format("%d-%b-%Y %H:%M:%S %z"))
}

/// The date of the first `Received:` header: what follows its last `;`
/// (RFC 5322 3.6.7).
fn received_date(head: &[u8]) -> Option<DateTime<FixedOffset>> {
    let received = headers::field(head, "Received")?;
    let (_, date) = received.rsplit_once(';')?;
    parse(date)
}

/// An RFC 5322 date, tolerating a trailing comment such as `(CET)` and
/// surrounding white space.
fn parse(text: &str) -> Option<DateTime<FixedOffset>> {
    let mut t = text.trim();
    if t.ends_with(')')
        && let Some(open) = t.rfind('(')
    {
        t = t[..open].trim_end();
    }
    DateTime::parse_from_rfc2822(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 2, 7, 36, 9).unwrap()
    }

    #[test]
    fn the_first_received_header_wins() {
        let head = b"Received: from a by b; Tue, 1 Jul 2003 10:52:37 +0200 (CEST)\n\
                     Received: from c by d;\n\tMon, 30 Jun 2003 09:00:00 +0000\n\
                     Date: Sun, 29 Jun 2003 08:00:00 +0000\n\nbody\n";
        assert_eq!(internaldate(head, now()), "\"01-Jul-2003 10:52:37 +0200\"");
    }

    #[test]
    fn a_folded_received_header_is_read_whole() {
        let head =
            b"Received: from a\n\tby b with ESMTP id x;\n\tWed, 5 Mar 2025 01:02:03 -0500\n\n";
        assert_eq!(internaldate(head, now()), "\"05-Mar-2025 01:02:03 -0500\"");
    }

    #[test]
    fn without_a_usable_received_header_date_is_used() {
        let head = b"Received: by nobody without a date\nDate: Thu, 7 Nov 2024 23:59:59 +0100\n\n";
        assert_eq!(internaldate(head, now()), "\"07-Nov-2024 23:59:59 +0100\"");
    }

    #[test]
    fn without_either_the_run_time_is_used() {
        assert_eq!(
            internaldate(
                b"Subject: hi\n\nDate: Thu, 7 Nov 2024 23:59:59 +0100\n",
                now()
            ),
            "\"02-Dec-2026 07:36:09 +0000\""
        );
        assert_eq!(
            internaldate(b"Date: not a date\n\n", now()),
            "\"02-Dec-2026 07:36:09 +0000\""
        );
    }
}
