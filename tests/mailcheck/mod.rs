//! Helpers for the delivery, crash and disk-full tests (`tests/delivery.rs`,
//! `tests/crash.rs`, `tests/disk_full.rs`): account blocks for mbox and MDA
//! targets, a strict mboxrd reader, read-back through the tools users have
//! (Python's `mailbox`, procmail's `formail`), a tmpfs mount guard, message
//! generators and a small seeded random source.
//!
//! Each test file says `mod common; mod mailcheck;` and uses what it needs;
//! hence `dead_code`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{Account, Dovecot, TestEnv, User, toml_string};

/// Is `tool` an executable on PATH?
pub fn have_tool(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null 2>&1"))
        .status()
        .is_ok_and(|s| s.success())
}

/// Returns from the calling test when `tool` is not installed and
/// `common::cannot_run` allowed it to skip; otherwise a missing tool fails
/// the test (tests/run.sh installs procmail, formail and python3).
#[allow(unused_macros)]
macro_rules! require_tool {
    ($tool:expr) => {
        if !$crate::mailcheck::have_tool($tool) {
            $crate::common::cannot_run(&format!(
                "{} is not installed (tests/run.sh installs it)",
                $tool
            ));
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_tool;

/// An account block delivering `user`'s mail into the mbox `path`.
pub fn mbox_account(
    name: &str,
    dovecot: &Dovecot,
    user: &User,
    path: &Path,
    extra: &str,
) -> String {
    Account::new(name, dovecot, user)
        .extra(&format!(
            "deliver = {{ mbox = {} }}",
            toml_string(&path.to_string_lossy())
        ))
        .extra(extra)
        .toml()
}

/// An account block delivering `user`'s mail through the MDA `command`.
pub fn mda_account(
    name: &str,
    dovecot: &Dovecot,
    user: &User,
    command: &str,
    extra: &str,
) -> String {
    Account::new(name, dovecot, user)
        .extra(&format!("deliver = {{ mda = {} }}", toml_string(command)))
        .extra(extra)
        .toml()
}

/// An account block delivering into the Maildir `dir`.
pub fn maildir_account(
    name: &str,
    dovecot: &Dovecot,
    user: &User,
    dir: &Path,
    extra: &str,
) -> String {
    Account::new(name, dovecot, user)
        .maildir(dir)
        .extra(extra)
        .toml()
}

/// `toml` with `received_header = false` (what `Account` writes) turned on.
pub fn with_received_header(toml: &str) -> String {
    assert!(toml.contains("received_header = false\n"), "{toml}");
    toml.replace("received_header = false\n", "received_header = true\n")
}

pub fn assert_stderr_contains(stderr: &str, needle: &str) {
    assert!(
        stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr should mention {needle:?}; it was:\n{stderr}"
    );
}

/// Undo mboxrd quoting: one `>` less on every line matching `^>+From `.
pub fn mboxrd_unquote(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let gts = line.iter().take_while(|&&b| b == b'>').count();
        if gts > 0 && line[gts..].starts_with(b"From ") {
            out.extend_from_slice(&line[1..]);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// mboxrd quoting: one `>` more on every line matching `^>*From `.
pub fn mboxrd_quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let gts = line.iter().take_while(|&&b| b == b'>').count();
        if line[gts..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    out
}

/// One message of an mbox as written (still mboxrd-quoted).
#[derive(Debug, Clone)]
pub struct MboxMessage {
    /// The separator line without "From " and without the LF.
    pub from: String,
    /// The message as stored: quoted, without the blank separator line.
    pub raw: Vec<u8>,
}

impl MboxMessage {
    /// The message as it was on the server (quoting undone).
    pub fn unquoted(&self) -> Vec<u8> {
        mboxrd_unquote(&self.raw)
    }
}

/// Reads an mboxrd file strictly: it is empty or starts with a `From ` line;
/// every line starting with `From ` is a separator (mboxrd quotes all others)
/// and is preceded by a blank line, except the first; the file ends with the
/// blank line after the last message. Panics, naming the offset, otherwise:
/// that is a torn or interleaved mbox.
pub fn parse_mbox(bytes: &[u8]) -> Vec<MboxMessage> {
    let mut messages: Vec<MboxMessage> = Vec::new();
    if bytes.is_empty() {
        return messages;
    }
    assert!(
        bytes.starts_with(b"From "),
        "the mbox does not start with a From line: {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
    );
    assert!(
        bytes.ends_with(b"\n\n"),
        "the mbox does not end with the blank line after a whole message (torn tail?): ...{:?}",
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(200)..])
    );
    let finish = |m: &mut MboxMessage, at: usize| {
        assert!(
            m.raw.ends_with(b"\n\n") || m.raw == b"\n",
            "message `From {}` is not followed by a blank line before offset {at} \
             (torn or interleaved): ...{:?}",
            m.from,
            String::from_utf8_lossy(&m.raw[m.raw.len().saturating_sub(200)..])
        );
        m.raw.pop();
    };
    let mut offset = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"From ") {
            if let Some(last) = messages.last_mut() {
                finish(last, offset);
            }
            let from = String::from_utf8_lossy(rest.strip_suffix(b"\n").unwrap_or(rest));
            messages.push(MboxMessage {
                from: from.into_owned(),
                raw: Vec::new(),
            });
        } else {
            messages
                .last_mut()
                .expect("the mbox starts with a From line")
                .raw
                .extend_from_slice(line);
        }
        offset += line.len();
    }
    if let Some(last) = messages.last_mut() {
        finish(last, offset);
    }
    messages
}

/// The messages of the mbox at `path`, unquoted, sorted (a multiset).
pub fn mbox_messages_sorted(path: &Path) -> Vec<Vec<u8>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    let mut v: Vec<Vec<u8>> = parse_mbox(&bytes).iter().map(|m| m.unquoted()).collect();
    v.sort();
    v
}

