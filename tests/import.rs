//! `popsync seen import` against the state files the real tools write: each
//! of fetchmail, getmail (getmail6) and mpop fetches a mailbox from the
//! throwaway Dovecot over POP3S, trusting the harness CA and keeping the mail
//! on the server; popsync then imports the tool's state file, so its first
//! fetch downloads nothing, and mail that arrives afterwards is fetched.
//! Entries of another user in the same file (or another account's getmail
//! file) are reported as ignored.
//!
//! The tools are installed with apt-get when missing and running as root.
//! Otherwise the tests are skipped with a note, except under CI=true, where a
//! missing tool is a failure. The contract is /work/shared/DESIGN.md
//! ("Seen-store": `seen import`).

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Dovecot, Output, TestEnv, User, account_toml, maildir_messages, require_dovecot,
    sample_message, sorted,
};

/// The Debian packages and the binary each provides.
const TOOLS: [(&str, &str); 3] = [
    ("fetchmail", "fetchmail"),
    ("getmail", "getmail6"),
    ("mpop", "mpop"),
];

/// How long one run of a tool may take (each is also told to give up on a
/// silent server after 30 s, so that a stall ends with its own message).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

fn on_path(binary: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .any(|dir| dir.join(binary).is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Serializes the installs of the tests of this file (they run in parallel).
static INSTALL: Mutex<()> = Mutex::new(());

/// Makes `binary` available: as root, `apt-get install` the three tools when
/// it is missing. Returns false (the caller returns) when it is missing,
/// cannot be installed, and `common::cannot_run` allowed the test to skip.
fn require_tool(binary: &str) -> bool {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if on_path(binary) {
        return true;
    }
    let packages: Vec<&str> = TOOLS.iter().map(|(_, p)| *p).collect();
    if is_root() && on_path("apt-get") {
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .output()
                .expect("run apt-get install")
        };
        let mut out = install();
        if !out.status.success() {
            // The package lists may be missing or stale (a fresh container).
            let _ = Command::new("apt-get")
                .args(["update", "-q", "-o", "DPkg::Lock::Timeout=600"])
                .stdin(Stdio::null())
                .output();
            out = install();
        }
        if on_path(binary) {
            return true;
        }
        let why = format!(
            "apt-get install {} failed: {}\n{}",
            packages.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        common::cannot_run(&format!(
            "{binary} is not installed and could not be installed: {why}"
        ));
        return false;
    }
    common::cannot_run(&format!(
        "{binary} is not installed (apt-get install {}); run as root to install it",
        packages.join(" ")
    ));
    false
}

/// Runs a tool (stdin null), killing it after `TOOL_TIMEOUT`; panics with its
/// output unless it exits with one of `ok_codes`.
fn run_tool(mut cmd: Command, ok_codes: &[i32], dovecot: &Dovecot) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let started = Instant::now();
    let deadline = started + TOOL_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for tool") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.join().expect("stdout reader")).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().expect("stderr reader")).into_owned(),
        elapsed: started.elapsed(),
    };
    assert!(
        status.is_some() && ok_codes.contains(&output.code),
        "{cmd:?} failed (exit {}; expected one of {ok_codes:?}, -1 = killed after {TOOL_TIMEOUT:?})\n\
         --- stdout ---\n{}\n--- stderr ---\n{}\n--- dovecot log ---\n{}",
        output.code,
        output.stdout,
        output.stderr,
        dovecot.log()
    );
    output
}

/// Writes `text` to `path` with mode 0600 (the tools refuse readable
/// files holding a password).
fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

fn deliver(user: &User, first: usize, n: usize) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            let m = sample_message(i, 2 + i % 5);
            user.deliver(&m);
            m
        })
        .collect()
}

/// The scene of every test: a Dovecot with alice (5 messages) and bob (3),
/// and a popsync config with the account `alice` delivering to a Maildir.
struct Scene {
    dovecot: Dovecot,
    alice: User,
    bob: User,
    env: TestEnv,
    /// A directory for the tool's config and state.
    tool_dir: PathBuf,
}

