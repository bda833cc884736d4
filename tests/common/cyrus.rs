//! A private, throwaway Cyrus POP3 server (Debian's cyrus-pop3d 3.6, run from
//! the packages `tests/cyrus/install.sh` unpacked) behind the `PopServer`
//! trait, started by `tests/cyrus/start.sh`.
//!
//! Users live in a private sasldb, so every SASL mechanism works; mail is
//! delivered through Cyrus's own LMTP server, which adds trace headers
//! (Return-Path, Received, X-Cyrus-Session-Id, X-Sieve) and, when missing,
//! Message-ID and Date: `server_messages` returns what RETR returns, never
//! the raw delivered bytes. It reads over POP3 on a private third port
//! without LOGIN-DELAY and leaves without QUIT, so it expunges nothing and
//! does not count as a login for `--popminpoll`.
//!
//! ```ignore
//! let Some(cyrus) = common::cyrus::Cyrus::shared() else { return };
//! let alice = cyrus.add_mailbox("alice", "secret");
//! alice.deliver(b"Subject: hi\n\nbody\n");
//! let held = alice.server_messages();
//! ```

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::servers::{Mailbox, PopServer};

/// Read and write timeout of the harness's own POP3 connections.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of each log file `log()` shows (the end of it).
const LOG_TAIL: usize = 32 * 1024;

