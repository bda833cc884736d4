//! `TestEnv`, the private directory the real binary runs in, the one runner
//! (`Running`, also for runs in the background) and its one `Output`, and
//! the `Account` builder for config blocks.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{Dovecot, User, servers, toml_string};

/// How long one `popsync` run may take before the harness kills it.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

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
    pub fn spawn(mut cmd: Command) -> Running {
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
