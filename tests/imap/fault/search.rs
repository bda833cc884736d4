//! Search keys (RFC 3501 6.4.4, the part popsync may use) and sequence or
//! UID sets, as the scripted IMAP server's SEARCH and FETCH read them.

use super::Stored;
use super::message::{body_of, contains_ci, header_values};
use super::parse::Tok;
use super::state::Mbox;

/// A sequence or UID set as ranges; `*` is `max`.
pub(super) fn parse_set(set: &str, max: u32) -> Option<Vec<(u32, u32)>> {
    let num = |s: &str| -> Option<u32> { if s == "*" { Some(max) } else { s.parse().ok() } };
    set.split(',')
        .map(|piece| {
            let (a, b) = match piece.split_once(':') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => (num(piece)?, num(piece)?),
            };
            Some((a.min(b), a.max(b)))
        })
        .collect()
}

pub(super) fn in_set(ranges: &[(u32, u32)], n: u32) -> bool {
    ranges.iter().any(|&(a, b)| a <= n && n <= b)
}

pub(super) fn is_set(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b"*:,".contains(&b))
}

/// A search key (RFC 3501 6.4.4), the part popsync may use.
pub(super) enum Key {
    And(Vec<Key>),
    Or(Box<Key>, Box<Key>),
    Not(Box<Key>),
    All,
    Header(String, Vec<u8>),
    Text(Vec<u8>),
    Body(Vec<u8>),
    Uid(Vec<(u32, u32)>),
    Seq(Vec<(u32, u32)>),
    Flag(String, bool),
    Larger(usize),
    Smaller(usize),
}

impl Key {
    pub(super) fn matches(&self, seq: u32, m: &Stored) -> bool {
        match self {
            Key::And(keys) => keys.iter().all(|k| k.matches(seq, m)),
            Key::Or(a, b) => a.matches(seq, m) || b.matches(seq, m),
            Key::Not(k) => !k.matches(seq, m),
            Key::All => true,
            Key::Header(field, needle) => header_values(&m.bytes, field)
                .iter()
                .any(|v| contains_ci(v, needle)),
            Key::Text(needle) => contains_ci(&m.bytes, needle),
            Key::Body(needle) => contains_ci(body_of(&m.bytes), needle),
            Key::Uid(r) => in_set(r, m.uid),
            Key::Seq(r) => in_set(r, seq),
            Key::Flag(flag, set) => m.flags.iter().any(|f| f.eq_ignore_ascii_case(flag)) == *set,
            Key::Larger(n) => m.bytes.len() > *n,
            Key::Smaller(n) => m.bytes.len() < *n,
        }
    }
}

pub(super) fn parse_key(toks: &[Tok], pos: &mut usize, mbox: &Mbox) -> Result<Key, String> {
    let tok = toks.get(*pos).ok_or("missing search key")?.clone();
    *pos += 1;
    let arg = |pos: &mut usize| -> Result<Tok, String> {
        let t = toks.get(*pos).ok_or("missing argument")?.clone();
        *pos += 1;
        Ok(t)
    };
    if tok == Tok::Open {
        let mut keys = Vec::new();
        while toks.get(*pos) != Some(&Tok::Close) {
            if *pos >= toks.len() {
                return Err("unbalanced parenthesis".into());
            }
            keys.push(parse_key(toks, pos, mbox)?);
        }
        *pos += 1;
        return Ok(Key::And(keys));
    }
    let word = tok.text().ok_or("unexpected parenthesis")?;
    let upper = word.to_ascii_uppercase();
    let string = |t: Tok| t.bytes().ok_or_else(|| "expected a string".to_owned());
    let max_uid = mbox.messages.last().map_or(0, |m| m.uid);
    Ok(match upper.as_str() {
        "ALL" => Key::All,
        "HEADER" => {
            let field = arg(pos)?.text().ok_or("expected a field name")?;
            Key::Header(field, string(arg(pos)?)?)
        }
        "SUBJECT" | "FROM" | "TO" | "CC" | "BCC" => Key::Header(upper.clone(), string(arg(pos)?)?),
        "TEXT" => Key::Text(string(arg(pos)?)?),
        "BODY" => Key::Body(string(arg(pos)?)?),
        "UID" => {
            let set = arg(pos)?.text().ok_or("expected a UID set")?;
            Key::Uid(parse_set(&set, max_uid).ok_or("bad UID set")?)
        }
        "OR" => {
            let a = parse_key(toks, pos, mbox)?;
            let b = parse_key(toks, pos, mbox)?;
            Key::Or(Box::new(a), Box::new(b))
        }
        "NOT" => Key::Not(Box::new(parse_key(toks, pos, mbox)?)),
        "SEEN" | "ANSWERED" | "FLAGGED" | "DELETED" | "DRAFT" => {
            Key::Flag(format!("\\{word}"), true)
        }
        "UNSEEN" | "UNANSWERED" | "UNFLAGGED" | "UNDELETED" | "UNDRAFT" => {
            Key::Flag(format!("\\{}", &word[2..]), false)
        }
        "KEYWORD" => Key::Flag(arg(pos)?.text().ok_or("expected a keyword")?, true),
        "UNKEYWORD" => Key::Flag(arg(pos)?.text().ok_or("expected a keyword")?, false),
        "LARGER" | "SMALLER" => {
            let n: usize = arg(pos)?
                .text()
                .and_then(|s| s.parse().ok())
                .ok_or("expected a number")?;
            if upper == "LARGER" {
                Key::Larger(n)
            } else {
                Key::Smaller(n)
            }
        }
        _ if is_set(&word) => {
            Key::Seq(parse_set(&word, mbox.messages.len() as u32).ok_or("bad sequence set")?)
        }
        _ => return Err(format!("unsupported search key {word}")),
    })
}