/// Starts a non-shared Cyrus with `tests/cyrus/start.sh` options, or
/// returns from the calling test when it is not installed and `cannot_run`
/// allowed the test to skip.
#[allow(unused_macros)]
macro_rules! require_cyrus {
    ($($arg:expr),* $(,)?) => {
        match $crate::common::cyrus::Cyrus::start(&[$($arg),*]) {
            Some(cyrus) => cyrus,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_cyrus;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Why a test that needs Cyrus cannot run without it.
fn cyrus_missing() -> String {
    format!(
        "cyrus is not installed: run `bash tests/cyrus/install.sh` as root (it apt-installs \
         sasl2-bin and the libraries, and unpacks cyrus-common and cyrus-pop3d into {})",
        cyrus_root().display()
    )
}

/// Where install.sh unpacked the packages (start.sh reads `CYRUS_ROOT` too).
fn cyrus_root() -> PathBuf {
    std::env::var_os("CYRUS_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target/test-servers/cyrus/root"))
}

/// Are the unpacked Cyrus binaries and saslpasswd2 there?
pub fn cyrus_installed() -> bool {
    let bin = cyrus_root().join("usr/lib/cyrus/bin");
    let binaries = ["master", "pop3d", "lmtpd", "deliver"]
        .iter()
        .all(|b| bin.join(b).is_file());
    let path = std::env::var_os("PATH").unwrap_or_default();
    let saslpasswd2 = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join("saslpasswd2").is_file());
    binaries && saslpasswd2
}

/// A private Cyrus POP3 server on 127.0.0.1: a plain port offering STLS and
/// an implicit-TLS port. A non-shared one is stopped (and waited for) when
/// dropped, also when the test panics.
pub struct Cyrus {
    dir: PathBuf,
    /// Removes DIR on drop; `None` for the shared server, whose watchdog
    /// stops it and removes DIR once this process has exited.
    tempdir: Option<tempfile::TempDir>,
    pop3_port: u16,
    pop3s_port: u16,
    reader_port: u16,
    ca_file: PathBuf,
    pid: u32,
    stopped: bool,
}

impl Cyrus {
    /// Starts a server with `tests/cyrus/start.sh` options (`--popminpoll N`,
    /// `--owner-pid PID`). `None` means "not installed", and `cannot_run`
    /// allowed the test to skip; any start failure panics.
    pub fn start(args: &[&str]) -> Option<Cyrus> {
        if !cyrus_installed() {
            super::cannot_run(&cyrus_missing());
            return None;
        }
        Self::start_in_tempdir(args, false)
    }

    /// The server shared by every test of this test binary (each test adds
    /// its own mailbox). Started on first use with `--owner-pid` of this
    /// process: the watchdog stops it when the binary exits.
    pub fn shared() -> Option<&'static Cyrus> {
        if !cyrus_installed() {
            super::cannot_run(&cyrus_missing());
            return None;
        }
        static SHARED: OnceLock<Option<Cyrus>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let pid = std::process::id().to_string();
                Self::start_in_tempdir(&["--owner-pid", &pid, "--cleanup"], true)
            })
            .as_ref()
    }

    fn start_in_tempdir(args: &[&str], shared: bool) -> Option<Cyrus> {
        let (dir, stdout) = super::servers::run_start_script("cyrus", "cy", args);
        let tempdir = if shared {
            // The watchdog removes it (--cleanup); a static is never dropped.
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Some(Self::from_start_output(tempdir, &stdout))
    }

    fn from_start_output(tempdir: Option<tempfile::TempDir>, stdout: &str) -> Cyrus {
        let field = |key: &str| super::servers::start_field(stdout, key);
        let stop = field("stop").map(PathBuf::from);
        let parsed = (|| {
            Some((
                field("pop3_port")?.parse::<u16>().ok()?,
                field("pop3s_port")?.parse::<u16>().ok()?,
                field("reader_port")?.parse::<u16>().ok()?,
                PathBuf::from(field("ca")?),
                field("pid")?.parse::<u32>().ok()?,
                stop.as_ref()?.parent()?.to_owned(),
            ))
        })();
        let Some((pop3_port, pop3s_port, reader_port, ca_file, pid, dir)) = parsed else {
            // The server may run; do not leak it.
            if let Some(stop) = stop {
                let _ = Command::new("bash").arg(stop).status();
            }
            panic!("cannot parse the output of tests/cyrus/start.sh:\n{stdout}");
        };
        Cyrus {
            dir,
            tempdir,
            pop3_port,
            pop3s_port,
            reader_port,
            ca_file,
            pid,
            stopped: false,
        }
    }

    /// The server's directory (configs, certificates, sasldb, spool, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Cyrus master process; every other process of the server is in
    /// its session.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The harness's private plain-text port (no LOGIN-DELAY, USER/PASS
    /// without TLS) that `server_messages` reads through.
    pub fn reader_port(&self) -> u16 {
        self.reader_port
    }

    /// Adds a user with an empty INBOX; the concrete type of `add_mailbox`.
    pub fn add_user(&self, name: &str, password: &str) -> CyrusMailbox {
        let script = manifest_dir().join("tests/cyrus/add-user.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(&self.dir)
            .arg(name)
            .arg(password)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "tests/cyrus/add-user.sh {name} failed: {}{}\n--- cyrus log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        CyrusMailbox {
            dir: self.dir.clone(),
            user: name.to_owned(),
            password: password.to_owned(),
            reader_port: self.reader_port,
        }
    }

    /// Stops the server and waits until all its processes have exited.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let stopped = Command::new("bash")
            .arg(self.dir.join("stop.sh"))
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

impl Drop for Cyrus {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PopServer for Cyrus {
    fn kind(&self) -> &'static str {
        "cyrus"
    }
    fn stores_verbatim(&self) -> bool {
        false
    }

    fn pop3_port(&self) -> u16 {
        self.pop3_port
    }

    fn pop3s_port(&self) -> u16 {
        self.pop3s_port
    }

    fn ca_file(&self) -> PathBuf {
        self.ca_file.clone()
    }

    fn add_mailbox(&self, name: &str, password: &str) -> Box<dyn Mailbox> {
        Box::new(self.add_user(name, password))
    }

    /// All work with a sasldb password. Cyrus also offers DIGEST-MD5 and,
    /// after TLS, SCRAM-SHA-1-PLUS and SCRAM-SHA-256-PLUS, which popsync does
    /// not speak; APOP is offered on both ports (the greeting has a
    /// timestamp); USER only after TLS.
    fn mechanisms(&self) -> Vec<&'static str> {
        vec![
            "user",
            "apop",
            "plain",
            "login",
            "cram-md5",
            "scram-sha-1",
            "scram-sha-256",
        ]
    }

    /// master.log (the master's stderr) and the per-user protocol telemetry
    /// (sessions after login). Cyrus logs everything else to syslog.
    fn log(&self) -> String {
        let mut out = String::new();
        let mut files = vec![self.dir.join("master.log")];
        if let Ok(users) = fs::read_dir(self.dir.join("conf/log")) {
            let mut sessions: Vec<PathBuf> = users
                .flatten()
                .filter_map(|user| fs::read_dir(user.path()).ok())
                .flat_map(|dir| dir.flatten().map(|e| e.path()))
                .collect();
            sessions.sort();
            files.extend(sessions);
        }
        for file in files {
            let text = match fs::read(&file) {
                Ok(bytes) => {
                    let tail = &bytes[bytes.len().saturating_sub(LOG_TAIL)..];
                    String::from_utf8_lossy(tail).into_owned()
                }
                Err(e) => format!("({e})"),
            };
            out.push_str(&format!("--- {} ---\n{text}\n", file.display()));
        }
        out.push_str("(Cyrus's own messages go to syslog)\n");
        out
    }
}

/// One user's INBOX on a `Cyrus`.
pub struct CyrusMailbox {
    dir: PathBuf,
    user: String,
    password: String,
    reader_port: u16,
}

