//! Harness for popsync's IMAP delivery target (`deliver = { imap = {...} }`,
//! issue 16), used by `tests/imap_dovecot.rs`, `tests/imap_faults.rs` and
//! `tests/imap_kill.rs`:
//!
//! - `ImapDovecot::shared()`: one private Dovecot per test binary that
//!   speaks POP3 *and* IMAP (`tests/dovecot/start.sh --imap`); each test adds
//!   its own users, a POP3 one to fetch from and an IMAP one to APPEND to.
//! - `read_mailbox`: an independent IMAP reader (Python's imaplib,
//!   `tests/imap/read.py`) that returns every message of a mailbox byte for
//!   byte with its INTERNALDATE and flags, and the UIDVALIDITY.
//! - `fault`: a scripted IMAP server that misbehaves on cue.
//! - `account_toml`: a POP3 account whose delivery target is IMAP.
//! - `case`: what those test binaries share: `Case` (a POP3 account on the
//!   shared Dovecot delivering into a mailbox), the test messages, and the
//!   checks after a run.
//!
//! A test file says `mod common; mod imap;`; parts of this are unused in
//! some; hence `dead_code`.
#![allow(dead_code)]

pub mod case;
pub mod fault;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{self, Dovecot, toml_string};

/// Starts (once per test binary) the shared Dovecot with IMAP, or skips the
/// calling test when Dovecot or its IMAP server is missing and `CI` is not
/// "true" (in CI that is a failure).
#[allow(unused_macros)]
macro_rules! require_imap_dovecot {
    () => {
        match $crate::imap::ImapDovecot::shared() {
            Some(dovecot) => dovecot,
            None => {
                $crate::common::cannot_run(
                    "dovecot or its IMAP server is not installed (Debian/Ubuntu: apt-get install \
                     dovecot-pop3d dovecot-imapd; tests/run.sh installs them)",
                );
                return;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_imap_dovecot;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Is Dovecot's IMAP server (dovecot-imapd) installed?
pub fn imapd_installed() -> bool {
    ["/usr/lib/dovecot/imap", "/usr/libexec/dovecot/imap"]
        .iter()
        .any(|p| Path::new(p).is_file())
}

/// A private Dovecot on 127.0.0.1 serving POP3 (plain + STLS, POP3S) and
/// IMAP (plain + STARTTLS, IMAPS) for the same users and Maildirs.
pub struct ImapDovecot {
    pub dovecot: Dovecot,
    imap_port: u16,
    imaps_port: u16,
}

impl ImapDovecot {
    /// The server of this test binary, started on first use; a watchdog
    /// stops it when the binary exits. `None`: not installed, skip (never
    /// in CI, where it panics).
    pub fn shared() -> Option<&'static ImapDovecot> {
        static SHARED: std::sync::OnceLock<Option<ImapDovecot>> = std::sync::OnceLock::new();
        SHARED.get_or_init(Self::start).as_ref()
    }

    fn start() -> Option<ImapDovecot> {
        if !common::dovecot_installed() || !imapd_installed() {
            // `require_imap_dovecot!` applies the one rule (`cannot_run`).
            return None;
        }
        let owner = std::process::id().to_string();
        // Panics (also outside CI) if the server is installed but cannot start.
        let dovecot = Dovecot::start_with_options(&["--imap", "--owner-pid", &owner])?;
        let ports = fs::read_to_string(dovecot.dir().join("imap-ports"))
            .expect("start.sh --imap writes DIR/imap-ports");
        let port = |key: &str| -> u16 {
            ports
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {ports}"))
        };
        Some(ImapDovecot {
            imap_port: port("imap_port"),
            imaps_port: port("imaps_port"),
            dovecot,
        })
    }

    /// Plain IMAP; offers STARTTLS.
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// Implicit-TLS IMAP.
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }

    pub fn pop3s_port(&self) -> u16 {
        self.dovecot.pop3s_port()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dovecot.ca_file()
    }

    pub fn log(&self) -> String {
        self.dovecot.log()
    }

    /// Adds a user (POP3 and IMAP) with an empty Maildir; waits until
    /// Dovecot, which others use meanwhile, sees it (`--settle`).
    pub fn add_user(&self, name: &str, password: &str) -> MailUser {
        let script = manifest_dir().join("tests/dovecot/add-user.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(self.dovecot.dir())
            .args([name, password, "--settle"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "add-user.sh {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let maildir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let owner =
            fs::read_to_string(self.dovecot.dir().join("mail-owner")).expect("read mail-owner");
        let id = |key: &str| -> u32 {
            owner
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("mail-owner lacks {key}"))
        };
        MailUser {
            name: name.to_owned(),
            password: password.to_owned(),
            maildir,
            owner: (id("mail_uid"), id("mail_gid")),
        }
    }

    /// The POP3 side of an account fetching `user`'s mail over POP3S.
    pub fn pop3(&self, user: &MailUser) -> PopSide {
        PopSide {
            port: self.pop3s_port(),
            ca_file: self.ca_file(),
            user: user.name.clone(),
            password: user.password.clone(),
        }
    }

    /// An IMAP target: `user`'s `mailbox` over IMAPS.
    pub fn target(&self, user: &MailUser, mailbox: &str) -> Target {
        Target {
            port: self.imaps_port,
            tls: "implicit".into(),
            ca_file: Some(self.ca_file()),
            user: user.name.clone(),
            password: user.password.clone(),
            mailbox: mailbox.to_owned(),
            extra: Vec::new(),
        }
    }

    /// Everything in `user`'s `mailbox`, read over IMAPS with imaplib.
    pub fn read(&self, user: &MailUser, mailbox: &str) -> ImapMailbox {
        read_mailbox(&ReadArgs {
            port: self.imaps_port,
            tls: "implicit",
            ca_file: Some(self.ca_file()),
            user: &user.name,
            password: &user.password,
            mailbox,
        })
    }
}

/// A Dovecot user: a POP3 mailbox to fetch from, or an IMAP account to
/// APPEND to (its INBOX is the Maildir, other mailboxes `.NAME` in it).
pub struct MailUser {
    pub name: String,
    pub password: String,
    maildir: PathBuf,
    owner: (u32, u32),
}

impl MailUser {
    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    /// Puts a message into the user's mailbox as an MTA would (stored with
    /// LF line ends; POP3 and IMAP serve it with CRLF).
    pub fn deliver(&self, raw: &[u8]) {
        common::deliver_into_maildir(&self.maildir, self.owner, raw);
    }

    /// What is in the user's INBOX now (LF line ends), by file name. A
    /// file Dovecot removes meanwhile (a POP3 DELE being committed) is
    /// left out.
    pub fn server_messages(&self) -> Vec<Vec<u8>> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(dir) = fs::read_dir(self.maildir.join(sub)) else {
                continue;
            };
            for entry in dir.flatten() {
                files.push(entry.path());
            }
        }
        files.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
        files
            .iter()
            .filter_map(|p| match fs::read(p) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => panic!("read {}: {e}", p.display()),
            })
            .collect()
    }

    /// How many messages are in `mailbox` on disk (cheap, for polling while
    /// popsync APPENDs): files in cur/ and new/ of its Maildir folder.
    pub fn stored_count(&self, mailbox: &str) -> usize {
        let dir = if mailbox.eq_ignore_ascii_case("INBOX") {
            self.maildir.clone()
        } else {
            self.maildir.join(format!(".{mailbox}"))
        };
        ["cur", "new"]
            .iter()
            .map(|sub| fs::read_dir(dir.join(sub)).map_or(0, |d| d.count()))
            .sum()
    }
}

/// The POP3 half of an account.
pub struct PopSide {
    pub port: u16,
    pub ca_file: PathBuf,
    pub user: String,
    pub password: String,
}

/// The `deliver = { imap = {...} }` table of an account.
#[derive(Clone)]
pub struct Target {
    pub port: u16,
    /// "implicit", "starttls" or "none".
    pub tls: String,
    pub ca_file: Option<PathBuf>,
    pub user: String,
    pub password: String,
    pub mailbox: String,
    /// More `key = value` pairs for the imap table, as TOML.
    pub extra: Vec<String>,
}

impl Target {
    /// The fault server: plain TCP, `tls = "none"` and `allow_plaintext`.
    pub fn fault_server(srv: &fault::FaultServer, mailbox: &str) -> Target {
        Target {
            port: srv.port(),
            tls: "none".into(),
            ca_file: None,
            user: srv.user(),
            password: srv.password(),
            mailbox: mailbox.to_owned(),
            extra: vec!["allow_plaintext = true".into()],
        }
    }

    /// Adds `key = value` (TOML) to the imap table.
    pub fn with(mut self, key_value: &str) -> Target {
        self.extra.push(key_value.to_owned());
        self
    }

    pub fn password(mut self, password: &str) -> Target {
        password.clone_into(&mut self.password);
        self
    }

    pub fn toml(&self) -> String {
        let mut fields = vec![
            "host = \"127.0.0.1\"".to_owned(),
            format!("port = {}", self.port),
            format!("tls = {}", toml_string(&self.tls)),
        ];
        if let Some(ca) = &self.ca_file {
            fields.push(format!("ca_file = {}", toml_string(&ca.to_string_lossy())));
        }
        fields.push(format!("user = {}", toml_string(&self.user)));
        fields.push(format!("password = {}", toml_string(&self.password)));
        fields.push(format!("mailbox = {}", toml_string(&self.mailbox)));
        fields.extend(self.extra.iter().cloned());
        format!("{{ imap = {{ {} }} }}", fields.join(", "))
    }
}

/// An `[accounts.NAME]` block: POP3S from `pop`, delivery into `target`,
/// then `extra` lines (e.g. `retention = "0d"`, `received_header = true`;
/// `received_header = false` is written unless `extra` sets it).
pub fn account_toml(name: &str, pop: &PopSide, target: &Target, extra: &str) -> String {
    let mut t = format!(
        "[accounts.{name}]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\nca_file = {}\n\
         user = {}\npassword = {}\ndeliver = {}\n",
        pop.port,
        toml_string(&pop.ca_file.to_string_lossy()),
        toml_string(&pop.user),
        toml_string(&pop.password),
        target.toml(),
    );
    if !extra.contains("received_header") {
        t.push_str("received_header = false\n");
    }
    t.push_str(extra);
    if !t.ends_with('\n') {
        t.push('\n');
    }
    t
}

/// One message as read back over IMAP.
#[derive(Clone, Debug)]
pub struct ImapMessage {
    pub uid: u32,
    /// INTERNALDATE as seconds since the epoch.
    pub internaldate: i64,
    /// FLAGS without the session flag \Recent.
    pub flags: Vec<String>,
    pub bytes: Vec<u8>,
}

/// A mailbox as read back over IMAP.
#[derive(Clone, Debug)]
pub struct ImapMailbox {
    pub exists: bool,
    pub uidvalidity: Option<u32>,
    pub capabilities: Vec<String>,
    pub messages: Vec<ImapMessage>,
}

impl ImapMailbox {
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.messages.iter().map(|m| m.bytes.clone()).collect()
    }
}

