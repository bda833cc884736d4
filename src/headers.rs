//! Reading header fields out of a message's header block (RFC 5322 folding),
//! and turning them into text safe to show on a terminal (RFC 2047 encoded
//! words decoded, control characters escaped).

use rfc2047_decoder::{Decoder, RecoverStrategy};

/// The unfolded value of the first `name:` field in the header block of
/// `message` (which may go on past the headers), or None.
pub fn field(message: &[u8], name: &str) -> Option<String> {
    let end = memchr::memmem::find(message, b"\n\n").unwrap_or(message.len());
    let head = message.get(..end)?;
    let mut value: Option<Vec<u8>> = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        match value.as_mut() {
            Some(v) if continuation => {
                v.push(b' ');
                v.extend_from_slice(line.trim_ascii_start());
                continue;
            }
            Some(_) => break,
            None => {}
        }
        if !continuation
            && line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && line[name.len()] == b':'
        {
            value = Some(line[name.len() + 1..].trim_ascii().to_vec());
        }
    }
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// A header value for display: encoded words decoded (any charset the
/// decoder knows; undecodable ones are shown as they are), then sanitised and
/// cut to `max_chars`.
pub fn display(value: &str, max_chars: usize) -> String {
    let decoded = Decoder::new()
        .too_long_encoded_word_strategy(RecoverStrategy::Decode)
        .decode(value.as_bytes())
        .unwrap_or_else(|_| value.to_owned());
    crate::sanitize::sanitize(decoded.as_bytes(), max_chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus\n =?ISO-8859-1?B?S/Zsbg==?=\nFROM: \"A\" <a@b>\nX: y\n\nSubject: body\n";

    #[test]
    fn fields_are_found_case_insensitively_and_unfolded() {
        assert_eq!(field(MSG, "from").as_deref(), Some("\"A\" <a@b>"));
        assert_eq!(
            field(MSG, "Subject").as_deref(),
            Some("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus =?ISO-8859-1?B?S/Zsbg==?=")
        );
        assert_eq!(field(MSG, "Date"), None);
        assert_eq!(field(b"Xy: 1\n\n", "X"), None);
    }

    #[test]
    fn encoded_words_in_several_charsets_are_decoded() {
        let subject = field(MSG, "subject").unwrap();
        assert_eq!(display(&subject, 100), "Grüße aus Köln");
    }

    #[test]
    fn terminal_escapes_from_the_server_are_neutralised() {
        let shown = display("hi \x1b]0;pwned\x07 there", 100);
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07'),
            "{shown}"
        );
        let encoded = display("=?UTF-8?B?G1sybQ==?=", 100);
        assert!(!encoded.contains('\x1b'), "{encoded}");
    }
}