impl CyrusMailbox {
    /// A logged-in session on the reader port; panics on failure.
    fn reader_session(&self) -> Pop3<TcpStream> {
        let context = |what: &str, e: &dyn std::fmt::Display| {
            format!(
                "reading {}'s mailbox on 127.0.0.1:{}: {what}: {e}",
                self.user, self.reader_port
            )
        };
        let stream = TcpStream::connect(("127.0.0.1", self.reader_port))
            .unwrap_or_else(|e| panic!("{}", context("connect", &e)));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut pop = Pop3::new(stream);
        let steps = [
            ("greeting", None),
            ("USER", Some(format!("USER {}", self.user))),
            ("PASS", Some(format!("PASS {}", self.password))),
        ];
        for (what, command) in steps {
            let reply = match &command {
                Some(command) => pop.command(command),
                None => pop.line(),
            }
            .unwrap_or_else(|e| panic!("{}", context(what, &e)));
            assert!(reply.starts_with("+OK"), "{}", context(what, &reply));
        }
        pop
    }
}

impl Mailbox for CyrusMailbox {
    fn user(&self) -> &str {
        &self.user
    }

    fn password(&self) -> &str {
        &self.password
    }

    /// Through lmtpd (tests/cyrus/deliver.sh); see there for what Cyrus
    /// adds to the message.
    fn deliver(&self, raw: &[u8]) {
        let script = manifest_dir().join("tests/cyrus/deliver.sh");
        let mut child = Command::new("bash")
            .arg(&script)
            .arg(&self.dir)
            .arg(&self.user)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        let mut stdin = child.stdin.take().expect("piped stdin");
        let written = stdin.write_all(raw);
        drop(stdin);
        let out = child.wait_with_output().expect("wait for deliver.sh");
        assert!(
            written.is_ok() && out.status.success(),
            "tests/cyrus/deliver.sh {} failed ({}): {}{}",
            self.user,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// RETR of every message, read on the reader port: LIST, RETR each,
    /// then the connection is closed without QUIT (nothing expunged, no
    /// login recorded, no \Seen set).
    fn server_messages(&self) -> Vec<Vec<u8>> {
        let mut pop = self.reader_session();
        let fail =
            |what: &str, e: &dyn std::fmt::Display| -> ! { reader_failed(&self.user, what, e) };
        let reply = pop.command("LIST").unwrap_or_else(|e| fail("LIST", &e));
        if !reply.starts_with("+OK") {
            fail("LIST", &reply);
        }
        let listing = pop.multiline().unwrap_or_else(|e| fail("LIST", &e));
        let numbers: Vec<u32> = String::from_utf8_lossy(&listing)
            .lines()
            .map(|l| {
                l.split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| fail("LIST", &l))
            })
            .collect();
        numbers
            .into_iter()
            .map(|n| {
                let what = format!("RETR {n}");
                let reply = pop.command(&what).unwrap_or_else(|e| fail(&what, &e));
                if !reply.starts_with("+OK") {
                    fail(&what, &reply);
                }
                pop.multiline().unwrap_or_else(|e| fail(&what, &e))
            })
            .collect()
    }
}

fn reader_failed(user: &str, what: &str, e: &dyn std::fmt::Display) -> ! {
    panic!("reading {user}'s mailbox: {what}: {e}")
}

/// A minimal blocking POP3 client over any stream (plain TCP, or a rustls
/// `StreamOwned` in tests): lines without CRLF, multi-line bodies
/// dot-unstuffed with LF line ends.
pub struct Pop3<S: Read + Write> {
    stream: BufReader<S>,
}

impl<S: Read + Write> Pop3<S> {
    pub fn new(stream: S) -> Pop3<S> {
        Pop3 {
            stream: BufReader::new(stream),
        }
    }

    /// One line from the server, CRLF removed; EOF is an error.
    pub fn line(&mut self) -> io::Result<String> {
        let raw = self.raw_line()?;
        let text = String::from_utf8_lossy(&raw);
        Ok(text.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn raw_line(&mut self) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        self.stream.read_until(b'\n', &mut raw)?;
        if !raw.ends_with(b"\n") {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed (after {:?})",
                    String::from_utf8_lossy(&raw)
                ),
            ));
        }
        Ok(raw)
    }

    /// Sends `line` and CRLF. Several commands may be joined by "\r\n".
    pub fn send(&mut self, line: &str) -> io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(format!("{line}\r\n").as_bytes())?;
        stream.flush()
    }

    /// `send` and the one-line reply.
    pub fn command(&mut self, line: &str) -> io::Result<String> {
        self.send(line)?;
        self.line()
    }

    /// The body of a multi-line reply up to the terminating ".": each line
    /// dot-unstuffed and ended with LF.
    pub fn multiline(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let raw = self.raw_line()?;
            if raw == b".\r\n" || raw == b".\n" {
                return Ok(body);
            }
            let line = raw.strip_prefix(b".").unwrap_or(&raw);
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            body.extend_from_slice(line);
            body.push(b'\n');
        }
    }

    /// The stream, for a TLS upgrade after STLS. Panics if the server sent
    /// anything beyond the last line read (it must wait for the handshake).
    pub fn into_inner(self) -> S {
        assert!(
            self.stream.buffer().is_empty(),
            "the server sent bytes before the TLS handshake: {:?}",
            String::from_utf8_lossy(self.stream.buffer())
        );
        self.stream.into_inner()
    }
}
