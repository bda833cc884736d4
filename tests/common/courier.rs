//! A private, throwaway Courier POP3 server (Debian's courier-pop 1.0.16,
//! run from the packages `tests/courier/install.sh` unpacked) behind the
//! `PopServer` trait, started by `tests/courier/start.sh` (needs root: the
//! server runs in a private mount namespace, see there).
//!
//! Users live in a private userdb; mail is a Maildir per user that
//! `deliver` writes into directly, as an MTA would. What to expect from
//! Courier as a client (all observed; details in tests/courier/start.sh):
//! - CAPA offers `LOGIN-DELAY 10` (not enforced) and PIPELINING, but bytes
//!   sent behind PASS or AUTH's last line are lost (pop3login execs pop3d);
//! - a message with raw UTF-8 in its headers is wrapped into a
//!   message/global MIME container unless the client sent `UTF8` first;
//! - a failed login is answered after 5 s;
//! - a message whose last line lacks LF is sent with CRLF added.
//!
//! ```ignore
//! let Some(courier) = common::courier::Courier::shared() else { return };
//! let alice = courier.add_mailbox("alice", "secret");
//! alice.deliver(b"Subject: hi\n\nbody\n");
//! let held = alice.server_messages();
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::servers::{Mailbox, PopServer};

/// How much of the log `log()` shows (the end of it).
const LOG_TAIL: usize = 32 * 1024;

/// Starts a non-shared Courier with `tests/courier/start.sh` options, or
/// returns from the calling test when it is not usable here and
/// `cannot_run` allowed the test to skip.
#[allow(unused_macros)]
macro_rules! require_courier {
    ($($arg:expr),* $(,)?) => {
        match $crate::common::courier::Courier::start(&[$($arg),*]) {
            Some(courier) => courier,
            None => return,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use require_courier;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where install.sh unpacked courier-pop and courier-base.
fn courier_root() -> PathBuf {
    manifest_dir().join("target/test-servers/courier/root")
}

/// Is everything start.sh runs there (the unpacked packages and the
/// apt-installed courier-authlib and courier-authlib-userdb)?
pub fn courier_installed() -> bool {
    let root = courier_root();
    let private = [
        "usr/sbin/couriertcpd",
        "usr/bin/couriertls",
        "usr/lib/courier/courier/courierpop3login",
        "usr/lib/courier/courier/courierpop3d",
    ]
    .iter()
    .all(|f| root.join(f).is_file());
    let system = [
        "/usr/lib/courier/courier-authlib/authdaemond",
        "/usr/sbin/makeuserdb",
        "/usr/sbin/userdbpw",
    ]
    .iter()
    .all(|f| Path::new(f).is_file());
    private && system
}

/// Is this process's effective user root? (start.sh needs it for the
/// private mount namespace.)
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            Some(uids.split_whitespace().nth(1)? == "0")
        })
        .unwrap_or(false)
}

/// Why `Courier::start` would return `None`, if it would.
pub fn unusable_reason() -> Option<String> {
    if !courier_installed() {
        return Some(format!(
            "not installed: run `bash tests/courier/install.sh` as root (it apt-installs \
             courier-authlib and courier-authlib-userdb, and unpacks courier-pop and \
             courier-base into {})",
            courier_root().display()
        ));
    }
    if !is_root() {
        return Some(
            "tests/courier/start.sh needs root (Courier's authentication daemon has its \
             paths compiled in, so the server runs in a private mount namespace)"
                .to_owned(),
        );
    }
    None
}

/// A private Courier POP3 server on 127.0.0.1: a plain port offering STLS
/// and an implicit-TLS port. A non-shared one is stopped (and waited for)
/// when dropped, also when the test panics; should the test binary die
/// without dropping it, the watchdog start.sh runs stops it.
pub struct Courier {
    dir: PathBuf,
    /// Removes DIR on drop; `None` for the shared server, whose watchdog
    /// stops it and removes DIR once this process has exited.
    tempdir: Option<tempfile::TempDir>,
    pop3_port: u16,
    pop3s_port: u16,
    ca_file: PathBuf,
    pid: u32,
    stopped: bool,
}

impl Courier {
    /// Starts a server with `tests/courier/start.sh` options. `None` means
    /// "not installed or not root", and `cannot_run` allowed the test to
    /// skip; any start failure panics.
    pub fn start(args: &[&str]) -> Option<Courier> {
        if let Some(reason) = unusable_reason() {
            super::cannot_run(&format!("courier not usable: {reason}"));
            return None;
        }
        Self::start_in_tempdir(args, false)
    }

