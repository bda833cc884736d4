//! mboxrd quoting: one more `>` on every line matching `^>*From `, streamed
//! with O(1) state so a message never has to be held whole; and the asctime
//! date of the `From ` separator.

use chrono::{DateTime, Utc};

/// The asctime date of a `From ` line.
pub(super) fn from_date(t: DateTime<Utc>) -> String {
    t.format("%a %b %e %H:%M:%S %Y").to_string()
}

/// Streaming mboxrd quoting: one more '>' on lines matching `^>*From `,
/// across any chunk boundary.
#[derive(Debug, Default)]
pub(super) struct FromQuoter {
    in_line: bool,
    gts: u64,
    matched: usize,
}

impl FromQuoter {
    pub(super) fn quote(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        const FROM: &[u8] = b"From ";
        while !input.is_empty() {
            if self.in_line {
                match memchr::memchr(b'\n', input) {
                    Some(i) => {
                        out.extend_from_slice(&input[..=i]);
                        input = &input[i + 1..];
                        self.in_line = false;
                    }
                    None => {
                        out.extend_from_slice(input);
                        return;
                    }
                }
                continue;
            }
            let b = input[0];
            if self.matched == 0 && b == b'>' {
                self.gts += 1;
                input = &input[1..];
            } else if b == FROM[self.matched] {
                self.matched += 1;
                input = &input[1..];
                if self.matched == FROM.len() {
                    out.push(b'>');
                    self.emit_pending(out);
                    self.in_line = true;
                }
            } else {
                self.emit_pending(out);
                // Re-read `b` as an ordinary byte of the line (it may be '\n').
                self.in_line = true;
            }
        }
    }

    fn emit_pending(&mut self, out: &mut Vec<u8>) {
        out.extend(std::iter::repeat_n(b'>', self.gts as usize));
        out.extend_from_slice(&b"From "[..self.matched]);
        self.gts = 0;
        self.matched = 0;
    }

    /// The message ended: emit what was held back while matching.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) {
        self.emit_pending(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote_all(chunks: &[&[u8]]) -> Vec<u8> {
        let mut q = FromQuoter::default();
        let mut out = Vec::new();
        for c in chunks {
            q.quote(c, &mut out);
        }
        q.finish(&mut out);
        out
    }

    #[test]
    fn from_lines_get_one_more_gt_and_others_are_untouched() {
        let input = b"From a\n>From b\n>>From c\nFrom\nFro\n>x\nxFrom d\n>>>\n";
        let want = b">From a\n>>From b\n>>>From c\nFrom\nFro\n>x\nxFrom d\n>>>\n";
        assert_eq!(quote_all(&[input]), want);
    }

    #[test]
    fn quoting_is_the_same_at_every_split_point() {
        let input: &[u8] = b"x\n>>From y\nFrom z\n>Fro\nFrom";
        let whole = quote_all(&[input]);
        assert_eq!(whole, b"x\n>>>From y\n>From z\n>Fro\nFrom");
        for i in 0..=input.len() {
            assert_eq!(
                quote_all(&[&input[..i], &input[i..]]),
                whole,
                "split at {i}"
            );
        }
    }

    /// mboxrd reading: one `>` less on lines matching `^>+From `.
    fn unquote(quoted: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in quoted.split_inclusive(|&b| b == b'\n') {
            let gts = line.iter().take_while(|&&b| b == b'>').count();
            if gts > 0 && line[gts..].starts_with(b"From ") {
                out.extend_from_slice(&line[1..]);
            } else {
                out.extend_from_slice(line);
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn quoting_round_trips_and_leaves_no_bare_from_line(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::string::string_regex(">{0,3}From [a-z ]{0,8}").unwrap(),
                    proptest::string::string_regex(">{0,3}Fro?m?").unwrap(),
                    proptest::string::string_regex("[ -~]{0,12}").unwrap(),
                ],
                0..20,
            ),
            cut in 0usize..400,
        ) {
            let input = lines.join("\n").into_bytes();
            let cut = cut.min(input.len());
            let quoted = quote_all(&[&input[..cut], &input[cut..]]);
            proptest::prop_assert_eq!(unquote(&quoted), input);
            for line in quoted.split(|&b| b == b'\n') {
                proptest::prop_assert!(!line.starts_with(b"From "), "bare From line in {:?}", quoted);
            }
        }
    }
}
