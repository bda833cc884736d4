//! Reading the seen state of the tool a user is leaving, so that the first
//! popsync run downloads nothing that was already fetched:
//! fetchmail's `.fetchids`, getmail's `oldmail-*` files, mpop's uidls file.
//! Only the entries that belong to the account's user and host are taken.
//!
//! The formats, as the tools really write them (checked against fetchmail
//! 6.4, getmail 6.18 and mpop 1.4 in tests/import.rs):
//! - fetchmail `~/.fetchids`: one `REMOTEUSER@SERVER UIDL` line per message,
//!   SERVER being the `via` host of the poll entry if it has one, else the
//!   poll name. The user may itself contain '@' (and spaces), the UIDL may
//!   contain '@'. fetchmail compares user and server without regard to case.
//! - getmail `oldmail-SERVER-PORT-USERNAME` in the getmail directory, one file
//!   per POP3 account, one `UIDL\0UNIX-TIME` line per message; in the file
//!   name every run of the characters `/\:;<>|` is replaced by one '-'.
//! - mpop uidls file (default `~/.mpop_uidls/USER_at_HOST`): `#` comment lines
//!   at the top, then per account a line ` N HOST USER` (a leading space,
//!   N >= 1) followed by exactly N UIDs, one per line. A UID may begin with
//!   '#' (mpop reads comments only before the first list).

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

/// fetchmail `.fetchids`: one `user@server UID` per line (the user may be
/// quoted, may itself contain '@' or spaces, and the UID may contain '@').
/// User and server are compared without regard to case, as fetchmail does.
fn fetchmail(data: &[u8], user: &str, host: &str) -> ParseResult {
    let text = String::from_utf8_lossy(data);
    let mut out = Imported::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || (i + 1, format!("expected \"user@host UID\", got {line:?}"));
        let (who, uidl) = line
            .rsplit_once([' ', '\t'])
            .map(|(w, u)| (w.trim_end_matches([' ', '\t']), u))
            .filter(|(w, u)| !w.is_empty() && !u.is_empty())
            .ok_or_else(bad)?;
        let (u, h) = who.rsplit_once('@').ok_or_else(bad)?;
        let u = u.trim_matches('"');
        let mine = u.eq_ignore_ascii_case(user) && same_host(h, host);
        take(&mut out, mine, uidl, || format!("{u}@{h}"));
    }
    Ok(out)
}