    /// The server shared by every test of this test binary (each test adds
    /// its own mailbox). Started on first use with `--owner-pid` of this
    /// process: the watchdog stops it (and removes its directory) when the
    /// binary exits.
    pub fn shared() -> Option<&'static Courier> {
        if let Some(reason) = unusable_reason() {
            super::cannot_run(&format!("courier not usable: {reason}"));
            return None;
        }
        static SHARED: OnceLock<Option<Courier>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::start_in_tempdir(&["--cleanup"], true))
            .as_ref()
    }

    fn start_in_tempdir(args: &[&str], shared: bool) -> Option<Courier> {
        // Always with a watchdog: a test binary killed before it dropped
        // the server must not leave it running.
        let pid = std::process::id().to_string();
        let mut all_args: Vec<&str> = args.to_vec();
        if !args.contains(&"--owner-pid") {
            all_args.extend(["--owner-pid", &pid]);
        }
        let (dir, stdout) = super::servers::run_start_script("courier", "co", &all_args);
        let tempdir = if shared {
            // The watchdog removes it (--cleanup); a static is never dropped.
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Some(Self::from_start_output(tempdir, &stdout))
    }

    fn from_start_output(tempdir: Option<tempfile::TempDir>, stdout: &str) -> Courier {
        let field = |key: &str| super::servers::start_field(stdout, key);
        let stop = field("stop").map(PathBuf::from);
        let parsed = (|| {
            Some((
                field("pop3_port")?.parse::<u16>().ok()?,
                field("pop3s_port")?.parse::<u16>().ok()?,
                PathBuf::from(field("ca")?),
                field("pid")?.parse::<u32>().ok()?,
                stop.as_ref()?.parent()?.to_owned(),
            ))
        })();
        let Some((pop3_port, pop3s_port, ca_file, pid, dir)) = parsed else {
            // The server may run; do not leak it.
            if let Some(stop) = stop {
                let _ = Command::new("bash").arg(stop).status();
            }
            panic!("cannot parse the output of tests/courier/start.sh:\n{stdout}");
        };
        Courier {
            dir,
            tempdir,
            pop3_port,
            pop3s_port,
            ca_file,
            pid,
            stopped: false,
        }
    }

    /// The server's directory (certificates, etc/ with the userdb, homes,
    /// courier.log, stop.sh).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The supervisor; every process of the server is in its session.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Adds a user with an empty Maildir; the concrete type of
    /// `add_mailbox`. `name` is `[A-Za-z0-9._@+-]+`; `password` has no
    /// line break.
    pub fn add_user(&self, name: &str, password: &str) -> CourierMailbox {
        let script = manifest_dir().join("tests/courier/add-user.sh");
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
            "tests/courier/add-user.sh {name} failed: {}{}\n--- courier log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let maildir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let owner = fs::read_to_string(self.dir.join("mail-owner")).expect("read mail-owner");
        let id = |key: &str| -> u32 {
            owner
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("mail-owner lacks {key}"))
        };
        CourierMailbox {
            user: name.to_owned(),
            password: password.to_owned(),
            maildir,
            owner: (id("mail_uid"), id("mail_gid")),
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

impl Drop for Courier {
    fn drop(&mut self) {
        self.stop();
    }
}

impl PopServer for Courier {
    fn kind(&self) -> &'static str {
        "courier"
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

    /// USER/PASS and SASL PLAIN, LOGIN, CRAM-MD5, CRAM-SHA1 and CRAM-SHA256,
    /// on both ports, before and after TLS; it has no APOP, SCRAM or OAuth.
    fn mechanisms(&self) -> Vec<&'static str> {
        vec![
            "user",
            "plain",
            "login",
            "cram-md5",
            "cram-sha1",
            "cram-sha256",
        ]
    }

    /// The end of courier.log: authdaemond, couriertcpd, couriertls,
    /// pop3login and pop3d all write their stderr there.
    fn log(&self) -> String {
        let file = self.dir.join("courier.log");
        match fs::read(&file) {
            Ok(bytes) => {
                let tail = &bytes[bytes.len().saturating_sub(LOG_TAIL)..];
                format!(
                    "--- {} ---\n{}",
                    file.display(),
                    String::from_utf8_lossy(tail)
                )
            }
            Err(e) => format!("(no Courier log {}: {e})", file.display()),
        }
    }
}

/// One user's Maildir on a `Courier`; the harness writes to it and reads
/// from it directly ("server side").
pub struct CourierMailbox {
    user: String,
    password: String,
    maildir: PathBuf,
    owner: (u32, u32),
}

impl CourierMailbox {
    /// The user's server-side Maildir.
    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    /// The files in new/ and cur/, sorted by name, with their bytes. A file
    /// Courier renames while this reads (new/ to cur/ at login, a flag
    /// added at RETR) makes it list again.
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        'again: for _ in 0..20 {
            let mut files = Vec::new();
            for subdir in ["new", "cur"] {
                let dir = self.maildir.join(subdir);
                let entries =
                    fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
                for entry in entries {
                    let entry = entry.expect("read dir entry");
                    let name = entry.file_name().to_string_lossy().into_owned();
                    match fs::read(entry.path()) {
                        Ok(bytes) => files.push((name, bytes)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue 'again,
                        Err(e) => panic!("read {}: {e}", entry.path().display()),
                    }
                }
            }
            files.sort_by(|a, b| a.0.cmp(&b.0));
            return files;
        }
        panic!(
            "{}: messages kept being renamed while reading",
            self.maildir.display()
        );
    }
}

impl Mailbox for CourierMailbox {
    fn user(&self) -> &str {
        &self.user
    }

    fn password(&self) -> &str {
        &self.password
    }

    /// Into the user's Maildir as an MTA would; Courier numbers messages by
    /// arrival time, then name, so in delivery order.
    fn deliver(&self, raw: &[u8]) {
        super::deliver_into_maildir(&self.maildir, self.owner, raw);
    }

    /// The files in new/ and cur/ in delivery order (sorted by name), as a
    /// client that sent `UTF8` (popsync does, when offered) receives them:
    /// the stored bytes, plus the LF Courier adds when the last line has
    /// none. (A client that did not send `UTF8` gets a message with raw
    /// UTF-8 in its headers wrapped into a message/global container.)
    fn server_messages(&self) -> Vec<Vec<u8>> {
        self.files()
            .into_iter()
            .map(|(_, mut bytes)| {
                if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                    bytes.push(b'\n');
                }
                bytes
            })
            .collect()
    }
}
