//! How the scripted IMAP server reads a command: the pieces off the wire
//! (text and literals), a `{n}` or `{n+}` at the end of a line, tokens; and
//! how it shows a command in its record (literals as `<N octets>`, secrets
//! masked) and quotes a string in a reply.

/// One piece of a command as read off the wire.
#[derive(Debug)]
pub(super) enum Part {
    Text(Vec<u8>),
    Literal(Vec<u8>),
}

/// A token of a command.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Atom(String),
    Str(Vec<u8>),
    /// A literal's bytes.
    Lit(Vec<u8>),
    Open,
    Close,
}

impl Tok {
    pub(super) fn text(&self) -> Option<String> {
        match self {
            Tok::Atom(s) => Some(s.clone()),
            Tok::Str(b) | Tok::Lit(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
    pub(super) fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Tok::Atom(s) => Some(s.clone().into_bytes()),
            Tok::Str(b) | Tok::Lit(b) => Some(b.clone()),
            _ => None,
        }
    }
}

/// `{n}` or `{n+}` at the end of a line: (n, non-synchronising).
pub fn literal_at_end(line: &[u8]) -> Option<(usize, bool)> {
    let line = std::str::from_utf8(line).ok()?;
    let inner = line.strip_suffix('}')?;
    let open = inner.rfind('{')?;
    let spec = &inner[open + 1..];
    let (digits, plus) = match spec.strip_suffix('+') {
        Some(d) => (d, true),
        None => (spec, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, plus))
}

pub(super) fn tokenize(parts: &[Part]) -> Vec<Tok> {
    let mut toks = Vec::new();
    for part in parts {
        match part {
            Part::Literal(bytes) => toks.push(Tok::Lit(bytes.clone())),
            Part::Text(text) => {
                let mut text: &[u8] = text;
                if let Some(open) = text.iter().rposition(|&b| b == b'{')
                    && literal_at_end(text).is_some()
                {
                    text = &text[..open];
                }
                tokenize_text(text, &mut toks);
            }
        }
    }
    toks
}

pub(super) fn tokenize_text(text: &[u8], toks: &mut Vec<Tok>) {
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b' ' => i += 1,
            b'(' => {
                toks.push(Tok::Open);
                i += 1;
            }
            b')' => {
                toks.push(Tok::Close);
                i += 1;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    if text[i] == b'\\' && i + 1 < text.len() {
                        i += 1;
                    }
                    s.push(text[i]);
                    i += 1;
                }
                i += 1;
                toks.push(Tok::Str(s));
            }
            _ => {
                // An atom; a [section] may hold spaces and parentheses.
                let start = i;
                let mut depth = 0;
                while i < text.len() {
                    match text[i] {
                        b'[' => depth += 1,
                        b']' => depth -= 1,
                        b' ' | b'(' | b')' if depth == 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
                toks.push(Tok::Atom(
                    String::from_utf8_lossy(&text[start..i]).into_owned(),
                ));
            }
        }
    }
}

/// A command as recorded: literals as `{N}`, and from token `mask_from` on
/// (LOGIN's password) masked.
pub(super) fn shown(parts: &[Part], mask_from: usize) -> String {
    let mut s = String::new();
    for p in parts {
        match p {
            Part::Text(t) => s.push_str(&String::from_utf8_lossy(t)),
            Part::Literal(b) => s.push_str(&format!("<{} octets>", b.len())),
        }
    }
    if mask_from != usize::MAX {
        let words: Vec<&str> = s.splitn(mask_from + 1, ' ').collect();
        if words.len() > mask_from {
            return format!("{} ***", words[..mask_from].join(" "));
        }
    }
    s
}

pub(super) fn masked(line: &[u8], keep: usize) -> String {
    shown(&[Part::Text(line.to_vec())], keep)
}

pub(super) fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
