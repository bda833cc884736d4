//! A throwaway Dovecot POP3 server per test (`tests/dovecot/start.sh`), its
//! users and their server-side Maildirs, and its certificates.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::servers;
use super::{cannot_run, deliver_into_maildir, maildir_files, manifest_dir};

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
    pub(super) pop3_port: u16,
    pub(super) pop3s_port: Option<u16>,
    ca_file: PathBuf,
    pid: u32,
    stopped: bool,
    /// Shared by the tests of a binary, which log in while others add users.
    pub(super) shared: bool,
}

impl Dovecot {
    /// Starts a server with a plain port (offering STLS) and a POP3S port.
    /// `None`: not installed, and `cannot_run` allowed the test to skip.
    pub fn start() -> Option<Dovecot> {
        Self::start_with(&[])
    }

    pub(super) fn start_with(args: &[&str]) -> Option<Dovecot> {
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