/// Checks a `From ` line's rest: `SENDER Www Mmm dd hh:mm:ss yyyy` (asctime,
/// day padded with a space). Returns the sender.
pub fn from_line_sender(from: &str) -> String {
    let (sender, date) = from
        .split_once(' ')
        .unwrap_or_else(|| panic!("From line without a date: {from:?}"));
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let ok = date.len() == 24
        && DAYS.contains(&&date[0..3])
        && &date[3..4] == " "
        && MONTHS.contains(&&date[4..7])
        && &date[7..8] == " "
        && date[8..10].trim_start().chars().all(|c| c.is_ascii_digit())
        && !date[8..10].trim_start().is_empty()
        && &date[10..11] == " "
        && date[11..19].chars().enumerate().all(|(i, c)| {
            if i == 2 || i == 5 {
                c == ':'
            } else {
                c.is_ascii_digit()
            }
        })
        && &date[19..20] == " "
        && date[20..24].chars().all(|c| c.is_ascii_digit());
    assert!(ok, "not an asctime date in the From line: {from:?}");
    sender.to_owned()
}

/// Reads the mbox with Python's `mailbox.mbox`: per message (in file order)
/// the From line (without "From ") and `get_bytes()` (still quoted: Python
/// does not undo mboxrd quoting).
pub fn python_mbox(path: &Path) -> Vec<(String, Vec<u8>)> {
    const SCRIPT: &str = r#"
import mailbox, sys
mb = mailbox.mbox(sys.argv[1], create=False)
for key in sorted(mb.keys()):
    sys.stdout.write(mb.get_message(key).get_from().encode("utf-8", "surrogateescape").hex())
    sys.stdout.write(" ")
    sys.stdout.write(mb.get_bytes(key).hex())
    sys.stdout.write("\n")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 mailbox.mbox failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("hex output")
        .lines()
        .map(|line| {
            let (from, bytes) = line.split_once(' ').expect("two fields");
            (
                String::from_utf8(unhex(from)).expect("UTF-8 From line"),
                unhex(bytes),
            )
        })
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Splits the mbox with `formail -s` into files in `dir` and returns their
/// contents in order. formail keeps the `From ` line and the blank separator
/// line after the message.
pub fn formail_split(mbox: &Path, dir: &Path) -> Vec<Vec<u8>> {
    fs::create_dir_all(dir).expect("create the formail dir");
    let input = fs::File::open(mbox).expect("open the mbox");
    let out = Command::new("formail")
        .arg("-s")
        .arg("sh")
        .arg("-c")
        .arg("cat > \"$SPLIT_DIR/msg.$FILENO\"")
        .env("SPLIT_DIR", dir)
        .stdin(input)
        .output()
        .expect("run formail");
    assert!(
        out.status.success(),
        "formail -s failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read the formail dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| fs::read(p).expect("read a formail part"))
        .collect()
}

/// A tmpfs mounted on a directory; unmounted when dropped (also on panic).
/// Declare it after the `TestEnv` holding the directory, so it is dropped
/// (unmounted) before the temp dir is removed.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount(8) takes it: "2m") on `dir`
    /// (created). `None` when mounting is not possible here (not root, no
    /// CAP_SYS_ADMIN) and `common::cannot_run` allowed the test to skip;
    /// otherwise that is a failure.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).expect("create the mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(dir)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_owned(),
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                crate::common::cannot_run(&format!(
                    "cannot mount a tmpfs on {} (needs root): {why}",
                    dir.display()
                ));
                None
            }
        }
    }

    /// Grows (or shrinks) the file system in place; its files stay.
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o"])
            .arg(format!("remount,size={size}"))
            .arg(&self.dir)
            .status()
            .expect("run mount -o remount");
        assert!(status.success(), "remount {} failed", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A small message (about `size` bytes, LF line ends) with lines that mboxrd
/// has to quote, unique by `i`.
pub fn message_of_size(i: usize, size: usize, with_return_path: bool) -> Vec<u8> {
    let mut m = String::new();
    if with_return_path {
        let _ = writeln!(m, "Return-Path: <bulk{i}@example.org>");
    }
    let _ = write!(
        m,
        "From: Bulk {i} <bulk{i}@example.org>\n\
         To: alice@example.net\n\
         Subject: bulk message {i}\n\
         Message-ID: <bulk{i}.{size}@example.org>\n\
         \n\
         From the start of message {i}\n\
         >From a quoted line\n\
         .\n\
         ..\n"
    );
    let mut k = 0;
    while m.len() + 2 < size {
        let _ = writeln!(
            m,
            "line {k} of bulk message {i}: lorem ipsum dolor sit amet"
        );
        if k % 40 == 39 {
            let _ = writeln!(m, "From inside message {i} line {k}");
        }
        k += 1;
    }
    m.push_str("--\n");
    m.into_bytes()
}

/// A large message of at least `size` bytes, with body lines that mboxrd has
/// to quote every so often.
pub fn large_message(tag: &str, size: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(size + 200);
    let _ = write!(
        Adapter(&mut m),
        "Return-Path: <big@example.org>\nFrom: big@example.org\nTo: alice@example.net\n\
         Subject: large message {tag}\nMessage-ID: <large.{tag}@example.org>\n\n"
    );
    let mut k: u64 = 0;
    while m.len() < size {
        if k % 1000 == 999 {
            let _ = writeln!(Adapter(&mut m), "From line {k} of the large message {tag}");
        } else {
            let _ = writeln!(
                Adapter(&mut m),
                "{k:08} the quick brown fox jumps over the lazy dog, {tag}, 0123456789"
            );
        }
        k += 1;
    }
    m
}

struct Adapter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Adapter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A seeded xorshift generator; the seed comes from `POPSYNC_TEST_SEED` or
/// the clock, and is printed so a failure can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_clock(what: &str) -> Rng {
        let seed = std::env::var("POPSYNC_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock after 1970")
                    .as_nanos() as u64
            });
        eprintln!("{what}: POPSYNC_TEST_SEED={seed}");
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[allow(unused_imports)]
pub use crate::common::{kill9, spawned_stderr, wait_while_running};

