//! Logging in, through the real `popsync` binary: every login mechanism
//! against a real Dovecot (and the OAuth and SCRAM corner cases against the
//! scripted server of `tests/fault/`), a wrong password, where the password
//! comes from, a password with CR or LF, and what `-vv` shows. What a user
//! would check: the exit code, the error text, what arrived in the Maildir,
//! and what the server saw (Dovecot's log, the fault server's record).
//! The contract is /work/shared/DESIGN.md: promise 3 (credentials never in
//! clear text), the exit codes (77 refused, 78 bad config or unobtainable
//! secret), the `auth` and `password*` config keys. TLS is `tls.rs`.

mod common;
mod fault;
mod login;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{
    Account, Dovecot, Output, TestEnv, User, assert_mentions, maildir_messages, require_dovecot,
    sorted, toml_string,
};
use fault::{FaultServer, OAUTH_ERROR_JSON};
use login::*;

// --- every mechanism, forced with `auth = [...]` --------------------------

/// (`auth` name, what `-v` shows, what Dovecot logs as `method=`).
/// Dovecot logs USER/PASS as method=PLAIN.
const MECHANISMS: [(&str, &str, &str); 7] = [
    ("plain", "PLAIN", "PLAIN"),
    ("login", "LOGIN", "LOGIN"),
    ("cram-md5", "CRAM-MD5", "CRAM-MD5"),
    ("scram-sha-1", "SCRAM-SHA-1", "SCRAM-SHA-1"),
    ("scram-sha-256", "SCRAM-SHA-256", "SCRAM-SHA-256"),
    ("user", "USER", "PLAIN"),
    ("apop", "APOP", "APOP"),
];

