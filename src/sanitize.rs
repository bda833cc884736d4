//! Making text from outside (server replies, certificate names, a
//! command's error output, header fields) safe to print on a terminal.
//!
//! Used by the protocol layer (error excerpts, the `-vv` trace), by commands
//! and the MDA (their stderr), by header display, and by the binary.

use std::fmt::Write as _;

/// Make outside text safe for a terminal, at most `max_chars` characters
/// ("…" appended when cut); invalid UTF-8 becomes U+FFFD.
///
/// Control characters (ESC, CR, LF, DEL, C1 included) become `\xNN`; invisible bidirectional and format
/// characters, which can make text read differently than it is, become
/// `\u{NNNN}`. An escape is never cut in half, and only as much of `text` is
/// read as the output needs, so a huge input costs nothing extra.
pub fn sanitize(text: &[u8], max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0usize;
    let mut piece = String::new();
    for chunk in text.utf8_chunks() {
        let invalid = (!chunk.invalid().is_empty()).then_some(char::REPLACEMENT_CHARACTER);
        for c in chunk.valid().chars().chain(invalid) {
            piece.clear();
            escape_char(c, &mut piece);
            let len = piece.chars().count();
            if count.saturating_add(len) > max_chars {
                out.push('…');
                return out;
            }
            count += len;
            out.push_str(&piece);
        }
    }
    out
}

fn escape_char(c: char, piece: &mut String) {
    let code = u32::from(c);
    // Writing to a String cannot fail.
    if c.is_control() {
        let _ = write!(piece, "\\x{code:02x}");
    } else if matches!(
        code,
        0x061c | 0x200b..=0x200f | 0x2028..=0x202e | 0x2060..=0x2069 | 0xfeff
    ) {
        let _ = write!(piece, "\\u{{{code:04x}}}");
    } else {
        piece.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_terminal_escape_sequences() {
        let s = sanitize(b"\x1b]0;pwned\x07\x1b[2Jhi\r\n\x7f\xc2\x9b", 200);
        assert_eq!(s, "\\x1b]0;pwned\\x07\\x1b[2Jhi\\x0d\\x0a\\x7f\\x9b");
        assert!(!s.chars().any(char::is_control));
    }

    #[test]
    fn sanitize_escapes_bidi_overrides_and_replaces_invalid_utf8() {
        assert_eq!(sanitize("a\u{202e}b".as_bytes(), 50), "a\\u{202e}b");
        assert_eq!(sanitize(b"caf\xe9 ok", 50), "caf\u{fffd} ok");
        assert_eq!(sanitize("grüße".as_bytes(), 50), "grüße");
    }

    #[test]
    fn sanitize_truncates_with_an_ellipsis_and_never_splits_an_escape() {
        assert_eq!(sanitize(b"abcdef", 6), "abcdef");
        assert_eq!(sanitize(b"abcdefg", 6), "abcdef…");
        assert_eq!(sanitize(b"abcd\x1b", 6), "abcd…");
        assert_eq!(sanitize(b"abc", 0), "…");
        assert_eq!(sanitize(b"", 0), "");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn sanitize_output_is_bounded_and_free_of_controls(
                input in prop::collection::vec(any::<u8>(), 0..80),
                max in 0usize..40,
            ) {
                let s = sanitize(&input, max);
                prop_assert!(s.chars().count() <= max + 1);
                prop_assert!(!s.chars().any(char::is_control));
            }
        }
    }
}
