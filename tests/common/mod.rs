//! Shared harness for the integration tests: a throwaway Dovecot POP3 server
//! (`tests/dovecot/start.sh`) and a `TestEnv` that runs the real `popsync`
//! binary in a private temp dir.
//!
//! Each test file says `mod common;` and uses what it needs, so parts of this
//! module are unused in some test binaries; hence the `dead_code` allowance.
//!
//! Typical use:
//! ```ignore
//! let dovecot = common::require_dovecot!();     // or the test is skipped
//! let alice = dovecot.add_user("alice", "secret");
//! alice.deliver(&common::sample_message(1, 10));
//! let env = common::TestEnv::new();
//! let maildir = env.maildir("alice");
//! env.write_accounts(&[common::account_toml("alice", &dovecot, &alice, "implicit", &maildir, "")]);
//! let out = env.run(&["fetch", "--all"]);
//! out.assert_code_with(0, &dovecot);
//! ```
#![allow(dead_code)]

pub mod servers;

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one `popsync` run may take before the harness kills it.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a throwaway Dovecot with `tests/dovecot/start.sh` options (none,
/// or e.g. `"--no-stls"`, `"--apop"`, `"--cert", "expired"`), or, when
/// Dovecot is missing and `POPSYNC_TEST_SKIP_SERVERS=1` asks for it, returns
/// from the calling test after `cannot_run` said "skipped". Otherwise a
/// missing Dovecot fails the test.
#[allow(unused_macros)]
macro_rules! require_dovecot {
    ($($arg:expr),* $(,)?) => {
        match $crate::common::Dovecot::start_with_options(&[$($arg),*]) {
            Some(dovecot) => dovecot,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_dovecot;

/// The environment variable that lets a test that cannot run here (a server,
/// a tool or root missing) skip instead of failing: `1` to skip.
pub const SKIP_VAR: &str = "POPSYNC_TEST_SKIP_SERVERS";

/// The one rule for a test that cannot run here because `why` (a server, a
/// tool or root is missing): it fails (a panic naming `why`), unless
/// `POPSYNC_TEST_SKIP_SERVERS=1` asks to skip; then this prints
/// "skipped: WHY" and the caller returns without asserting anything. Under
/// `CI=true` it always fails.
#[track_caller]
pub fn cannot_run(why: &str) {
    if in_ci() {
        panic!("{why}; CI=true, where every test must run (tests/run.sh installs what they need)");
    }
    if std::env::var(SKIP_VAR).as_deref() != Ok("1") {
        panic!(
            "{why}; this test cannot run here. `bash tests/run.sh` installs the servers \
             and tools it needs; set {SKIP_VAR}=1 to skip it instead"
        );
    }
    eprintln!("skipped: {why}");
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Is a `dovecot` binary available (on PATH or in the usual sbin dirs, which
/// a normal user's PATH often lacks)?
pub fn dovecot_installed() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join("dovecot").is_file())
}

/// Why a test that needs Dovecot cannot run without it.
pub const DOVECOT_MISSING: &str = "dovecot is not installed (Debian/Ubuntu: apt-get install dovecot-pop3d; tests/run.sh installs it)";

/// A private Dovecot POP3 server on 127.0.0.1, stopped (and waited for) when
/// dropped, also when the test panics.
pub struct Dovecot {
    dir: tempfile::TempDir,
    pop3_port: u16,
    pop3s_port: Option<u16>,
    ca_file: PathBuf,
    pid: u32,
    stopped: bool,
    /// Shared by the tests of a binary, which log in while others add users.
    shared: bool,
}

impl Dovecot {
    /// Starts a server with a plain port (offering STLS) and a POP3S port.
    /// `None`: not installed, and `cannot_run` allowed the test to skip.
    pub fn start() -> Option<Dovecot> {
        Self::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Option<Dovecot> {
        if !dovecot_installed() {
            cannot_run(DOVECOT_MISSING);
            return None;
        }
        let (dir, stdout) = servers::run_start_script("dovecot", "dc", args);
        Some(Self::from_start_output(dir, &stdout))
    }

    fn from_start_output(dir: tempfile::TempDir, stdout: &str) -> Dovecot {
        let field = |key: &str| servers::start_field(stdout, key);
        let parsed = (|| {
            Some((
                field("pop3_port")?.parse::<u16>().ok()?,
                field("pop3s_port")
                    .map(str::parse::<u16>)
                    .transpose()
                    .ok()?,
                PathBuf::from(field("ca")?),
                field("pid")?.parse::<u32>().ok()?,
            ))
        })();
        let Some((pop3_port, pop3s_port, ca_file, pid)) = parsed else {
            // The server runs; do not leak it.
            let _ = Command::new("bash")
                .arg(dir.path().join("stop.sh"))
                .status();
            panic!("cannot parse the output of tests/dovecot/start.sh:\n{stdout}");
        };
        Dovecot {
            dir,
            pop3_port,
            pop3s_port,
            ca_file,
            pid,
            stopped: false,
            shared: false,
        }
    }

    /// The plain POP3 port (STLS offered unless started without it).
    pub fn pop3_port(&self) -> u16 {
        self.pop3_port
    }

    /// The implicit-TLS POP3S port.
    pub fn pop3s_port(&self) -> u16 {
        self.pop3s_port
            .expect("this Dovecot was started without TLS and has no POP3S port")
    }

    /// The PEM file of the private CA that signed the server certificate
    /// (SAN IP:127.0.0.1, DNS:localhost). Not in the system roots.
    pub fn ca_file(&self) -> PathBuf {
        self.ca_file.clone()
    }

    /// The server's directory (config, certificates, homes, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Adds a mail user with an empty Maildir. `name` is `[A-Za-z0-9._@+-]+`;
    /// `password` has no ':' or newline.
    pub fn add_user(&self, name: &str, password: &str) -> User {
        let script = manifest_dir().join("tests/dovecot/add-user.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg(self.dir()).arg(name).arg(password);
        if self.shared {
            cmd.arg("--settle");
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "add-user.sh {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let maildir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let owner = fs::read_to_string(self.dir().join("mail-owner")).expect("read mail-owner");
        let id = |key: &str| -> u32 {
            owner
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("mail-owner lacks {key}"))
        };
        User {
            name: name.to_owned(),
            password: password.to_owned(),
            maildir,
            owner: (id("mail_uid"), id("mail_gid")),
        }
    }

    /// The server log, for failure diagnostics.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir().join("dovecot.log"))
            .unwrap_or_else(|e| format!("(no Dovecot log: {e})"))
    }

    /// Stops the server and waits until its master process has exited.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let stop = self.dir().join("stop.sh");
        let stopped = Command::new("bash")
            .arg(&stop)
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A mail user on a `Dovecot`; its mailbox is a Maildir the harness writes to
/// and reads from directly ("server side").
pub struct User {
    pub name: String,
    pub password: String,
    maildir: PathBuf,
    owner: (u32, u32),
}

static DELIVERY_SEQ: AtomicU64 = AtomicU64::new(0);

impl User {
    /// The user's server-side Maildir.
    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    /// Puts a message into the server mailbox (Maildir new/), as an MTA would
    /// (`deliver_into_maildir`).
    pub fn deliver(&self, raw: &[u8]) {
        deliver_into_maildir(&self.maildir, self.owner, raw);
    }

    /// The bytes of the messages now in the server mailbox (new/ and cur/),
    /// in delivery order (sorted by file name).
    pub fn server_messages(&self) -> Vec<Vec<u8>> {
        maildir_files(&self.maildir)
            .into_iter()
            .map(|f| f.bytes)
            .collect()
    }
}

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
/// A missing Maildir has no files.
pub fn maildir_files(maildir: &Path) -> Vec<MaildirFile> {
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
            let bytes = fs::read(entry.path())
                .unwrap_or_else(|e| panic!("read {}: {e}", entry.path().display()));
            files.push(MaildirFile {
                subdir,
                name,
                bytes,
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    files
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

/// An `[accounts.NAME]` block for a Dovecot user: host 127.0.0.1, the POP3S
/// port for `tls = "implicit"` or the plain port for `"starttls"`, the test
/// CA as `ca_file`, the user's name and password, delivery into `maildir`,
/// `received_header = false` (so delivered bytes equal the server's), then
/// the `extra` lines verbatim. Use `Account` to vary anything else.
pub fn account_toml(
    name: &str,
    dovecot: &Dovecot,
    user: &User,
    tls: &str,
    maildir: &Path,
    extra: &str,
) -> String {
    Account::new(name, dovecot, user)
        .tls(tls)
        .maildir(maildir)
        .extra(extra)
        .toml()
}

/// Builder for an account block; starts from what `account_toml` writes.
pub struct Account {
    name: String,
    port: u16,
    pop3_port: u16,
    pop3s_port: Option<u16>,
    tls: String,
    ca_file: Option<PathBuf>,
    user: String,
    password: String,
    maildir: Option<PathBuf>,
    extra: String,
}

impl Account {
    pub fn new(name: &str, dovecot: &Dovecot, user: &User) -> Account {
        Account {
            name: name.to_owned(),
            port: dovecot.pop3s_port.unwrap_or(dovecot.pop3_port),
            pop3_port: dovecot.pop3_port,
            pop3s_port: dovecot.pop3s_port,
            tls: "implicit".to_owned(),
            ca_file: Some(dovecot.ca_file()),
            user: user.name.clone(),
            password: user.password.clone(),
            maildir: None,
            extra: String::new(),
        }
    }

    /// "implicit" (POP3S port), "starttls" or "none" (plain port).
    pub fn tls(mut self, tls: &str) -> Account {
        self.port = match tls {
            "implicit" => self
                .pop3s_port
                .expect("tls = \"implicit\" needs a Dovecot with a POP3S port"),
            "starttls" | "none" => self.pop3_port,
            other => panic!("unknown tls mode {other:?}"),
        };
        self.tls = tls.to_owned();
        self
    }

    pub fn port(mut self, port: u16) -> Account {
        self.port = port;
        self
    }

    /// Leave `ca_file` out: the test CA is then not trusted.
    pub fn without_ca_file(mut self) -> Account {
        self.ca_file = None;
        self
    }

    pub fn password(mut self, password: &str) -> Account {
        password.clone_into(&mut self.password);
        self
    }

    pub fn maildir(mut self, maildir: &Path) -> Account {
        self.maildir = Some(maildir.to_owned());
        self
    }

    /// Lines appended verbatim to the block (e.g. `retention = "0d"`).
    pub fn extra(mut self, extra: &str) -> Account {
        self.extra.push_str(extra);
        if !self.extra.is_empty() && !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// An account for a mailbox on any server of the matrix
    /// (`servers::PopServer`), otherwise as `new` makes it.
    pub fn on(
        name: &str,
        server: &dyn servers::PopServer,
        mailbox: &dyn servers::Mailbox,
    ) -> Account {
        Account {
            name: name.to_owned(),
            port: server.pop3s_port(),
            pop3_port: server.pop3_port(),
            pop3s_port: Some(server.pop3s_port()),
            tls: "implicit".to_owned(),
            ca_file: Some(server.ca_file()),
            user: mailbox.user().to_owned(),
            password: mailbox.password().to_owned(),
            maildir: None,
            extra: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "[accounts.{}]", self.name);
        let _ = writeln!(t, "host = \"127.0.0.1\"");
        let _ = writeln!(t, "port = {}", self.port);
        let _ = writeln!(t, "tls = {}", toml_string(&self.tls));
        if let Some(ca) = &self.ca_file {
            let _ = writeln!(t, "ca_file = {}", toml_string(&ca.to_string_lossy()));
        }
        let _ = writeln!(t, "user = {}", toml_string(&self.user));
        let _ = writeln!(t, "password = {}", toml_string(&self.password));
        if let Some(maildir) = &self.maildir {
            let _ = writeln!(
                t,
                "deliver = {{ maildir = {} }}",
                toml_string(&maildir.to_string_lossy())
            );
        }
        let _ = writeln!(t, "received_header = false");
        t.push_str(&self.extra);
        t
    }
}

/// What one run of the binary did, whatever server it ran against. A run
/// killed by a signal has code 128 + signal, as a shell reports it.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// From spawning the binary until it exited.
    pub elapsed: Duration,
}

impl Output {
    fn describe(&self) -> String {
        format!(
            "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Panics, showing stdout and stderr, unless the exit code is `expected`.
    #[track_caller]
    pub fn assert_code(&self, expected: i32) -> &Output {
        assert_eq!(
            self.code,
            expected,
            "popsync exited {} (expected {expected})\n{}",
            self.code,
            self.describe()
        );
        self
    }

    /// Like `assert_code`, and also shows the Dovecot log on failure.
    #[track_caller]
    pub fn assert_code_with(&self, expected: i32, dovecot: &Dovecot) -> &Output {
        assert_eq!(
            self.code,
            expected,
            "popsync exited {} (expected {expected})\n{}\n--- dovecot log ---\n{}",
            self.code,
            self.describe(),
            dovecot.log()
        );
        self
    }

    /// stderr names the server (`host:port`) and the command, as DESIGN.md
    /// promise 4 says.
    #[track_caller]
    pub fn assert_names(&self, server: &str, command: &str) -> &Output {
        assert!(
            self.stderr.contains(server) && self.stderr.contains(command),
            "stderr should name {server} and {command}:\n{}",
            self.describe()
        );
        self
    }

    /// The `--json` object of the first (or only) account.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().next().unwrap_or_else(|| {
            panic!("no JSON on stdout; stderr:\n{}", self.stderr);
        });
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }
}

/// The one harness around the binary: a private directory to run the real
/// `popsync` in, against a Dovecot, another real server
/// (`servers::PopServer`) or the fault server (`tests/fault/`, which adds
/// `fault_config` and `run_fault`): its config at
/// DIR/config.toml, `HOME` = DIR/home, `XDG_CONFIG_HOME` = DIR/home/.config,
/// `XDG_STATE_HOME` = DIR/home/.local/state, and (via `defaults_toml`) the
/// seen-store in DIR/state.
pub struct TestEnv {
    dir: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("popsync-test.")
            .tempdir()
            .expect("create a temp dir");
        fs::create_dir_all(dir.path().join("home")).expect("create DIR/home");
        TestEnv { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// DIR/config.toml, passed as `--config` by `run`.
    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.toml")
    }

    /// DIR/state, the `state_dir` written by `defaults_toml`.
    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    /// DIR/mail/NAME: a place for a delivery Maildir (not created).
    pub fn maildir(&self, name: &str) -> PathBuf {
        self.path().join("mail").join(name)
    }

    /// `[defaults]` with `state_dir = "DIR/state"`.
    pub fn defaults_toml(&self) -> String {
        format!(
            "[defaults]\nstate_dir = {}\n",
            toml_string(&self.state_dir().to_string_lossy())
        )
    }

    /// Writes DIR/config.toml (mode 0600) and returns its path.
    pub fn write_config(&self, toml: &str) -> PathBuf {
        let path = self.config_path();
        let _ = fs::remove_file(&path);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        file.write_all(toml.as_bytes()).expect("write config");
        // The mode passed to open is filtered by the umask; be exact.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod config");
        path
    }

    /// Writes a config of `defaults_toml()` followed by the account blocks.
    pub fn write_accounts(&self, accounts: &[String]) -> PathBuf {
        let mut toml = self.defaults_toml();
        for account in accounts {
            toml.push('\n');
            toml.push_str(account);
        }
        self.write_config(&toml)
    }

    /// `popsync --config DIR/config.toml ARGS...` with a clean environment
    /// (no `POPSYNC_*`), stdin from /dev/null; killed after 60 s (a panic).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_env(args, &[])
    }

    /// Writes `toml` as DIR/config.toml (`write_config`), then `run`.
    pub fn run_config(&self, toml: &str, args: &[&str]) -> Output {
        self.run_config_with_env(toml, args, &[])
    }

    /// `run_config` with extra environment variables.
    pub fn run_config_with_env(&self, toml: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.write_config(toml);
        self.run_with_env(args, env)
    }

    /// `run` with extra environment variables (e.g. `POPSYNC_NOW`).
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command();
        cmd.arg("--config").arg(self.config_path()).args(args);
        for (key, value) in env {
            cmd.env(key, value);
        }
        run_with_timeout(cmd, RUN_TIMEOUT)
    }

    /// `popsync --config DIR/config.toml ARGS...` started in the background
    /// with the environment of `run` (for signals and overlapping runs).
    pub fn spawn(&self, args: &[&str]) -> Running {
        let mut cmd = self.command();
        cmd.arg("--config").arg(self.config_path()).args(args);
        Running::spawn(cmd)
    }

    /// The binary with the environment `run` uses and no arguments.
    pub fn command(&self) -> Command {
        let home = self.path().join("home");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_popsync"));
        cmd.current_dir(self.path())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_STATE_HOME", home.join(".local/state"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env_remove("POPSYNC_CONFIG")
            .env_remove("POPSYNC_NOW")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

fn run_with_timeout(cmd: Command, timeout: Duration) -> Output {
    Running::spawn(cmd).finish_within(timeout)
}

/// A run of the binary that has been started and not yet waited for: `run`
/// waits at once; `TestEnv::spawn` leaves the test free to signal it or to
/// start another run meanwhile.
pub struct Running {
    child: Child,
    started: Instant,
    stdout: thread::JoinHandle<Vec<u8>>,
    stderr: thread::JoinHandle<Vec<u8>>,
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        let stdout = reader(&mut child, true);
        let stderr = reader(&mut child, false);
        Running {
            child,
            started,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Has the process exited already (without reaping it)?
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().expect("wait for popsync").is_some()
    }

    /// Waits for the exit; a run still going after `timeout` is killed and
    /// the test fails (a panic showing what it printed).
    pub fn finish_within(mut self, timeout: Duration) -> Output {
        let deadline = self.started + timeout;
        let (status, timed_out) = loop {
            if let Some(status) = self.child.try_wait().expect("wait for popsync") {
                break (status, false);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                break (self.child.wait().expect("wait for killed popsync"), true);
            }
            thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        let output = Output {
            code: status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(0)
            }),
            stdout: String::from_utf8_lossy(&self.stdout.join().expect("stdout reader"))
                .into_owned(),
            stderr: String::from_utf8_lossy(&self.stderr.join().expect("stderr reader"))
                .into_owned(),
            elapsed,
        };
        assert!(
            !timed_out,
            "popsync did not finish within {timeout:?} and was killed\n{}",
            output.describe()
        );
        output
    }
}

fn reader(child: &mut Child, stdout: bool) -> thread::JoinHandle<Vec<u8>> {
    let mut pipe: Box<dyn Read + Send> = if stdout {
        Box::new(child.stdout.take().expect("piped stdout"))
    } else {
        Box::new(child.stderr.take().expect("piped stderr"))
    };
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

impl Dovecot {
    /// Starts a server with extra `tests/dovecot/start.sh` options
    /// (`--no-stls`: no TLS at all, and `pop3s_port()` panics; `--apop`;
    /// `--cert KIND`). `None`: as `start`.
    pub fn start_with_options(args: &[&str]) -> Option<Dovecot> {
        Self::start_with(args)
    }

    /// The PEM file of the certificate the server presents (its
    /// `ssl_cert`): DIR/server.pem, or DIR/server-KIND.pem with `--cert KIND`.
    pub fn served_cert(&self) -> PathBuf {
        let conf = fs::read_to_string(self.dir().join("dovecot.conf")).expect("read dovecot.conf");
        conf.lines()
            .find_map(|l| l.trim().strip_prefix("ssl_cert = <"))
            .map(PathBuf::from)
            .expect("dovecot.conf has no ssl_cert (started with --no-stls?)")
    }
}

/// Fails unless `haystack` contains `needle`, showing `what` it was.
#[track_caller]
pub fn assert_contains(haystack: &str, needle: &str, what: &str) {
    assert!(
        haystack.contains(needle),
        "{what} should contain {needle:?}; it was:\n{haystack}"
    );
}

/// Like `assert_contains`, ignoring case.
#[track_caller]
pub fn assert_mentions(haystack: &str, needle: &str, what: &str) {
    assert!(
        haystack.to_lowercase().contains(&needle.to_lowercase()),
        "{what} should mention {needle:?}; it was:\n{haystack}"
    );
}

/// Runs every row of a table-driven test, `workers` at a time, each to its
/// end whatever the others do, then fails naming each row that failed (by
/// `name`) with its panic message. A row is a case of its own: it builds
/// its own servers and `TestEnv`.
pub fn run_rows<R: Send>(
    rows: Vec<R>,
    workers: usize,
    name: impl Fn(&R) -> &str + Sync,
    run: impl Fn(&R) + Sync,
) {
    let queue = std::sync::Mutex::new(rows.into_iter());
    let failures = std::sync::Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(row) = next else { break };
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&row)));
                    if let Err(panic) = result {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_default();
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("row {}: {why}", name(&row)));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The `tls_fingerprint` pin of the (first) certificate in a PEM file, as
/// `popsync probe` prints it: `sha256:AB:CD:...` (SHA-256 of the DER).
pub fn pem_fingerprint(pem: &Path) -> String {
    use base64::Engine as _;
    let text = fs::read_to_string(pem).unwrap_or_else(|e| panic!("read {}: {e}", pem.display()));
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .unwrap_or_else(|e| panic!("{} holds no PEM certificate: {e}", pem.display()));
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", hex.join(":"))
}

pub mod cyrus;

pub mod courier;