fn scene(dovecot: Dovecot) -> Scene {
    let alice = dovecot.add_user("alice", "alice-pw");
    let bob = dovecot.add_user("bob", "bob-pw");
    deliver(&alice, 1, 5);
    deliver(&bob, 101, 3);
    let env = TestEnv::new();
    env.write_accounts(&[account_toml(
        "alice",
        &dovecot,
        &alice,
        "implicit",
        &env.maildir("alice"),
        "",
    )]);
    let tool_dir = env.path().join("tool");
    fs::create_dir_all(tool_dir.join("home")).expect("create tool dir");
    Scene {
        dovecot,
        alice,
        bob,
        env,
        tool_dir,
    }
}

impl Scene {
    /// `popsync seen import alice --from TOOL FILE`: exit 0, and the report
    /// line says how many were taken and ignored.
    fn import(&self, tool: &str, file: &Path, took: usize, ignored: usize) -> Output {
        let file_arg = file.to_string_lossy().into_owned();
        let out = self
            .env
            .run(&["seen", "import", "alice", "--from", tool, &file_arg]);
        out.assert_code(0);
        let report = format!("{}{}", out.stdout, out.stderr);
        assert!(
            report.contains(&format!("alice: took {took} UIDL(s) from {file_arg}")),
            "the report should say it took {took}:\n{out:?}"
        );
        assert!(
            report.contains(&format!("ignored {ignored}")),
            "the report should say it ignored {ignored}:\n{out:?}"
        );
        out
    }

    /// After the import: the first fetch downloads nothing; then two new
    /// messages arrive and exactly those are fetched.
    fn check_fetches_only_new_mail(&self) {
        let maildir = self.env.maildir("alice");
        let out = self.env.run(&["fetch", "--all", "--json"]);
        out.assert_code_with(0, &self.dovecot);
        let report: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).expect("one JSON object");
        assert_eq!(
            report["new"], 0,
            "after the import nothing is new: {report}"
        );
        assert_eq!(report["fetched"], 0, "{report}");
        assert!(maildir_messages(&maildir).is_empty(), "nothing downloaded");

        let fresh = deliver(&self.alice, 6, 2);
        let out = self.env.run(&["fetch", "--all", "--json"]);
        out.assert_code_with(0, &self.dovecot);
        let report: serde_json::Value =
            serde_json::from_str(out.stdout.trim()).expect("one JSON object");
        assert_eq!(report["fetched"], 2, "{report}");
        assert_eq!(
            maildir_messages(&maildir),
            sorted(fresh),
            "exactly the mail that arrived after the import"
        );
    }

    fn seen_count(&self) -> usize {
        let out = self.env.run(&["seen", "list", "alice"]);
        out.assert_code(0);
        out.stdout.lines().count()
    }
}

// ---------------------------------------------------------------------------
// fetchmail
// ---------------------------------------------------------------------------

