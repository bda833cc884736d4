//! The real POP3 servers of the test matrix behind one interface, so a test
//! written once runs against Dovecot, Courier and Cyrus alike.
//!
//! Each server kind is started once per test binary (`shared`) and each test
//! adds its own mailbox, which keeps tests independent. A shared server is
//! stopped when the test binary exits: its start script runs a watchdog that
//! stops it once the owning process (this test binary) is gone, since Rust
//! never drops statics.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How often a start script is run again when a port it picked was taken by
/// a concurrently starting server in the meantime.
const START_ATTEMPTS: usize = 3;

/// Runs `tests/SERVER/start.sh DIR ARGS...` in a new directory under /tmp
/// (not $TMPDIR: unix socket paths in it must stay short) named
/// `popsync-PREFIX.*`, trying again when a port was taken between the
/// script picking it and the server binding it; any other failure panics
/// with the script's output. Returns the directory and the script's stdout
/// (`key=value` lines, read with `start_field`).
pub fn run_start_script(server: &str, prefix: &str, args: &[&str]) -> (tempfile::TempDir, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(server)
        .join("start.sh");
    let mut last_error = String::new();
    for _ in 0..START_ATTEMPTS {
        let dir = tempfile::Builder::new()
            .prefix(&format!("popsync-{prefix}."))
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("create a temp dir for {server} under /tmp: {e}"));
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir.path())
            .args(args)
            .env_remove("POP3_PORT")
            .env_remove("POP3S_PORT")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return (dir, stdout);
        }
        last_error = format!("{}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
        if !stderr.contains("Address already in use") {
            break;
        }
    }
    panic!("tests/{server}/start.sh failed: {last_error}");
}

/// The value of `key=value` in a start script's output.
pub fn start_field<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

/// One running POP3 server on 127.0.0.1.
pub trait PopServer: Send + Sync {
    /// "dovecot", "courier" or "cyrus": used in messages and test names.
    fn kind(&self) -> &'static str;
    /// The plain port; it offers STLS.
    fn pop3_port(&self) -> u16;
    /// The implicit-TLS port.
    fn pop3s_port(&self) -> u16;
    /// The PEM of the private CA that signed the server's certificate
    /// (SAN IP:127.0.0.1, DNS:localhost).
    fn ca_file(&self) -> PathBuf;
    /// Adds a user with an empty mailbox. `name` is `[a-z0-9]+`, `password`
    /// printable ASCII without ':' or spaces.
    fn add_mailbox(&self, name: &str, password: &str) -> Box<dyn Mailbox>;
    /// The popsync `auth` names of every login mechanism this server offers
    /// over TLS (e.g. "user", "plain", "scram-sha-256").
    fn mechanisms(&self) -> Vec<&'static str>;
    /// The server's log, for failure messages.
    fn log(&self) -> String;
    /// Whether a delivered message is stored unchanged. Cyrus's lmtpd puts
    /// its own trace headers in front, drops the message's Return-Path and
    /// adds a missing Date or Message-ID.
    fn stores_verbatim(&self) -> bool {
        true
    }
}

/// One user's mailbox on a `PopServer`.
pub trait Mailbox: Send + Sync {
    fn user(&self) -> &str;
    fn password(&self) -> &str;
    /// Puts `raw` (LF or CRLF line ends) into the mailbox as an MTA would;
    /// messages are numbered by the server in the order they were delivered.
    fn deliver(&self, raw: &[u8]);
    /// What the server now holds for this user, each message as a POP3
    /// client receives it (LF line ends, dot-unstuffed), in server order.
    /// Reading must not change what a later fetch sees as new.
    fn server_messages(&self) -> Vec<Vec<u8>>;
}

impl super::Dovecot {
    /// The Dovecot of this test binary, started on first use; `None`: not
    /// installed, and `cannot_run` allowed the test to skip.
    pub fn shared() -> Option<&'static super::Dovecot> {
        if !super::dovecot_installed() {
            super::cannot_run(super::DOVECOT_MISSING);
            return None;
        }
        static SHARED: std::sync::OnceLock<Option<super::Dovecot>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| {
                let owner = std::process::id().to_string();
                let mut dovecot = super::Dovecot::start_with(&["--owner-pid", &owner])?;
                dovecot.shared = true;
                Some(dovecot)
            })
            .as_ref()
    }
}

impl PopServer for super::Dovecot {
    fn kind(&self) -> &'static str {
        "dovecot"
    }
    fn pop3_port(&self) -> u16 {
        super::Dovecot::pop3_port(self)
    }
    fn pop3s_port(&self) -> u16 {
        super::Dovecot::pop3s_port(self)
    }
    fn ca_file(&self) -> PathBuf {
        super::Dovecot::ca_file(self)
    }
    fn add_mailbox(&self, name: &str, password: &str) -> Box<dyn Mailbox> {
        Box::new(self.add_user(name, password))
    }
    fn mechanisms(&self) -> Vec<&'static str> {
        // tests/dovecot/start.sh: auth_mechanisms, and USER/PASS over TLS.
        vec![
            "user",
            "plain",
            "login",
            "cram-md5",
            "scram-sha-1",
            "scram-sha-256",
        ]
    }
    fn log(&self) -> String {
        super::Dovecot::log(self)
    }
}

impl Mailbox for super::User {
    fn user(&self) -> &str {
        &self.name
    }
    fn password(&self) -> &str {
        &self.password
    }
    fn deliver(&self, raw: &[u8]) {
        super::User::deliver(self, raw)
    }
    fn server_messages(&self) -> Vec<Vec<u8>> {
        super::User::server_messages(self)
    }
}