/// One Dovecot (offering APOP too) and one user per mechanism: each forced
/// with `auth = [...]` logs in (both sides agree on the mechanism) and
/// fetches that user's mail. Every mechanism is tried; all failures are
/// reported together.
#[test]
fn each_forced_mechanism_logs_in_and_fetches() {
    let dovecot = require_dovecot!("--apop");
    // All users first: Dovecot may not notice a passwd-file changed within
    // the second it last read it.
    let users: Vec<(User, Vec<Vec<u8>>)> = MECHANISMS
        .iter()
        .map(|(config_name, _, _)| {
            let user = dovecot.add_user(&format!("u-{config_name}"), PASSWORD);
            let sent = deliver_samples(&user, 2);
            (user, sent)
        })
        .collect();
    let mut problems = Vec::new();
    for ((config_name, shown, dovecot_name), (user, sent)) in MECHANISMS.into_iter().zip(users) {
        let name = user.name.clone();
        let env = env_with(
            Account::new("acct", &dovecot, &user).extra(&format!("auth = [\"{config_name}\"]")),
        );
        let out = env.run(&["fetch", "acct", "-v"]);
        let expected_line = format!(
            "logging in to 127.0.0.1:{} as {name} with {shown}",
            dovecot.pop3s_port()
        );
        let logins = dovecot_logins_of(&dovecot, &name);
        if out.code != 0
            || !out.stderr.contains(&expected_line)
            || maildir_messages(&env.maildir("acct")) != sorted(sent)
            || logins != vec![dovecot_name.to_owned()]
        {
            problems.push(format!(
                "auth = [\"{config_name}\"]: exit {} (expected 0), Dovecot logins {logins:?} \
                 (expected [{dovecot_name:?}]), -v line {expected_line:?} {}, mail {}\n\
                 stderr:\n{}",
                out.code,
                if out.stderr.contains(&expected_line) {
                    "shown"
                } else {
                    "MISSING"
                },
                if maildir_messages(&env.maildir("acct")).len() == 2 {
                    "fetched"
                } else {
                    "NOT fetched"
                },
                out.stderr
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- dovecot log ---\n{}",
        problems.join("\n"),
        dovecot.log()
    );
}

#[test]
fn unset_auth_picks_scram_sha_256_even_when_apop_and_user_are_offered() {
    let dovecot = require_dovecot!("--apop");
    let alice = dovecot.add_user("alice", PASSWORD);
    let sent = deliver_samples(&alice, 1);
    let env = env_with(Account::new("acct", &dovecot, &alice));

    let out = env.run(&["fetch", "acct", "-v"]);
    out.assert_code_with(0, &dovecot);
    assert_mentions(
        &out.stderr,
        &format!(
            "logging in to 127.0.0.1:{} as alice with SCRAM-SHA-256",
            dovecot.pop3s_port()
        ),
        "stderr (-v)",
    );
    assert_eq!(maildir_messages(&env.maildir("acct")), sorted(sent));
    assert_eq!(dovecot_logins(&dovecot), vec!["SCRAM-SHA-256".to_owned()]);
}

#[test]
fn configured_list_uses_the_first_mechanism_the_server_offers() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    // Dovecot offers neither XOAUTH2 nor APOP (without --apop): CRAM-MD5 is
    // the first of the list it offers, though PLAIN is offered as well.
    let env = env_with(
        Account::new("acct", &dovecot, &alice)
            .extra(r#"auth = ["xoauth2", "apop", "cram-md5", "plain"]"#),
    );
    let out = env.run(&["fetch", "acct", "-v"]);
    out.assert_code_with(0, &dovecot);
    assert_mentions(&out.stderr, "as alice with CRAM-MD5", "stderr (-v)");
    assert_eq!(dovecot_logins(&dovecot), vec!["CRAM-MD5".to_owned()]);
}

#[test]
fn no_mechanism_in_common_is_77_naming_both_lists_and_tries_nothing() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let sent = deliver_samples(&alice, 1);
    let env =
        env_with(Account::new("acct", &dovecot, &alice).extra(r#"auth = ["xoauth2", "apop"]"#));
    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(77, &dovecot);
    // What popsync would use, and what the server offers.
    for name in ["XOAUTH2", "APOP", "SCRAM-SHA-256", "PLAIN"] {
        assert_mentions(&out.stderr, name, "stderr");
    }
    assert_no_auth_attempt(&dovecot, &out);
    assert!(maildir_messages(&env.maildir("acct")).is_empty());
    assert_eq!(alice.server_messages().len(), sent.len());
}

// --- wrong password ------------------------------------------------------

/// A wrong password with each of several mechanisms (auth unset, i.e.
/// SCRAM-SHA-256; PLAIN; CRAM-MD5; USER; APOP): 77, the error names the
/// server, the user and the mechanism, and nothing is fetched or deleted.
#[test]
fn wrong_password_is_77_with_each_mechanism() {
    let dovecot = require_dovecot!("--apop");
    let cases = [
        ("", "SCRAM-SHA-256"),
        ("plain", "PLAIN"),
        ("cram-md5", "CRAM-MD5"),
        ("user", "USER"),
        ("apop", "APOP"),
    ];
    // All users first (see each_forced_mechanism_logs_in_and_fetches).
    let users: Vec<(User, Vec<Vec<u8>>)> = cases
        .iter()
        .map(|(config_name, _)| {
            let name = format!(
                "w-{}",
                if config_name.is_empty() {
                    "default"
                } else {
                    config_name
                }
            );
            let user = dovecot.add_user(&name, PASSWORD);
            let sent = deliver_samples(&user, 2);
            (user, sent)
        })
        .collect();
    let mut problems = Vec::new();
    for ((config_name, shown), (user, sent)) in cases.into_iter().zip(users) {
        let name = user.name.clone();
        let mut account = Account::new("acct", &dovecot, &user)
            .password("not the password")
            .extra("retention = \"0d\"");
        if !config_name.is_empty() {
            account = account.extra(&format!("auth = [\"{config_name}\"]"));
        }
        let env = env_with(account);
        let out = env.run(&["fetch", "acct"]);
        let stderr = out.stderr.to_lowercase();
        let server = format!("127.0.0.1:{}", dovecot.pop3s_port());
        let ok = out.code == 77
            && stderr.contains("authentication failed")
            && out.stderr.contains(shown)
            && out.stderr.contains(&server)
            && out.stderr.contains(&name)
            && !out.stderr.contains("not the password")
            && maildir_messages(&env.maildir("acct")).is_empty()
            && user.server_messages().len() == sent.len()
            && dovecot_logins_of(&dovecot, &name).is_empty();
        if !ok {
            problems.push(format!(
                "auth = [{config_name:?}]: exit {} (expected 77; the error should say \
                 \"authentication failed\" and name {server}, {name} and {shown}, never \
                 the password; nothing fetched or deleted)\nstderr:\n{}",
                out.code, out.stderr
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- dovecot log ---\n{}",
        problems.join("\n"),
        dovecot.log()
    );
}

// --- where the password comes from -----------------------------------------

#[test]
fn password_file_first_line_is_the_password() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let sent = deliver_samples(&alice, 1);
    let env = TestEnv::new();
    // `~` is expanded in paths (HOME is DIR/home in a TestEnv).
    let file = env.path().join("home/pw");
    fs::write(
        &file,
        format!("{PASSWORD}\nthe second line is not the password\n"),
    )
    .expect("write password file");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
    let account = Account::new("acct", &dovecot, &alice).maildir(&env.maildir("acct"));
    let mut config = env.defaults_toml();
    config.push('\n');
    config.push_str(&with_secret_source(&account, "password_file = \"~/pw\""));
    env.write_config(&config);

    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(maildir_messages(&env.maildir("acct")), sorted(sent));
}

#[test]
fn password_command_first_line_of_stdout_is_the_password() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let sent = deliver_samples(&alice, 1);
    let env = TestEnv::new();
    let file = env.path().join("secret.txt");
    fs::write(&file, format!("{PASSWORD}\n")).expect("write secret");
    let command = format!(
        "cat {} && echo 'second line, not the password'",
        file.display()
    );
    let account = Account::new("acct", &dovecot, &alice).maildir(&env.maildir("acct"));
    let mut config = env.defaults_toml();
    config.push('\n');
    config.push_str(&with_secret_source(
        &account,
        &format!("password_command = {}", toml_string(&command)),
    ));
    env.write_config(&config);

    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(maildir_messages(&env.maildir("acct")), sorted(sent));
}

/// Runs `fetch` with `password_command = command` (plus `extra` lines) and
/// expects 78 naming the command, and no login attempt at the server.
fn failing_password_command_is_78(dovecot: &Dovecot, command: &str, extra: &str) -> Output {
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    let env = TestEnv::new();
    let account = Account::new("acct", dovecot, &alice)
        .maildir(&env.maildir("acct"))
        .extra(extra);
    let mut config = env.defaults_toml();
    config.push('\n');
    config.push_str(&with_secret_source(
        &account,
        &format!("password_command = {}", toml_string(command)),
    ));
    env.write_config(&config);

    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(78, dovecot);
    assert_mentions(&out.stderr, command, "stderr");
    assert_mentions(&out.stderr, "password_command", "stderr");
    assert_no_auth_attempt(dovecot, &out);
    assert!(maildir_messages(&env.maildir("acct")).is_empty());
    out
}

#[test]
fn failing_password_command_is_78_naming_it() {
    let dovecot = require_dovecot!();
    let out = failing_password_command_is_78(&dovecot, "echo 'vault is sealed' >&2; exit 3", "");
    assert_mentions(
        &out.stderr,
        "vault is sealed",
        "stderr (the command's own error)",
    );
}

#[test]
fn empty_password_command_output_is_78_naming_it() {
    let dovecot = require_dovecot!();
    failing_password_command_is_78(&dovecot, "printf ''", "");
}

#[test]
fn hanging_password_command_is_78_after_command_timeout() {
    let dovecot = require_dovecot!();
    let started = Instant::now();
    let out = failing_password_command_is_78(&dovecot, "exec sleep 30", "command_timeout = 1");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "command_timeout = 1 should end it in about a second, took {:?}",
        started.elapsed()
    );
    assert_mentions(&out.stderr, "command_timeout", "stderr");
}

/// A password command that hangs in a child process (as `pass` waiting for
/// gpg does): after `command_timeout` nothing of it may be left running.
#[test]
fn hanging_password_command_leaves_no_process_behind() {
    let env = TestEnv::new();
    let pidfile = env.path().join("child.pid");
    // Not `exec`: the shell waits for its child, like any pipeline would.
    let command = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let config = format!(
        "{}\n[accounts.acct]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"implicit\"\n\
         user = \"alice\"\npassword_command = {}\ncommand_timeout = 1\n\
         deliver = {{ maildir = {} }}\n",
        env.defaults_toml(),
        toml_string(&command),
        toml_string(&env.maildir("acct").to_string_lossy()),
    );
    env.write_config(&config);
    let out = env.run(&["fetch", "acct"]);
    out.assert_code(78);
    assert_mentions(&out.stderr, &command, "stderr");

    let pid: i32 = fs::read_to_string(&pidfile)
        .expect("the command wrote its child's pid")
        .trim()
        .parse()
        .expect("a pid");
    // Give a kill a moment to take effect; a zombie counts as gone.
    let deadline = Instant::now() + Duration::from_secs(2);
    let alive = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                let state = s.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.is_empty()
            })
            .unwrap_or(false)
    };
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = alive(pid);
    if left {
        // Our own grandchild: end it so the test leaves nothing behind.
        kill_pid(pid);
    }
    assert!(
        !left,
        "password_command timed out, but its child `sleep 30` (pid {pid}) was still \
         running after popsync exited; command_timeout should end the whole command"
    );
}

/// SIGKILL to one process we started (by pid), via kill(1).
fn kill_pid(pid: i32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

#[test]
fn config_with_password_readable_by_others_is_78_but_password_command_is_fine() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let sent = deliver_samples(&alice, 1);
    let env = env_with(Account::new("acct", &dovecot, &alice));
    let config = env.config_path();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod 644");

    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(78, &dovecot);
    assert_mentions(&out.stderr, &config.to_string_lossy(), "stderr");
    assert_no_auth_attempt(&dovecot, &out);

    // The same file without the password in it may be world-readable.
    let secret = env.path().join("secret.txt");
    fs::write(&secret, format!("{PASSWORD}\n")).expect("write secret");
    let account = Account::new("acct", &dovecot, &alice).maildir(&env.maildir("acct"));
    let mut text = env.defaults_toml();
    text.push('\n');
    text.push_str(&with_secret_source(
        &account,
        &format!(
            "password_command = {}",
            toml_string(&format!("cat {}", secret.display()))
        ),
    ));
    env.write_config(&text);
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(maildir_messages(&env.maildir("acct")), sorted(sent));
}

// --- a password with CR or LF ---------------------------------------------

/// A password with CR LF in it (a TOML "\r\n" escape) could inject a command
/// into the dialogue; popsync must refuse it (78, a password that cannot be
/// used) before sending anything of it, whatever the mechanism: with USER
/// (PASS), PLAIN and LOGIN (base64), or SCRAM (the default), Dovecot must
/// not see a login attempt.
#[test]
fn crlf_password_is_refused_before_any_login_attempt() {
    let dovecot = require_dovecot!();
    let cases = ["user", "plain", "login", ""];
    // All users first (see each_forced_mechanism_logs_in_and_fetches).
    let users: Vec<(User, Vec<Vec<u8>>)> = cases
        .iter()
        .map(|auth| {
            let name = format!("c-{}", if auth.is_empty() { "default" } else { auth });
            let user = dovecot.add_user(&name, PASSWORD);
            let sent = deliver_samples(&user, 1);
            (user, sent)
        })
        .collect();
    let mut problems = Vec::new();
    for (auth, (user, sent)) in cases.into_iter().zip(users) {
        let name = user.name.clone();
        let mut account = Account::new("acct", &dovecot, &user)
            .password("S3cret\r\nDELE 1")
            .extra("retention = \"0d\"");
        if !auth.is_empty() {
            account = account.extra(&format!("auth = [\"{auth}\"]"));
        }
        let env = env_with(account);
        let out = env.run(&["fetch", "acct"]);
        let attempts = dovecot_auth_attempts_of(&dovecot, &name);
        if out.code != 78 || !attempts.is_empty() || user.server_messages().len() != sent.len() {
            problems.push(format!(
                "auth = [{auth:?}]: exit {} (expected 78), Dovecot saw {} login attempt(s) \
                 (expected none): {attempts:?}\nstderr: {}",
                out.code,
                attempts.len(),
                out.stderr.trim()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- dovecot log ---\n{}",
        problems.join("\n"),
        dovecot.log()
    );
}

#[test]
fn crlf_password_never_reaches_the_fault_server() {
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "SASL PLAIN LOGIN"])
        .messages(vec![b"Subject: x\n\nhi\n".to_vec()])
        .start();
    let env = TestEnv::new();
    let mut problems = Vec::new();
    for auth in ["user", "plain", "login"] {
        let config = format!(
            "[defaults]\nstate_dir = {state}\ntimeout = 5\n\n[accounts.acct]\n\
             host = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nallow_plaintext = true\n\
             user = \"alice\"\npassword = \"secret\\r\\nDELE 1\"\nauth = [\"{auth}\"]\n\
             deliver = {{ maildir = {maildir} }}\n",
            state = toml_string(&env.path().join("state").to_string_lossy()),
            port = srv.port(),
            maildir = toml_string(&env.path().join("mail").to_string_lossy()),
        );
        let before = srv.connections();
        let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "acct"]);
        let commands: Vec<String> = srv.sessions()[before..].concat();
        // CAPA, USER NAME and QUIT carry no password; anything else does
        // (PASS, AUTH and its answers) or was injected ("DELE 1").
        let secretish: Vec<&String> = commands
            .iter()
            .filter(|c| {
                let verb = c.split(' ').next().unwrap_or("").to_ascii_uppercase();
                !matches!(verb.as_str(), "CAPA" | "USER" | "QUIT")
            })
            .collect();
        if code != 78 || !secretish.is_empty() {
            problems.push(format!(
                "auth = {auth}: exit {code} (expected 78), the server received \
                 {secretish:?} (expected nothing of the password); stderr: {}",
                stderr.trim()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(srv.mailbox().len(), 1);
}

// --- -vv shows the dialogue, never the secrets -------------------------------

#[test]
fn vv_trace_never_shows_the_password_or_sasl_payloads() {
    let dovecot = require_dovecot!("--apop");
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    for mech in [
        "plain",
        "login",
        "cram-md5",
        "scram-sha-1",
        "scram-sha-256",
        "user",
        "apop",
    ] {
        let env =
            env_with(Account::new("acct", &dovecot, &alice).extra(&format!("auth = [\"{mech}\"]")));
        let out = env.run(&["fetch", "acct", "-vv"]);
        out.assert_code_with(0, &dovecot);
        assert!(
            out.stderr.contains("C: ") && out.stderr.contains("S: "),
            "{mech}: -vv should show the dialogue:\n{}",
            out.stderr
        );
        assert_no_secret_in_trace(&out.stderr, PASSWORD, mech);
        // The PLAIN initial response as a whole.
        let plain = B64.encode(format!("\0alice\0{PASSWORD}"));
        assert!(!out.stderr.contains(&plain), "{mech}: {}", out.stderr);
    }
}

/// SCRAM's server messages (salt, nonces, and the server signature) are
/// SASL payloads too: with them a -vv log allows an offline dictionary
/// attack on the password (compute the server signature for each guess).
#[test]
fn vv_trace_does_not_show_scram_server_messages() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let env = env_with(Account::new("acct", &dovecot, &alice).extra(r#"auth = ["scram-sha-256"]"#));
    let out = env.run(&["fetch", "acct", "-vv"]);
    out.assert_code_with(0, &dovecot);
    assert!(
        out.stderr.contains("C: AUTH SCRAM-SHA-256"),
        "-vv should show the AUTH dialogue:\n{}",
        out.stderr
    );
    for line in out.stderr.lines() {
        let Some(payload) = line.split_once("S: + ").map(|(_, p)| p.trim()) else {
            continue;
        };
        let decoded = B64.decode(payload).unwrap_or_default();
        let text = String::from_utf8_lossy(&decoded);
        assert!(
            !(text.starts_with("r=") || text.starts_with("v=")),
            "-vv shows a SCRAM server message ({text:?}) in {line:?}; DESIGN.md: \
             SASL payloads are redacted\n{}",
            out.stderr
        );
    }
}

// --- OAuth and SCRAM against the scripted server --------------------------------

/// A config for the fault server `srv` (implicit TLS, its own CA), user
/// alice with `password` (the token for OAuth) and `auth = [auth]`.
fn fault_config(dir: &Path, srv: &FaultServer, password: &str, auth: &str) -> String {
    format!(
        "[defaults]\nstate_dir = {state}\ntimeout = 5\n\n[accounts.acct]\n\
         host = \"127.0.0.1\"\nport = {port}\ntls = \"implicit\"\nca_file = {ca}\n\
         user = \"alice\"\npassword = {password}\nauth = [\"{auth}\"]\n\
         deliver = {{ maildir = {maildir} }}\nreceived_header = false\n",
        state = toml_string(&dir.join("state").to_string_lossy()),
        port = srv.port(),
        ca = toml_string(&srv.ca_pem_path().to_string_lossy()),
        password = toml_string(password),
        maildir = toml_string(&dir.join("mail").to_string_lossy()),
    )
}

fn fault_mail() -> Vec<Vec<u8>> {
    vec![
        b"Subject: one\nFrom: a@example.org\n\nfirst\n".to_vec(),
        b"Subject: two\nFrom: b@example.org\n\nsecond\n".to_vec(),
    ]
}

/// The lines from `AUTH ...` to the end of the first login attempt.
fn auth_exchange(commands: &[String]) -> Vec<String> {
    let start = commands
        .iter()
        .position(|c| c.to_ascii_uppercase().starts_with("AUTH "))
        .unwrap_or_else(|| panic!("no AUTH command was sent: {commands:?}"));
    commands[start..].to_vec()
}

/// A token long enough that `AUTH XOAUTH2 <initial response>` exceeds 255.
fn long_token() -> String {
    (0..400)
        .map(|i| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789-._~"[i % 40]))
        .collect()
}

fn oauth_two_step_fetches(mechanism: &str, expected_ir: impl Fn(&str) -> String) {
    let token = long_token();
    let mail = fault_mail();
    let srv = FaultServer::builder()
        .capa(&["UIDL", "TOP", "PIPELINING", "SASL XOAUTH2 OAUTHBEARER"])
        .credentials("alice", &token)
        .messages(mail.clone())
        .tls()
        .start();
    let env = TestEnv::new();
    let config = fault_config(env.path(), &srv, &token, &mechanism.to_ascii_lowercase());
    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "acct", "-vv"]);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert_mentions(&stderr, &format!("with {mechanism}"), "stderr (-v)");
    assert_no_secret_in_trace(&stderr, &token, mechanism);
    assert_eq!(maildir_messages(&env.path().join("mail")), sorted(mail));

    let exchange = auth_exchange(&srv.commands());
    assert_eq!(
        exchange[0],
        format!("AUTH {mechanism}"),
        "a long initial response goes after the \"+\" challenge, not on the AUTH line"
    );
    assert!(exchange[0].len() + 2 <= 255);
    let ir = B64.decode(&exchange[1]).unwrap_or_else(|e| {
        panic!("the line after AUTH should be the base64 initial response ({e}): {exchange:?}")
    });
    assert_eq!(String::from_utf8_lossy(&ir), expected_ir(&token));
    for line in &srv.commands() {
        assert!(
            line.len() + 2 <= 255 || !line.to_ascii_uppercase().starts_with("AUTH"),
            "AUTH command longer than 255 octets: {} octets",
            line.len() + 2
        );
    }
}

#[test]
fn xoauth2_long_token_uses_the_two_step_form_and_fetches() {
    oauth_two_step_fetches("XOAUTH2", |token| {
        format!("user=alice\x01auth=Bearer {token}\x01\x01")
    });
}

#[test]
fn oauthbearer_long_token_uses_the_two_step_form_and_fetches() {
    oauth_two_step_fetches("OAUTHBEARER", |token| {
        format!("n,a=alice,\x01auth=Bearer {token}\x01\x01")
    });
}

#[test]
fn xoauth2_short_token_goes_on_the_auth_line() {
    let token = "ya29.short-token";
    let srv = FaultServer::builder()
        .capa(&["UIDL", "SASL XOAUTH2"])
        .credentials("alice", token)
        .messages(fault_mail())
        .tls()
        .start();
    let env = TestEnv::new();
    let config = fault_config(env.path(), &srv, token, "xoauth2");
    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "acct"]);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let exchange = auth_exchange(&srv.commands());
    let ir = B64.encode(format!("user=alice\x01auth=Bearer {token}\x01\x01"));
    assert_eq!(exchange[0], format!("AUTH XOAUTH2 {ir}"), "{exchange:?}");
    assert_eq!(maildir_messages(&env.path().join("mail")).len(), 2);
}

/// A wrong token: the server's error challenge, the client's `answer`, -ERR;
/// exit 77 with the server's JSON status in the error.
fn oauth_invalid_token_is_77(mechanism: &str, token_len: usize, answer: &str) {
    let srv = FaultServer::builder()
        .capa(&["UIDL", "SASL XOAUTH2 OAUTHBEARER"])
        .credentials("alice", "the-right-token")
        .messages(fault_mail())
        .tls()
        .start();
    let env = TestEnv::new();
    let wrong: String = "Wrong.Token-"
        .chars()
        .cycle()
        .enumerate()
        .map(|(i, c)| {
            if i % 12 == 11 {
                char::from(b'0' + (i / 12 % 10) as u8)
            } else {
                c
            }
        })
        .take(token_len)
        .collect();
    let config = fault_config(env.path(), &srv, &wrong, &mechanism.to_ascii_lowercase());
    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "acct", "-vv"]);
    assert_eq!(code, 77, "stderr:\n{stderr}");
    assert_no_secret_in_trace(&stderr, &wrong, mechanism);
    assert_mentions(
        &stderr,
        "invalid_token",
        "stderr (the server's JSON status)",
    );
    assert!(
        !stderr.contains(&wrong),
        "the error must not show the token:\n{stderr}"
    );

    let commands = srv.commands();
    let exchange = auth_exchange(&commands);
    // [AUTH MECH IR] or [AUTH MECH, IR], then the answer to the error.
    let answer_at = if exchange[0].split(' ').count() == 3 {
        1
    } else {
        2
    };
    assert_eq!(
        exchange.get(answer_at).map(String::as_str),
        Some(answer),
        "the answer to the error challenge {OAUTH_ERROR_JSON}: {exchange:?}"
    );
    let after: Vec<&String> = exchange[answer_at + 1..]
        .iter()
        .filter(|c| c.as_str() != "QUIT")
        .collect();
    assert!(
        after.is_empty(),
        "nothing but QUIT after a failed login (no retry): {after:?}"
    );
    assert!(maildir_messages(&env.path().join("mail")).is_empty());
}