#[test]
fn fetchmail_fetchids_is_imported() {
    let dovecot = require_dovecot!();
    if !require_tool("fetchmail") {
        return;
    }
    let s = scene(dovecot);
    let ids = s.tool_dir.join("fetchids");
    let rc = s.tool_dir.join("fetchmailrc");
    // fetchmail checks the certificate's host name against the poll name
    // only (not against IP SANs): the certificate names "localhost".
    let mut text = String::new();
    for user in [&s.alice, &s.bob] {
        text.push_str(&format!(
            "poll 127.0.0.1 with proto POP3 port {port} uidl timeout 30\n\
             \tuser \"{name}\" there with password \"{pw}\" is root here\n\
             \tkeep ssl sslcertck sslcommonname localhost sslcertfile \"{ca}\"\n\
             \tmda \"cat > /dev/null\"\n",
            port = s.dovecot.pop3s_port(),
            name = user.name,
            pw = user.password,
            ca = s.dovecot.ca_file().display(),
        ));
    }
    write_private(&rc, &text);
    let mut cmd = Command::new("fetchmail");
    cmd.arg("-f")
        .arg(&rc)
        .arg("-i")
        .arg(&ids)
        .args(["--nosyslog", "--pidfile"])
        .arg(s.tool_dir.join("fetchmail.pid"))
        .env("HOME", s.tool_dir.join("home"))
        .env("FETCHMAILHOME", s.tool_dir.join("home"));
    run_tool(cmd, &[0], &s.dovecot);
    assert_eq!(
        s.alice.server_messages().len(),
        5,
        "fetchmail kept the mail"
    );

    let text = fs::read_to_string(&ids).expect("fetchmail wrote its .fetchids");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("alice@127.0.0.1 "))
            .count(),
        5,
        "fetchmail's format: `user@server UIDL` per message\n{text}"
    );

    let out = s.import("fetchmail", &ids, 5, 3);
    assert!(
        out.stdout.contains("bob@127.0.0.1"),
        "the report names whose entries were ignored:\n{out:?}"
    );
    assert_eq!(s.seen_count(), 5);
    s.check_fetches_only_new_mail();
}

// ---------------------------------------------------------------------------
// getmail (getmail6)
// ---------------------------------------------------------------------------

/// A getmailrc for `user`: SimplePOP3SSLRetriever with the harness CA, mail
/// kept on the server, only new mail, delivered to /dev/null through an MDA
/// (getmail refuses Maildir delivery as root).
fn getmailrc(s: &Scene, user: &User) -> String {
    format!(
        "[retriever]\n\
         type = SimplePOP3SSLRetriever\n\
         server = 127.0.0.1\n\
         port = {port}\n\
         username = {name}\n\
         password = {pw}\n\
         ca_certs = {ca}\n\
         timeout = 30\n\
         \n\
         [destination]\n\
         type = MDA_external\n\
         path = /bin/sh\n\
         arguments = (\"-c\", \"cat > /dev/null\")\n\
         allow_root_commands = true\n\
         \n\
         [options]\n\
         read_all = false\n\
         delete = false\n\
         verbose = 0\n",
        port = s.dovecot.pop3s_port(),
        name = user.name,
        pw = user.password,
        ca = s.dovecot.ca_file().display(),
    )
}

#[test]
fn getmail_oldmail_file_is_imported() {
    let dovecot = require_dovecot!();
    if !require_tool("getmail") {
        return;
    }
    let s = scene(dovecot);
    let dir = &s.tool_dir;
    write_private(&dir.join("alice.rc"), &getmailrc(&s, &s.alice));
    write_private(&dir.join("bob.rc"), &getmailrc(&s, &s.bob));
    let mut cmd = Command::new("getmail");
    cmd.arg("--getmaildir")
        .arg(dir)
        .args(["--rcfile", "alice.rc", "--rcfile", "bob.rc"])
        .env("HOME", dir.join("home"));
    run_tool(cmd, &[0], &s.dovecot);
    assert_eq!(s.alice.server_messages().len(), 5, "getmail kept the mail");

    let port = s.dovecot.pop3s_port();
    let alice_file = dir.join(format!("oldmail-127.0.0.1-{port}-alice"));
    let bob_file = dir.join(format!("oldmail-127.0.0.1-{port}-bob"));
    let data = fs::read(&alice_file).expect("getmail wrote oldmail-SERVER-PORT-USER");
    assert_eq!(
        data.split(|&b| b == b'\n')
            .filter(|l| l.contains(&0))
            .count(),
        5,
        "getmail's format: `UIDL\\0TIME` per message\n{}",
        String::from_utf8_lossy(&data)
    );

    // Another account's file: everything in it is ignored.
    let out = s.import("getmail", &bob_file, 0, 3);
    assert!(out.stdout.contains("bob"), "{out:?}");
    assert_eq!(s.seen_count(), 0);

    s.import("getmail", &alice_file, 5, 0);
    assert_eq!(s.seen_count(), 5);
    s.check_fetches_only_new_mail();
}

