//! UIDL, LIST and STAT replies.

use super::*;

/// One line of a UIDL listing: "msg uid". RFC 1939: uid is 1-70 chars in 0x21..=0x7E. Reject others
/// (MalformedListing) rather than store garbage.
pub fn parse_uidl_listing(body: &[u8]) -> Result<Vec<(u32, String)>, CodecError> {
    body_lines(body).map(parse_uidl_line).collect()
}

/// The text of "+OK 1 uid" (after the status indicator).
pub fn parse_uidl_single(text: &str) -> Result<(u32, String), CodecError> {
    parse_uidl_line(text.as_bytes())
}

/// LIST: "msg size"; extra tokens after size are ignored (RFC 1939 allows them).
pub fn parse_list_listing(body: &[u8]) -> Result<Vec<(u32, u64)>, CodecError> {
    body_lines(body)
        .map(|line| {
            let mut tokens = tokens(line);
            let msg = tokens.next().and_then(message_number);
            let size = tokens.next().and_then(decimal);
            match (msg, size) {
                (Some(msg), Some(size)) => Ok((msg, size)),
                _ => Err(malformed_listing("LIST", line)),
            }
        })
        .collect()
}

/// The text of "+OK count size" (after the status indicator); extra tokens are ignored like LIST's.
pub fn parse_stat(text: &str) -> Result<(u32, u64), CodecError> {
    let line = text.as_bytes();
    let mut tokens = tokens(line);
    // Unlike a message number, a count may be 0.
    let count = tokens
        .next()
        .and_then(decimal)
        .and_then(|n| u32::try_from(n).ok());
    let size = tokens.next().and_then(decimal);
    match (count, size) {
        (Some(count), Some(size)) => Ok((count, size)),
        _ => Err(malformed_listing("STAT", line)),
    }
}

fn parse_uidl_line(line: &[u8]) -> Result<(u32, String), CodecError> {
    let mut tokens = tokens(line);
    let msg = tokens.next().and_then(message_number);
    let uid = tokens.next().filter(|uid| {
        (1..=MAX_UID).contains(&uid.len()) && uid.iter().all(|b| (0x21..=0x7e).contains(b))
    });
    // A third token means the UID had a space in it: not a UID.
    match (msg, uid, tokens.next()) {
        (Some(msg), Some(uid), None) => Ok((msg, String::from_utf8_lossy(uid).into_owned())),
        _ => Err(malformed_listing("UIDL", line)),
    }
}

/// Lines of a decoded body, tolerating a CR the server left in and blank
/// lines, which carry nothing to misread.
pub(super) fn body_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.trim_ascii().is_empty())
}

pub(super) fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ' || b == b'\t')
        .filter(|t| !t.is_empty())
}

/// A plain decimal: `str::parse` alone would also take "+5".
pub(super) fn decimal(token: &[u8]) -> Option<u64> {
    if token.is_empty() || !token.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// Messages are numbered from 1 (RFC 1939).
fn message_number(token: &[u8]) -> Option<u32> {
    decimal(token)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|&n| n >= 1)
}

fn malformed_listing(what: &'static str, line: &[u8]) -> CodecError {
    CodecError::MalformedListing {
        what,
        line: sanitize(line, ERROR_EXCERPT),
    }
}