#[test]
fn oauthbearer_invalid_token_answers_0x01_and_is_77_with_the_json_status() {
    oauth_invalid_token_is_77("OAUTHBEARER", 20, "AQ==");
}

#[test]
fn oauthbearer_invalid_long_token_answers_0x01_and_is_77() {
    oauth_invalid_token_is_77("OAUTHBEARER", 400, "AQ==");
}

#[test]
fn xoauth2_invalid_token_answers_an_empty_line_and_is_77_with_the_json_status() {
    oauth_invalid_token_is_77("XOAUTH2", 20, "");
}

#[test]
fn oauth_is_not_used_unless_named_and_the_error_names_both_lists() {
    let srv = FaultServer::builder()
        .capa(&["UIDL", "SASL XOAUTH2 OAUTHBEARER"])
        .credentials("alice", "token")
        .messages(fault_mail())
        .tls()
        .start();
    let env = TestEnv::new();
    let config = fault_config(env.path(), &srv, "token", "x").replace("auth = [\"x\"]\n", "");
    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "acct"]);
    assert_eq!(code, 77, "stderr:\n{stderr}");
    for name in ["SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER"] {
        assert_mentions(&stderr, name, "stderr");
    }
    let commands = srv.commands();
    assert!(
        !commands
            .iter()
            .any(|c| c.starts_with("AUTH") || c.starts_with("USER") || c.starts_with("PASS")),
        "no login attempt: {commands:?}"
    );
}

