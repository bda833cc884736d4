//! Reading the seen state of the tool a user is leaving, so that the first
//! popsync run downloads nothing that was already fetched:
//! fetchmail's `.fetchids`, getmail's `oldmail-*` files, mpop's uidls file.
//! Only the entries that belong to the account's user and host are taken
//! (fetchmail records the poll name, which is usually the host).

use std::path::Path;

/// Which tool wrote the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    Fetchmail,
    Getmail,
    Mpop,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Fetchmail => "fetchmail",
            Source::Getmail => "getmail",
            Source::Mpop => "mpop",
        }
    }
}

/// The UIDLs taken from a file, and how many entries belonged to other
/// accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    pub uidls: Vec<String>,
    pub ignored: usize,
    /// The accounts (user@host) the ignored entries belong to, for the report.
    pub others: Vec<String>,
}

/// A state file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}, line {line}: {message} (is this really a {tool} file?)", path.display())]
    Format {
        path: std::path::PathBuf,
        line: usize,
        tool: &'static str,
        message: String,
    },
}

/// Read `path`, written by `source`, for the account `user` on `host`.
pub fn import_file(
    source: Source,
    path: &Path,
    user: &str,
    host: &str,
) -> Result<Imported, ImportError> {
    let data = std::fs::read(path).map_err(|e| ImportError::Read {
        path: path.to_owned(),
        source: e,
    })?;
    let format = |line: usize, message: String| ImportError::Format {
        path: path.to_owned(),
        line,
        tool: source.name(),
        message,
    };
    match source {
        Source::Fetchmail => fetchmail(&data, user, host).map_err(|(l, m)| format(l, m)),
        Source::Mpop => mpop(&data, user, host).map_err(|(l, m)| format(l, m)),
        Source::Getmail => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            getmail(name, &data, user, host).map_err(|(l, m)| format(l, m))
        }
    }
}

type ParseResult = Result<Imported, (usize, String)>;

fn same_host(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn take(out: &mut Imported, mine: bool, uidl: &str, owner: impl FnOnce() -> String) {
    if mine {
        out.uidls.push(uidl.to_owned());
    } else {
        out.ignored += 1;
        let who = owner();
        if !out.others.contains(&who) {
            out.others.push(who);
        }
    }
}

/// fetchmail `.fetchids`: one `user@pollname UID` per line (the user may be
/// quoted, and may itself contain '@').
fn fetchmail(data: &[u8], user: &str, host: &str) -> ParseResult {
    let text = String::from_utf8_lossy(data);
    let mut out = Imported::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (who, uidl) = line
            .rsplit_once(' ')
            .filter(|(w, u)| !w.is_empty() && !u.is_empty())
            .ok_or_else(|| (i + 1, format!("expected \"user@host UID\", got {:?}", line)))?;
        let (u, h) = who
            .rsplit_once('@')
            .ok_or_else(|| (i + 1, format!("expected \"user@host UID\", got {:?}", line)))?;
        let u = u.trim_matches('"');
        take(&mut out, u == user && same_host(h, host), uidl, || {
            format!("{u}@{h}")
        });
    }
    Ok(out)
}

/// mpop uidls file: `#` comments; a line " N hostname user" starts a list of
/// N UIDs, one per line.
fn mpop(data: &[u8], user: &str, host: &str) -> ParseResult {
    let text = String::from_utf8_lossy(data);
    let mut out = Imported::default();
    let mut remaining = 0usize;
    let mut mine = false;
    let mut owner = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if remaining == 0 {
            let head: Vec<&str> = line.strip_prefix(' ').unwrap_or("").split(' ').collect();
            let [n, h, u] = head.as_slice() else {
                return Err((
                    i + 1,
                    format!("expected \" number-of-uids hostname user\", got {line:?}"),
                ));
            };
            remaining = n
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| (i + 1, format!("invalid number of UIDs {n:?}")))?;
            mine = *u == user && same_host(h, host);
            owner = format!("{u}@{h}");
            continue;
        }
        if line.starts_with(' ') || line.is_empty() {
            return Err((i + 1, format!("too few UIDs for {owner}")));
        }
        take(&mut out, mine, line, || owner.clone());
        remaining -= 1;
    }
    if remaining > 0 {
        return Err((text.lines().count(), format!("too few UIDs for {owner}")));
    }
    Ok(out)
}

/// getmail: one file per account, named `oldmail-HOST-PORT-USER`, with a
/// line `UIDL\0TIMESTAMP` per message.
fn getmail(file_name: &str, data: &[u8], user: &str, host: &str) -> ParseResult {
    let account = file_name.strip_prefix("oldmail-").unwrap_or(file_name);
    // The user is last and the host first; the port between them is digits.
    let prefix = format!("{}-", host.to_ascii_lowercase());
    let mine = account.to_ascii_lowercase().starts_with(&prefix)
        && account[prefix.len()..]
            .split_once('-')
            .is_some_and(|(port, u)| port.chars().all(|c| c.is_ascii_digit()) && u == user);
    let mut out = Imported::default();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let uidl = line
            .split(|&b| b == 0)
            .next()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| (i + 1, "empty message id".to_owned()))?;
        let uidl = String::from_utf8_lossy(uidl);
        take(&mut out, mine, &uidl, || account.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetchmail_lines_are_taken_for_the_right_user_and_poll_name() {
        let data = b"me@example.com@pop.example.com 0001\n\"me@example.com\"@POP.example.com 0002\nother@pop.example.com 0003\nme@example.com@elsewhere 0004\n";
        let got = fetchmail(data, "me@example.com", "pop.example.com").unwrap();
        assert_eq!(got.uidls, ["0001", "0002"]);
        assert_eq!(got.ignored, 2);
        assert!(fetchmail(b"garbage\n", "u", "h").is_err());
    }

    #[test]
    fn mpop_lists_are_taken_for_the_right_host_and_user() {
        let data = b"# This file was generated by mpop\n#\n 2 pop.example.com me\nA1\nA2\n 1 pop.example.com you\nB1\n";
        let got = mpop(data, "me", "pop.example.com").unwrap();
        assert_eq!(got.uidls, ["A1", "A2"]);
        assert_eq!(got.ignored, 1);
        assert_eq!(got.others, ["you@pop.example.com"]);
        assert!(mpop(b" 3 h u\nA\n", "u", "h").is_err());
    }

    #[test]
    fn getmail_file_name_names_the_account() {
        let data = b"uid-1\x001700000000\nuid-2\x001700000001\n";
        let got = getmail(
            "oldmail-pop.example.com-995-me",
            data,
            "me",
            "pop.example.com",
        )
        .unwrap();
        assert_eq!(got.uidls, ["uid-1", "uid-2"]);
        let other = getmail(
            "oldmail-pop.example.com-995-you",
            data,
            "me",
            "pop.example.com",
        )
        .unwrap();
        assert_eq!((other.uidls.len(), other.ignored), (0, 2));
    }
}
