//! A stored message as the scripted IMAP server's SEARCH and FETCH see it:
//! its header section and body, its header fields unfolded, and each FETCH
//! data item rendered to wire bytes.

use super::Stored;
use super::parse::quoted;

pub(super) fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let hay = hay.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase();
    hay.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// Where the header section ends (after the blank line).
pub(super) fn header_end(bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        let nl = bytes[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |p| i + p + 1);
        let line = &bytes[i..nl];
        if line == b"\r\n" || line == b"\n" {
            return nl;
        }
        i = nl;
    }
    bytes.len()
}

pub(super) fn body_of(bytes: &[u8]) -> &[u8] {
    &bytes[header_end(bytes)..]
}

/// The header fields of a message: (name, unfolded value), in order.
pub(super) fn header_fields(bytes: &[u8]) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let head = &bytes[..header_end(bytes)];
    let mut fields: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    for line in head.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(last) = fields.last_mut() {
                last.1.extend_from_slice(line);
                last.2.extend_from_slice(line);
            }
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
        let value = line.get(colon + 1..).unwrap_or_default().to_vec();
        fields.push((name, value, line.to_vec()));
    }
    for f in &mut fields {
        f.1.retain(|&b| b != b'\r' && b != b'\n');
    }
    fields
}

pub(super) fn header_values(bytes: &[u8], field: &str) -> Vec<Vec<u8>> {
    header_fields(bytes)
        .into_iter()
        .filter(|(name, _, _)| name.eq_ignore_ascii_case(field))
        .map(|(_, value, _)| value)
        .collect()
}

pub(super) fn literal(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{{{}}}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out
}

/// One FETCH data item for `m`; None if the item is not supported.
pub(super) fn fetch_item(item: &str, m: &Stored) -> Option<Vec<u8>> {
    let date = m
        .internaldate
        .clone()
        .unwrap_or_else(|| "01-Jan-2026 00:00:00 +0000".to_owned());
    let header = &m.bytes[..header_end(&m.bytes)];
    Some(match item {
        "UID" => format!("UID {}", m.uid).into_bytes(),
        "FLAGS" => format!("FLAGS ({})", m.flags.join(" ")).into_bytes(),
        "INTERNALDATE" => format!("INTERNALDATE {}", quoted(&date)).into_bytes(),
        "RFC822.SIZE" => format!("RFC822.SIZE {}", m.bytes.len()).into_bytes(),
        "RFC822" | "BODY[]" | "BODY.PEEK[]" => {
            let name = if item == "RFC822" { "RFC822" } else { "BODY[]" };
            let mut out = format!("{name} ").into_bytes();
            out.extend(literal(&m.bytes));
            out
        }
        "RFC822.HEADER" | "BODY[HEADER]" | "BODY.PEEK[HEADER]" => {
            let name = if item == "RFC822.HEADER" {
                "RFC822.HEADER"
            } else {
                "BODY[HEADER]"
            };
            let mut out = format!("{name} ").into_bytes();
            out.extend(literal(header));
            out
        }
        "RFC822.TEXT" | "BODY[TEXT]" | "BODY.PEEK[TEXT]" => {
            let mut out = b"BODY[TEXT] ".to_vec();
            out.extend(literal(body_of(&m.bytes)));
            out
        }
        _ => {
            let section = item
                .strip_prefix("BODY.PEEK[")
                .or_else(|| item.strip_prefix("BODY["))?
                .strip_suffix(']')?;
            let (not, list) = if let Some(l) = section.strip_prefix("HEADER.FIELDS.NOT") {
                (true, l)
            } else {
                (false, section.strip_prefix("HEADER.FIELDS")?)
            };
            let names: Vec<String> = list
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split_whitespace()
                .map(|s| s.trim_matches('"').to_ascii_uppercase())
                .collect();
            let mut picked = Vec::new();
            for (name, _, raw) in header_fields(&m.bytes) {
                if names.contains(&name.to_ascii_uppercase()) != not {
                    picked.extend_from_slice(&raw);
                }
            }
            picked.extend_from_slice(b"\r\n");
            let mut out = format!("BODY[{section}] ").into_bytes();
            out.extend(literal(&picked));
            out
        }
    })
}