#[test]
fn scram_against_the_fault_server_works_when_the_server_proves_itself() {
    for mechanism in ["scram-sha-256", "scram-sha-1"] {
        let mail = fault_mail();
        let srv = FaultServer::builder()
            .capa(&["UIDL", "SASL SCRAM-SHA-1 SCRAM-SHA-256"])
            .credentials("alice", PASSWORD)
            .messages(mail.clone())
            .tls()
            .start();
        let env = TestEnv::new();
        let config = fault_config(env.path(), &srv, PASSWORD, mechanism);
        let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "acct"]);
        assert_eq!(code, 0, "{mechanism}: stderr:\n{stderr}");
        assert_eq!(maildir_messages(&env.path().join("mail")), sorted(mail));
    }
}

#[test]
fn scram_server_with_a_wrong_signature_is_refused_with_77() {
    for mechanism in ["scram-sha-256", "scram-sha-1"] {
        let srv = FaultServer::builder()
            .capa(&["UIDL", "SASL SCRAM-SHA-1 SCRAM-SHA-256"])
            .credentials("alice", PASSWORD)
            .messages(fault_mail())
            .scram_bad_signature()
            .tls()
            .start();
        let env = TestEnv::new();
        let config = fault_config(env.path(), &srv, PASSWORD, mechanism);
        let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "acct"]);
        assert_eq!(code, 77, "{mechanism}: stderr:\n{stderr}");
        assert_mentions(&stderr, "signature", "stderr");
        let commands = srv.commands();
        let exchange = auth_exchange(&commands);
        // AUTH with client-first, client-final; then no answer to the bad
        // server-final (or a cancel "*"), and never a mailbox command.
        assert!(
            exchange[2..].iter().all(|c| c == "*" || c == "QUIT"),
            "{mechanism}: after the bad server signature only \"*\" or QUIT may follow: {exchange:?}"
        );
        assert!(maildir_messages(&env.path().join("mail")).is_empty());
        assert_eq!(srv.mailbox().len(), 2);
    }
}

/// The helper the redaction checks rely on finds a secret inside any base64
/// payload, whatever its alignment.
#[test]
fn base64_forms_find_a_secret_inside_any_payload() {
    let secret = "a secret of some length";
    for prefix in ["", "x", "xy", "user=alice\u{1}auth=Bearer ", "\0alice\0"] {
        let payload = B64.encode(format!("{prefix}{secret}\u{1}\u{1}"));
        assert!(
            base64_forms(secret.as_bytes())
                .iter()
                .any(|f| payload.contains(f.as_str())),
            "prefix {prefix:?}: {payload}"
        );
    }
}
