//! Mail for the tests: putting a message into a server's Maildir as an MTA
//! would, a realistic sample message, reading a Maildir back, and TOML
//! quoting for the configs that name them.

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static DELIVERY_SEQ: AtomicU64 = AtomicU64::new(0);

/// Puts a message into a server's Maildir (new/), as an MTA would: written
/// to tmp/, handed to the mail `owner`, renamed into new/. CRLF line ends
/// are stored as LF, which is how Dovecot and Courier keep them, so a
/// server's copy and a byte-exact client see the same bytes. File names
/// start with the time and an increasing number, so servers number the
/// messages in delivery order.
pub fn deliver_into_maildir(maildir: &Path, owner: (u32, u32), raw: &[u8]) {
    let bytes = crlf_to_lf(raw);
    let seq = DELIVERY_SEQ.fetch_add(1, Ordering::Relaxed);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let name = format!(
        "{secs}.M{seq:06}P{pid}Q{seq}.popsync-harness",
        pid = std::process::id()
    );
    let tmp = maildir.join("tmp").join(&name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    file.write_all(&bytes).expect("write message");
    drop(file);
    // As root the mail owner is an unprivileged account; as a normal user it
    // is that user, and chown to oneself is allowed.
    std::os::unix::fs::chown(&tmp, Some(owner.0), Some(owner.1))
        .unwrap_or_else(|e| panic!("chown {}: {e}", tmp.display()));
    fs::rename(&tmp, maildir.join("new").join(&name)).expect("move message into new/");
}

fn crlf_to_lf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

/// A realistic RFC 5322 message (LF line ends) with the lines that trip
/// careless POP3 clients: a line that is only ".", lines starting with "." and
/// "..", a "From " line in the body (mbox quoting), a line longer than 1000
/// octets, UTF-8 text and trailing white space. Messages differ by `i` in
/// headers, body and size; `body_lines` adds that many ordinary lines.
pub fn sample_message(i: usize, body_lines: usize) -> Vec<u8> {
    let mut m = String::new();
    let minute = i % 60;
    let _ = write!(
        m,
        "Return-Path: <sender{i}@example.org>\n\
         Received: from mx.example.org (mx.example.org [192.0.2.{host}])\n\
         \tby pop.example.net with ESMTPS id msg{i}; Mon, 2 Jun 2025 10:{minute:02}:00 +0000\n\
         From: Sender Number {i} <sender{i}@example.org>\n\
         To: Alice <alice@example.net>\n\
         Subject: Test message {i}\n\
         Date: Mon, 2 Jun 2025 10:{minute:02}:00 +0000\n\
         Message-ID: <{i}.popsync-test@example.org>\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n\
         \n\
         Hello Alice,\n\
         \n\
         this is message {i}. The next line is a single dot:\n\
         .\n\
         ..this line starts with two dots\n\
         .and this one with one\n\
         From me, with a line that mbox would have to quote\n\
         >From an already quoted line\n\
         Grüße aus Köln — ünïcödé\n\
         trailing white space   \n",
        host = i % 250 + 1,
    );
    // A line longer than the 1000 octets RFC 5322 allows: servers and
    // clients must still pass it through unchanged.
    let long: String = (0..1200 + i)
        .map(|k| char::from(b'a' + (k % 26) as u8))
        .collect();
    m.push_str(&long);
    m.push('\n');
    for k in 0..body_lines {
        let _ = writeln!(m, "Body line {k} of message {i}: the quick brown fox.");
    }
    m.push_str("..\n-- \nSender Number ");
    let _ = writeln!(m, "{i}");
    m.into_bytes()
}

/// One file of a Maildir.
#[derive(Debug, Clone)]
pub struct MaildirFile {
    /// "new" or "cur".
    pub subdir: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The files in `maildir`'s new/ and cur/ (not tmp/), sorted by file name.
/// A missing Maildir has no files. A server may move a file from new/ to
/// cur/ while it is being read (Dovecot does, when a session it still runs
/// after a client was killed touches it), which could show a file twice or
/// not at all: the Maildir is read until two passes in a row agree.
pub fn maildir_files(maildir: &Path) -> Vec<MaildirFile> {
    let names = |files: &[MaildirFile]| -> Vec<(&'static str, String)> {
        files.iter().map(|f| (f.subdir, f.name.clone())).collect()
    };
    let mut last = try_maildir_files(maildir);
    for _ in 0..50 {
        let this = try_maildir_files(maildir);
        if let (Some(a), Some(b)) = (&last, &this)
            && names(a) == names(b)
        {
            return this.unwrap_or_default();
        }
        last = this;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{}: files kept moving while it was read", maildir.display());
}

/// One pass of `maildir_files`; `None` when a listed file was gone when read.
fn try_maildir_files(maildir: &Path) -> Option<Vec<MaildirFile>> {
    let mut files = Vec::new();
    for subdir in ["new", "cur"] {
        let dir = maildir.join(subdir);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {}: {e}", dir.display()),
        };
        for entry in entries {
            let entry = entry.expect("read dir entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = match fs::read(entry.path()) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => panic!("read {}: {e}", entry.path().display()),
            };
            files.push(MaildirFile {
                subdir,
                name,
                bytes,
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Some(files)
}

/// The messages in `maildir` (new/ and cur/), sorted by content, so two
/// mailboxes can be compared as multisets regardless of file names and
/// delivery order. A missing Maildir is empty.
pub fn maildir_messages(maildir: &Path) -> Vec<Vec<u8>> {
    let mut messages: Vec<Vec<u8>> = maildir_files(maildir)
        .into_iter()
        .map(|f| f.bytes)
        .collect();
    messages.sort();
    messages
}

/// The names of the files in `maildir`/tmp (a finished delivery leaves none).
pub fn maildir_tmp_files(maildir: &Path) -> Vec<String> {
    match fs::read_dir(maildir.join("tmp")) {
        Ok(entries) => entries
            .map(|e| {
                e.expect("read dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}/tmp: {e}", maildir.display()),
    }
}

/// `v` sorted, for comparing messages as multisets.
pub fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// A TOML basic string holding `s`.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