/// `popsync ARGS` in the background (`common::spawn_logged`, no extra
/// environment).
pub fn spawn(env: &TestEnv, args: &[&str], name: &str) -> Child {
    crate::common::spawn_logged(env, args, &[], name)
}

/// Number of entries in `dir` (0 if missing).
pub fn count_entries(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Largest file size in `dir` (0 if none).
pub fn largest_file(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok().map(|m| m.len()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Size of the file at `path` (0 if missing).
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// `path` + ".lock": the dotlock of an mbox.
pub fn dotlock_of(mbox: &Path) -> PathBuf {
    let mut name = mbox.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Sets the modification time of `path` to `age` ago.
pub fn age_file(path: &Path, age: Duration) {
    let f = fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.set_modified(SystemTime::now() - age)
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
}

/// Short text for assertion messages about message bytes.
pub fn preview(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
    format!("{} bytes, starting {s:?}", bytes.len())
}

/// Each of `got` is one of `want`, and none twice (unless `want` has it
/// twice): nothing partial, nothing duplicated.
pub fn assert_subset(got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
    let mut pool = want.to_vec();
    pool.sort();
    for m in got {
        match pool.binary_search(m) {
            Ok(i) => {
                pool.remove(i);
            }
            Err(_) => panic!(
                "{what}: a message that is not on the server, or is there twice \
                 (partial or duplicate): {}",
                preview(m)
            ),
        }
    }
}

/// Panics unless `got` and `want` are the same multiset of messages; names
/// counts and the first difference rather than dumping megabytes.
pub fn assert_same_messages(got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
    let mut g = got.to_vec();
    let mut w = want.to_vec();
    g.sort();
    w.sort();
    if g == w {
        return;
    }
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < g.len() || j < w.len() {
        match (g.get(i), w.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                extra.push(preview(a));
                i += 1;
            }
            (Some(_), Some(b)) => {
                missing.push(preview(b));
                j += 1;
            }
            (Some(a), None) => {
                extra.push(preview(a));
                i += 1;
            }
            (None, Some(b)) => {
                missing.push(preview(b));
                j += 1;
            }
            (None, None) => break,
        }
    }
    panic!(
        "{what}: got {} messages, want {}; {} missing, {} unexpected (duplicates or partial)\n\
         missing (first 5): {:#?}\nunexpected (first 5): {:#?}",
        g.len(),
        w.len(),
        missing.len(),
        extra.len(),
        &missing[..missing.len().min(5)],
        &extra[..extra.len().min(5)]
    );
}
