//! Status lines and line splitting: `parse_status` and `split_line` on
//! arbitrary server bytes, plus the "+OK" payload parsers (`parse_stat`,
//! `parse_uidl_single`) and `sanitize`, which quotes server text in errors.
//!
//! Besides "no panic", checks what the callers rely on: `split_line` never
//! reports a line longer than MAX_LINE or past the buffer, the terminator it
//! reports is "\n" or "\r\n", and "need more" only while the buffer could
//! still hold a legal line; error texts are sanitised and short.

use popsync::pop3::codec::{
    CodecError, MAX_LINE, Status, parse_stat, parse_status, parse_uidl_single, split_line,
};
use popsync::sanitize::sanitize;

/// What an error message may quote of a line (ERROR_EXCERPT in codec.rs,
/// plus the ellipsis); generous so that the check is about "bounded".
const EXCERPT_BOUND: usize = 101;

fn check_error(e: &CodecError) {
    let quoted = match e {
        CodecError::MalformedStatus { line } | CodecError::MalformedListing { line, .. } => line,
        _ => return,
    };
    assert!(quoted.chars().count() <= EXCERPT_BOUND, "{quoted:?}");
    assert!(!quoted.chars().any(char::is_control), "{quoted:?}");
}

fn check_status(line: &[u8]) {
    match parse_status(line) {
        Ok(s) => {
            assert!(line.len() <= MAX_LINE);
            assert_eq!(s.text.trim_ascii(), s.text, "text is trimmed");
            if s.status == Status::Continue {
                assert!(s.code.is_none(), "a challenge has no response code");
            }
            // Whatever parsed as a status starts with its indicator.
            let head = &line[..line.len().min(4)];
            match s.status {
                Status::Ok => assert!(head.len() >= 3 && head[..3].eq_ignore_ascii_case(b"+OK")),
                Status::Err => assert!(head.eq_ignore_ascii_case(b"-ERR")),
                Status::Continue => assert_eq!(line[0], b'+'),
            }
        }
        Err(e) => check_error(&e),
    }
}

/// Runs every check of this target on one input; panics on a failure.
pub fn check(data: &[u8]) {
    check_status(data);

    match split_line(data) {
        Ok(Some((len, total))) => {
            assert!(len <= MAX_LINE, "line of {len} octets accepted");
            assert!(len < total && total <= data.len());
            let term = &data[len..total];
            assert!(term == b"\n" || term == b"\r\n", "terminator {term:?}");
            assert!(!data[..len].contains(&b'\n'), "a LF inside the line");
            // What the session does next with the line.
            check_status(&data[..len]);
        }
        Ok(None) => {
            assert!(!data.contains(&b'\n'), "need more although a LF is there");
            assert!(
                data.len() <= MAX_LINE + 1,
                "need more for {} octets",
                data.len()
            );
        }
        Err(e) => {
            assert_eq!(e, CodecError::LineTooLong { max: MAX_LINE });
            // A legal line must not be refused.
            if let Some(lf) = data.iter().position(|&b| b == b'\n') {
                let len = if lf > 0 && data[lf - 1] == b'\r' {
                    lf - 1
                } else {
                    lf
                };
                assert!(len > MAX_LINE, "line of {len} octets refused");
            } else {
                assert!(data.len() > MAX_LINE, "{} octets refused", data.len());
            }
        }
    }

    let text = String::from_utf8_lossy(data);
    match parse_stat(&text) {
        Ok(_) => {}
        Err(e) => check_error(&e),
    }
    match parse_uidl_single(&text) {
        Ok((n, uid)) => {
            assert!(n >= 1);
            assert!((1..=70).contains(&uid.len()), "uid {uid:?}");
            assert!(
                uid.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "uid {uid:?}"
            );
        }
        Err(e) => check_error(&e),
    }

    let max = data.first().map_or(0, |&b| usize::from(b % 64));
    let s = sanitize(data, max);
    assert!(s.chars().count() <= max + 1);
    assert!(!s.chars().any(char::is_control));
}