/// mpop uidls file: `#` comments before the first list; a line
/// " N hostname user" starts a list of N (at least 1) UIDs, one per line.
fn mpop(data: &[u8], user: &str, host: &str) -> ParseResult {
    let text = String::from_utf8_lossy(data);
    let mut out = Imported::default();
    let mut remaining = 0usize;
    let mut mine = false;
    let mut owner = String::new();
    let mut in_header = true;
    for (i, line) in text.lines().enumerate() {
        // As mpop reads it: comments only before the first list, so that a
        // UID that begins with '#' is still a UID.
        if in_header && line.starts_with('#') {
            continue;
        }
        in_header = false;
        if remaining == 0 {
            let head: Vec<&str> = line.strip_prefix(' ').unwrap_or("").split(' ').collect();
            let [n, h, u] = head.as_slice() else {
                return Err((
                    i + 1,
                    format!("expected \" number-of-uids hostname user\", got {line:?}"),
                ));
            };
            if h.is_empty() || u.is_empty() {
                return Err((i + 1, format!("missing host name or user in {line:?}")));
            }
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

/// getmail's file-name form of a server or user name: every run of the
/// characters `/\:;<>|` becomes one '-' (getmail's `STRIP_CHAR_RE`).
fn getmail_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_run = false;
    for c in s.chars() {
        if matches!(c, '/' | '\\' | ':' | ';' | '<' | '>' | '|') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

/// getmail: one file per account, named `oldmail-SERVER-PORT-USER`, with a
/// line `UIDL\0TIMESTAMP` per message.
fn getmail(file_name: &str, data: &[u8], user: &str, host: &str) -> ParseResult {
    let account = file_name.strip_prefix("oldmail-").unwrap_or(file_name);
    // The server is first and the user last; the port between them is digits.
    // Server and user may contain '-' themselves.
    let prefix = format!("{}-", getmail_name(host).to_ascii_lowercase());
    let user = getmail_name(user);
    let mine = account.to_ascii_lowercase().starts_with(&prefix)
        && account[prefix.len()..]
            .split_once('-')
            .is_some_and(|(port, u)| {
                !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && u == user
            });
    let mut out = Imported::default();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        // getmail strips white space around each line.
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let (uidl, _time) = line
            .iter()
            .position(|&b| b == 0)
            .map(|nul| (&line[..nul], &line[nul + 1..]))
            .filter(|(u, t)| !u.is_empty() && !t.is_empty() && t.iter().all(u8::is_ascii_digit))
            .ok_or_else(|| {
                (
                    i + 1,
                    format!(
                        "expected \"UIDL\\0TIMESTAMP\", got {:?}",
                        String::from_utf8_lossy(line)
                    ),
                )
            })?;
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

    #[test]
    fn fetchmail_file_as_fetchmail_6_4_writes_it() {
        // Written by fetchmail 6.4.37 for `poll 127.0.0.1 ... user alice`
        // and `user bob`, Dovecot UIDLs; then hand-made edge cases: a UIDL
        // with '@' (InterMail), a user with '@' and another case, leading
        // blanks, a user with a space (Lotus Notes).
        let data = b"alice@127.0.0.1 000000016b026e8c\n\
                     alice@127.0.0.1 000000026b026e8c\n\
                     bob@127.0.0.1 000000036b026e8c\n\
                     alice@127.0.0.1 abc@def.example\n\
                     Alice@127.0.0.1 UPPER\n\
                     \t alice@127.0.0.1 indented\n\
                     john doe@127.0.0.1 notes\n";
        let got = fetchmail(data, "alice", "127.0.0.1").unwrap();
        assert_eq!(
            got.uidls,
            [
                "000000016b026e8c",
                "000000026b026e8c",
                "abc@def.example",
                "UPPER",
                "indented"
            ]
        );
        assert_eq!(got.ignored, 2);
        assert_eq!(got.others, ["bob@127.0.0.1", "john doe@127.0.0.1"]);
        let notes = fetchmail(data, "john doe", "127.0.0.1").unwrap();
        assert_eq!(notes.uidls, ["notes"]);
    }

    #[test]
    fn mpop_file_as_mpop_1_4_writes_it() {
        let data = b"# This file was generated by mpop version 1.4.18.\n\
                     #\n\
                     # Lines starting with a space begin a new UID list and have\n\
                     # the following format: \" number-of-uids hostname user\".\n\
                     # The list of UIDs follows in ascending order, with one UID per line.\n\
                     #\n \
                     2 127.0.0.1 alice\n\
                     #hash-uid\n\
                     000000016b026e8c\n \
                     1 127.0.0.1 bob\n\
                     000000036b026e8c\n";
        let got = mpop(data, "alice", "127.0.0.1").unwrap();
        assert_eq!(got.uidls, ["#hash-uid", "000000016b026e8c"]);
        assert_eq!(
            (got.ignored, got.others.as_slice()),
            (1, &["bob@127.0.0.1".to_owned()][..])
        );
        assert!(
            mpop(b" 0 h u\n", "u", "h").is_err(),
            "mpop never writes an empty list"
        );
        assert!(mpop(b"uid-without-list\n", "u", "h").is_err());
    }

    #[test]
    fn getmail_file_as_getmail_6_writes_it() {
        // getmail 6.18: `oldmail-127.0.0.1-995-alice`, lines UIDL NUL time.
        let data = b"000000066b026e8c\x001795321528\n000000046b026e8c\x001795321528\n";
        let got = getmail("oldmail-127.0.0.1-995-alice", data, "alice", "127.0.0.1").unwrap();
        assert_eq!(got.uidls, ["000000066b026e8c", "000000046b026e8c"]);
        // Host and user with '-', and getmail's replacement of "/\\:;<>|" runs.
        let mine = getmail(
            "oldmail-pop-1.example.com-110-me-x-y",
            data,
            "me/x:;y",
            "POP-1.example.com",
        )
        .unwrap();
        assert_eq!((mine.uidls.len(), mine.ignored), (2, 0));
        let other = getmail(
            "oldmail-pop-1.example.com-110-me",
            data,
            "me-x",
            "pop-1.example.com",
        )
        .unwrap();
        assert_eq!((other.uidls.len(), other.ignored), (0, 2));
        assert!(getmail("oldmail-h-1-u", b"no-nul-here\n", "u", "h").is_err());
        assert!(getmail("oldmail-h-1-u", b"uid\x00not-a-time\n", "u", "h").is_err());
    }
}