// ---------------------------------------------------------------------------
// mpop
// ---------------------------------------------------------------------------

#[test]
fn mpop_uidls_file_is_imported() {
    let dovecot = require_dovecot!();
    if !require_tool("mpop") {
        return;
    }
    let s = scene(dovecot);
    let dir = &s.tool_dir;
    let uidls = dir.join("uidls");
    let delivered = dir.join("Maildir");
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(delivered.join(sub)).expect("create mpop's Maildir");
    }
    let mut rc = format!(
        "defaults\n\
         tls on\n\
         tls_starttls off\n\
         tls_trust_file {ca}\n\
         timeout 30\n\
         keep on\n\
         only_new on\n\
         uidls_file {uidls}\n\
         delivery maildir {maildir}\n",
        ca = s.dovecot.ca_file().display(),
        uidls = uidls.display(),
        maildir = delivered.display(),
    );
    for user in [&s.alice, &s.bob] {
        rc.push_str(&format!(
            "\naccount {name}\nhost 127.0.0.1\nport {port}\nuser {name}\npassword {pw}\n",
            name = user.name,
            pw = user.password,
            port = s.dovecot.pop3s_port(),
        ));
    }
    let rc_path = dir.join("mpoprc");
    write_private(&rc_path, &rc);
    let mut cmd = Command::new("mpop");
    cmd.arg("-C")
        .arg(&rc_path)
        .args(["--quiet", "alice", "bob"])
        .env("HOME", dir.join("home"));
    run_tool(cmd, &[0], &s.dovecot);
    assert_eq!(s.alice.server_messages().len(), 5, "mpop kept the mail");
    assert_eq!(maildir_messages(&delivered).len(), 8, "mpop fetched both");

    let text = fs::read_to_string(&uidls).expect("mpop wrote its uidls file");
    assert!(
        text.lines().any(|l| l == " 5 127.0.0.1 alice") && text.starts_with('#'),
        "mpop's format: comments, then ` N HOST USER` and N UIDs\n{text}"
    );

    let out = s.import("mpop", &uidls, 5, 3);
    assert!(out.stdout.contains("bob@127.0.0.1"), "{out:?}");
    assert_eq!(s.seen_count(), 5);
    s.check_fetches_only_new_mail();

    // Importing again takes nothing new.
    let again = s.env.run(&[
        "seen",
        "import",
        "alice",
        "--from",
        "mpop",
        &uidls.to_string_lossy(),
    ]);
    again.assert_code(0);
    assert!(again.stdout.contains("took 0"), "{again:?}");
}

// ---------------------------------------------------------------------------
// A file that is not what --from says
// ---------------------------------------------------------------------------

#[test]
fn a_file_of_the_wrong_kind_is_refused_with_its_line() {
    let env = TestEnv::new();
    env.write_config(&format!(
        "{}\n[accounts.alice]\nhost = \"127.0.0.1\"\nuser = \"alice\"\npassword = \"p\"\n\
         deliver = {{ maildir = \"/tmp/unused\" }}\n",
        env.defaults_toml()
    ));
    let file = env.path().join("fetchids");
    fs::write(&file, "alice@127.0.0.1 uid-1\nalice@127.0.0.1 uid-2\n").expect("write");
    let out = env.run(&[
        "seen",
        "import",
        "alice",
        "--from",
        "mpop",
        &file.to_string_lossy(),
    ]);
    assert_eq!(out.code, 74, "{out:?}");
    assert!(
        out.stderr.contains("is this really a"),
        "the error says the file may be of another kind:\n{out:?}"
    );
    assert!(
        out.stderr.contains(&*file.to_string_lossy()) && out.stderr.contains("line 1"),
        "the error names the file and the line:\n{out:?}"
    );
    let listed = env.run(&["seen", "list", "alice"]);
    assert_eq!(listed.stdout, "", "nothing imported from a refused file");
}