/// How `read_mailbox` connects.
pub struct ReadArgs<'a> {
    pub port: u16,
    /// "implicit", "starttls" or "none".
    pub tls: &'a str,
    pub ca_file: Option<PathBuf>,
    pub user: &'a str,
    pub password: &'a str,
    pub mailbox: &'a str,
}

/// Reads a mailbox with `tests/imap/read.py` (imaplib).
pub fn read_mailbox(args: &ReadArgs) -> ImapMailbox {
    run_read_py(args, None)
}

/// APPENDs `raw` with imaplib (synchronising literals), with an optional
/// date-time and flag list, then reads the mailbox back.
pub fn append_with_imaplib(
    args: &ReadArgs,
    raw: &[u8],
    date: Option<&str>,
    flags: Option<&str>,
) -> ImapMailbox {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(file.path(), raw).expect("write the message");
    run_read_py(args, Some((file.path(), date, flags)))
}

fn run_read_py(
    args: &ReadArgs,
    append: Option<(&Path, Option<&str>, Option<&str>)>,
) -> ImapMailbox {
    use base64::Engine as _;
    let script = manifest_dir().join("tests/imap/read.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(["--port", &args.port.to_string()])
        .args(["--tls", args.tls])
        .args(["--user", args.user, "--password", args.password])
        .args(["--mailbox", args.mailbox]);
    if let Some(ca) = &args.ca_file {
        cmd.arg("--ca").arg(ca);
    }
    if let Some((file, date, flags)) = append {
        cmd.arg("--append").arg(file);
        if let Some(date) = date {
            cmd.args(["--date", date]);
        }
        if let Some(flags) = flags {
            cmd.args(["--flags", flags]);
        }
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run python3 {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "tests/imap/read.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "read.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let b64 = base64::engine::general_purpose::STANDARD;
    let messages = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| ImapMessage {
            uid: m["uid"].as_u64().expect("uid") as u32,
            internaldate: m["internaldate"].as_i64().expect("internaldate"),
            flags: m["flags"]
                .as_array()
                .expect("flags")
                .iter()
                .filter_map(|f| f.as_str())
                .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
                .map(String::from)
                .collect(),
            bytes: b64
                .decode(m["body"].as_str().expect("body"))
                .expect("base64 body"),
        })
        .collect();
    ImapMailbox {
        exists: v["exists"].as_bool().expect("exists"),
        uidvalidity: v["uidvalidity"].as_u64().map(|u| u as u32),
        capabilities: v["capabilities"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        messages,
    }
}

/// LF line ends to CRLF (a lone LF becomes CRLF; CRLF stays).
pub fn lf_to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 20);
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// The Message-ID header value of a message (trimmed), if any.
pub fn message_id(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("message-id:") {
            return Some(line["message-id:".len()..].trim().to_owned());
        }
    }
    None
}

/// How many times each Message-ID occurs among `messages`.
pub fn count_by_message_id(messages: &[Vec<u8>]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in messages {
        let id = message_id(m).unwrap_or_else(|| "(no Message-ID)".into());
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Panics unless `got` holds every Message-ID of `sent` exactly once and
/// nothing else.
pub fn assert_each_exactly_once(got: &[Vec<u8>], sent: &[Vec<u8>], what: &str) {
    let counts = count_by_message_id(got);
    let want: BTreeMap<String, usize> = count_by_message_id(sent);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = want.keys().filter(|k| !counts.contains_key(*k)).collect();
    let extra: Vec<_> = counts.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        twice.is_empty() && missing.is_empty() && extra.is_empty(),
        "{what}: {} messages for {} sent; duplicated: {twice:?}; missing: {missing:?}; \
         not sent: {extra:?}",
        got.len(),
        sent.len()
    );
}

/// Removes the one `Received:` header popsync put first, checking that it
/// is popsync's (` id <popsync-`); returns (that header, the rest).
pub fn split_popsync_received(bytes: &[u8]) -> (String, Vec<u8>) {
    assert!(
        bytes.starts_with(b"Received:"),
        "the message does not start with a Received: header: {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
    );
    // The header ends at the first line break not followed by white space.
    let mut end = 0;
    loop {
        let nl = bytes[end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| end + p + 2)
            .expect("a CRLF after the Received: header");
        end = nl;
        if !matches!(bytes.get(end), Some(b' ' | b'\t')) {
            break;
        }
    }
    let header = String::from_utf8_lossy(&bytes[..end]).into_owned();
    (header, bytes[end..].to_vec())
}

/// Seconds since the epoch of a UTC civil time.
pub fn epoch(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + mi * 60 + s
}

#[allow(unused_imports)]
pub use crate::common::{kill9, spawn_logged as spawn, spawned_stderr, wait_while_running};
