//! Regression tests for issue 14 ("the rest of a code audit"), items 3, 4,
//! 11, 13, 14 and 15, through the real binary: the scripted server of
//! `tests/fault/`, a throwaway Dovecot where STLS matters, and two tiny
//! servers of this file for what neither can play (a certificate with
//! terminal escapes in its names, a SCRAM server error). Item 5 (Maildir
//! recovery syncs new/) is a unit test in `src/deliver/maildir.rs`, because
//! an fsync cannot be seen from outside.
//!
//! Asserted is what a user would check: exit codes, what stderr and stdout
//! say, the Maildir, what is left on the server. The contract is
//! /work/shared/DESIGN.md.

mod common;
mod fault;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::thread;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Account, Output, TestEnv, maildir_messages, require_dovecot, sorted, toml_string};
use fault::{FaultServer, plain_account_config};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A small message `i` with LF line ends.
fn mail(i: usize) -> Vec<u8> {
    format!(
        "From: Sender {i} <sender{i}@example.org>\nSubject: audit {i}\n\
         Message-ID: <{i}.audit@example.org>\n\nBody of message {i}.\n"
    )
    .into_bytes()
}

/// Text a hostile server may send, meant for a terminal: a title change, a
/// bell, a screen clear and a right-to-left override.
const HOSTILE: &str = "\x1b]0;owned\x07\x1b[2J\u{202e}";

/// `text` holds none of what `HOSTILE` smuggles.
#[track_caller]
fn assert_clean(text: &str, what: &str) {
    for bad in ['\x1b', '\x07', '\u{202e}'] {
        assert!(
            !text.contains(bad),
            "{what} holds the raw character {bad:?} sent by the server:\n{text:?}"
        );
    }
}

/// Are we root (can chown files to another user)?
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A user id that is not ours (nobody).
const OTHER_UID: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A config for the fault server like `plain_account_config`, but the
/// account names its password with `secret_line` (e.g. `password_file =
/// "..."`) instead of `password = "secret"`.
fn config_with_secret(dir: &Path, srv: &FaultServer, maildir: &Path, secret_line: &str) -> String {
    let config = plain_account_config(dir, "acct", srv, maildir, 10, "");
    config.replace("password = \"secret\"", secret_line)
}

// ---------------------------------------------------------------------------
// Item 3: an empty listing must not prune the seen-store
// ---------------------------------------------------------------------------

/// Issue 14 item 3. A server that lists nothing for one session (an index
/// rebuilt, a maintenance window) and then lists the same mail again: that
/// mail was delivered already and must not be downloaded a second time.
/// Played with two scripted servers (the store is per account, not per
/// port): the account points at the full one, at an empty one, then at the
/// full one again. Old code pruned every row on the empty listing and
/// delivered all three messages twice.
#[test]
fn an_empty_listing_keeps_the_seen_store_so_returning_mail_is_not_fetched_again() {
    let env = TestEnv::new();
    let maildir = env.path().join("Mail");
    let bodies: Vec<Vec<u8>> = (1..=3).map(mail).collect();
    let full = FaultServer::builder().messages(bodies.clone()).start();
    let empty = FaultServer::builder().start();

    let Output { code, stderr, .. } = env.run_config(
        &plain_account_config(env.path(), "acct", &full, &maildir, 10, ""),
        &["fetch", "--all"],
    );
    assert_eq!(code, 0, "first fetch: {stderr}");
    assert_eq!(maildir_messages(&maildir), sorted(bodies.clone()));

    let Output { code, stderr, .. } = env.run_config(
        &plain_account_config(env.path(), "acct", &empty, &maildir, 10, ""),
        &["fetch", "--all"],
    );
    assert_eq!(code, 0, "fetch of an empty mailbox: {stderr}");

    let Output { code, stderr, .. } = env.run_config(
        &plain_account_config(env.path(), "acct", &full, &maildir, 10, ""),
        &["fetch", "--all"],
    );
    assert_eq!(code, 0, "third fetch: {stderr}");
    assert_eq!(
        maildir_messages(&maildir),
        sorted(bodies),
        "the mail came back after an empty listing and was delivered again"
    );
}

/// The rows an empty listing keeps are only those of mail retention still
/// keeps on the server. Here the mail was delivered and then went from the
/// server without popsync recording a DELE (as after a run killed between
/// QUIT and that record): with retention "0d" those rows are done with, so
/// new mail with new UIDLs afterwards is new mail, not a UIDL reset.
#[test]
fn after_mail_popsync_would_delete_is_gone_new_mail_is_not_taken_for_a_uidl_reset() {
    let env = TestEnv::new();
    let maildir = env.path().join("Mail");
    let first: Vec<Vec<u8>> = (1..=10).map(mail).collect();
    let second: Vec<Vec<u8>> = (11..=20).map(mail).collect();
    let full = FaultServer::builder().messages(first.clone()).start();
    let empty = FaultServer::builder().start();
    let renewed = FaultServer::builder().messages(second.clone()).start();
    let zero = "retention = \"0d\"";
    let run = |srv: &FaultServer, extra: &str| {
        env.run_config(
            &plain_account_config(env.path(), "acct", srv, &maildir, 10, extra),
            &["fetch", "--all"],
        )
    };

    let Output { code, stderr, .. } = run(&full, "");
    assert_eq!(code, 0, "first fetch: {stderr}");
    let Output { code, stderr, .. } = run(&empty, zero);
    assert_eq!(code, 0, "fetch of the emptied mailbox: {stderr}");
    let Output { code, stderr, .. } = run(&renewed, zero);
    assert_eq!(code, 0, "new mail after the old went: {stderr}");
    let mut all = first;
    all.extend(second);
    assert_eq!(maildir_messages(&maildir), sorted(all));
}

// ---------------------------------------------------------------------------
// Item 4: a UIDL reused after its message was deleted is a new message
// ---------------------------------------------------------------------------

/// Issue 14 item 4. With `retention = "0d"` popsync DELEtes a message once
/// delivered; a server that later gives the same UIDL to a new message
/// (RFC 1939 only promises uniqueness among the messages present) must
/// have that message fetched, not DELEted unread as "already delivered".
/// Old code deleted it without downloading it: the mail was lost.
#[test]
fn a_reused_uidl_of_a_deleted_message_is_fetched_not_deleted_unread() {
    let env = TestEnv::new();
    let maildir = env.path().join("Mail");
    let srv = FaultServer::builder()
        .messages(vec![mail(1)])
        .uidls(&["u1"])
        .start();
    let config = plain_account_config(env.path(), "acct", &srv, &maildir, 10, "retention = \"0d\"");

    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "--all"]);
    assert_eq!(code, 0, "first fetch: {stderr}");
    assert!(srv.mailbox().is_empty(), "0d deletes after delivery");

    srv.add_message(&mail(2), "u1");
    let Output {
        code,
        stdout,
        stderr,
        ..
    } = env.run_config(&config, &["fetch", "--all", "--dry-run"]);
    assert_eq!(code, 0, "dry run: {stderr}");
    assert!(
        stdout.starts_with("fetch u1 "),
        "the new message under a reused UIDL should be fetched, the plan says:\n{stdout}"
    );

    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "--all"]);
    assert_eq!(code, 0, "second fetch: {stderr}");
    assert_eq!(
        maildir_messages(&maildir),
        sorted(vec![mail(1), mail(2)]),
        "the second message (same UIDL) was not delivered"
    );
    assert!(srv.mailbox().is_empty(), "delivered, then deleted (0d)");
}

/// Issue 14 item 4, the retention clock: a message under a reused UIDL is
/// kept for the retention period counted from its own download, not from
/// the download of the deleted message that had the UIDL before. Old code
/// kept the old first-seen time and deleted the new message a day after it
/// arrived (after first deleting it unread, see the test above).
#[test]
fn a_reused_uidl_counts_retention_from_its_own_download() {
    let env = TestEnv::new();
    let maildir = env.path().join("Mail");
    let srv = FaultServer::builder()
        .messages(vec![mail(1)])
        .uidls(&["u1"])
        .start();
    let zero = plain_account_config(env.path(), "acct", &srv, &maildir, 10, "retention = \"0d\"");
    let fourteen = plain_account_config(
        env.path(),
        "acct",
        &srv,
        &maildir,
        10,
        "retention = \"14d\"",
    );
    let run = |config: &str, now: &str| {
        env.run_config_with_env(config, &["fetch", "--all"], &[("POPSYNC_NOW", now)])
    };

    let Output { code, stderr, .. } = run(&zero, "2026-01-01T00:00:00Z");
    assert_eq!(code, 0, "{stderr}");
    assert!(srv.mailbox().is_empty());

    srv.add_message(&mail(2), "u1");
    let Output { code, stderr, .. } = run(&fourteen, "2026-02-01T00:00:00Z");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(maildir_messages(&maildir), sorted(vec![mail(1), mail(2)]));
    assert_eq!(srv.mailbox(), vec![mail(2)], "14d keeps it for now");

    let Output { code, stderr, .. } = run(&fourteen, "2026-02-02T00:00:00Z");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        srv.mailbox(),
        vec![mail(2)],
        "downloaded one day ago, retention 14d: it must stay on the server"
    );

    let Output { code, stderr, .. } = run(&fourteen, "2026-02-16T00:00:00Z");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        srv.mailbox().is_empty(),
        "15 days after its download it goes"
    );
}

// ---------------------------------------------------------------------------
// Item 11: huge LOGIN-DELAY and retention values
// ---------------------------------------------------------------------------

/// Issue 14 item 11. A server announcing an absurd LOGIN-DELAY made every
/// later run panic (chrono overflow at last login + delay). The value is
/// clamped (to one day): the next run is skipped as temporary (75) with a
/// message, and a run two days later logs in again.
#[test]
fn a_huge_login_delay_is_clamped_and_later_runs_do_not_panic() {
    for delay in ["100000000000000", "9000000000000000000"] {
        let env = TestEnv::new();
        let maildir = env.path().join("Mail");
        let login_delay = format!("LOGIN-DELAY {delay}");
        let srv = FaultServer::builder()
            .messages(vec![mail(1)])
            .capa(&[
                "USER",
                "UIDL",
                "TOP",
                "PIPELINING",
                "RESP-CODES",
                &login_delay,
            ])
            .start();
        let config = plain_account_config(env.path(), "acct", &srv, &maildir, 10, "");
        let run = |now: &str| {
            env.run_config_with_env(&config, &["fetch", "--all"], &[("POPSYNC_NOW", now)])
        };

        let Output { code, stderr, .. } = run("2026-03-01T00:00:00Z");
        assert_eq!(code, 0, "LOGIN-DELAY {delay}, first run: {stderr}");

        let Output { code, stderr, .. } = run("2026-03-01T01:00:00Z");
        assert_eq!(
            code, 75,
            "LOGIN-DELAY {delay}, an hour later: expected 75 (skipped), got {code}: {stderr}"
        );
        assert!(
            stderr.contains("LOGIN-DELAY") && !stderr.contains("panicked"),
            "LOGIN-DELAY {delay}: {stderr}"
        );

        let Output { code, stderr, .. } = run("2026-03-03T00:00:00Z");
        assert_eq!(code, 0, "LOGIN-DELAY {delay}, two days later: {stderr}");
        assert_eq!(srv.connections(), 2, "the skipped run must not log in");
    }
}

/// Issue 14 item 11. `retention = "100000000d"` (past the end of the
/// calendar chrono can count) made every fetch with delivered mail panic;
/// it is a config error (78) naming the file, the line and the key.
#[test]
fn a_retention_beyond_the_calendar_is_a_config_error_naming_the_key() {
    let env = TestEnv::new();
    let config = env.write_config(&format!(
        "{}\n[accounts.acct]\nhost = \"127.0.0.1\"\nuser = \"alice\"\n\
         password = \"secret\"\ndeliver = {{ maildir = {} }}\nretention = \"100000000d\"\n",
        env.defaults_toml(),
        toml_string(&env.maildir("acct").to_string_lossy()),
    ));
    let out = env.run(&["accounts"]);
    out.assert_code(78);
    let line = fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("retention"))
        .unwrap()
        + 1;
    for needle in [
        config.display().to_string(),
        format!("line {line}"),
        "retention".to_owned(),
        "forever".to_owned(),
    ] {
        assert!(
            out.stderr.contains(&needle),
            "the error should name {needle:?}:\n{}",
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// Item 13: server text reaches the terminal only sanitised
// ---------------------------------------------------------------------------

/// A TLS server (one connection) presenting a self-signed certificate whose
/// subject and issuer carry `HOSTILE`; the handshake fails on popsync's
/// side (untrusted), which is when `probe` shows the certificate anyway.
fn hostile_certificate_server() -> u16 {
    use tokio_rustls::rustls;
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("certificate params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("evil{HOSTILE}.example"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, format!("Org{HOSTILE}"));
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .expect("server TLS config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    thread::spawn(move || {
        if let Ok((mut tcp, _)) = listener.accept() {
            let Ok(mut conn) = rustls::ServerConnection::new(config) else {
                return;
            };
            while conn.is_handshaking() {
                if conn.complete_io(&mut tcp).is_err() {
                    break;
                }
            }
        }
    });
    port
}

/// Issue 14 item 13. `probe` printed the certificate's subject and issuer
/// as the server sent them: escape sequences reached the terminal.
#[test]
fn probe_sanitises_the_certificate_subject_and_issuer() {
    let port = hostile_certificate_server();
    let env = TestEnv::new();
    let config = format!(
        "[defaults]\nstate_dir = {}\n\n[accounts.acct]\nhost = \"127.0.0.1\"\nport = {port}\n\
         tls = \"implicit\"\nuser = \"alice\"\npassword = \"secret\"\n\
         deliver = {{ maildir = {} }}\n",
        toml_string(&env.path().join("state").to_string_lossy()),
        toml_string(&env.path().join("Mail").to_string_lossy()),
    );
    let Output {
        code,
        stdout,
        stderr,
        ..
    } = env.run_config(&config, &["probe", "acct"]);
    assert_eq!(
        code, 77,
        "an untrusted certificate is 77:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("subject") && stdout.contains("evil") && stdout.contains("Org"),
        "probe should still show the certificate:\n{stdout}"
    );
    assert_clean(&stdout, "probe's stdout");
    assert_clean(&stderr, "probe's stderr");
}

/// Issue 14 item 13. "No login mechanism in common" listed the mechanisms
/// the server offers as it spelled them.
#[test]
fn no_common_mechanism_error_sanitises_the_offered_mechanisms() {
    let env = TestEnv::new();
    let maildir = env.path().join("Mail");
    let sasl = format!("SASL X-EVIL{HOSTILE}");
    let srv = FaultServer::builder()
        .messages(vec![mail(1)])
        .capa(&["UIDL", &sasl])
        .start();
    let config = plain_account_config(
        env.path(),
        "acct",
        &srv,
        &maildir,
        10,
        "auth = [\"cram-md5\"]",
    );
    let Output {
        code,
        stdout,
        stderr,
        ..
    } = env.run_config(&config, &["fetch", "--all"]);
    assert_eq!(code, 77, "{stderr}");
    assert!(
        stderr.contains("no login mechanism in common") && stderr.contains("X-EVIL"),
        "{stderr}"
    );
    assert_clean(&stderr, "fetch's stderr");
    let Output {
        stdout: stdout_json,
        ..
    } = env.run_config(&config, &["fetch", "--all", "--json"]);
    assert_clean(&stdout, "fetch's stdout");
    assert_clean(&stdout_json, "fetch --json");
    let Output {
        stdout: probe_out,
        stderr: probe_err,
        ..
    } = env.run_config(&config, &["probe", "acct"]);
    assert_clean(&probe_out, "probe's stdout");
    assert_clean(&probe_err, "probe's stderr");
}

/// A plain-TCP POP3 server (one connection) offering only SCRAM-SHA-256
/// that answers the client's proof with the SCRAM server error `e=TEXT`
/// (RFC 5802 server-final-message).
fn scram_error_server(error: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    thread::spawn(move || {
        let Ok((tcp, _)) = listener.accept() else {
            return;
        };
        let mut out = tcp.try_clone().expect("clone socket");
        let mut lines = BufReader::new(tcp);
        let mut send = |s: &str| out.write_all(s.as_bytes()).is_ok();
        if !send("+OK scripted SCRAM server ready\r\n") {
            return;
        }
        let mut in_auth = false;
        loop {
            let mut line = String::new();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            let reply = if line.eq_ignore_ascii_case("CAPA") {
                "+OK\r\nSASL SCRAM-SHA-256\r\n.\r\n".to_owned()
            } else if let Some(ir) = line.strip_prefix("AUTH SCRAM-SHA-256 ") {
                let first = B64.decode(ir).unwrap_or_default();
                let first = String::from_utf8_lossy(&first).into_owned();
                let nonce = first
                    .split(',')
                    .find_map(|p| p.strip_prefix("r="))
                    .unwrap_or("")
                    .to_owned();
                in_auth = true;
                let server_first = format!(
                    "r={nonce}srvnonce,s={},i=4096",
                    B64.encode(b"popsync-audit-salt")
                );
                format!("+ {}\r\n", B64.encode(server_first))
            } else if line.eq_ignore_ascii_case("QUIT") {
                let _ = send("+OK bye\r\n");
                return;
            } else if in_auth && line != "*" {
                in_auth = false;
                format!("+ {}\r\n", B64.encode(format!("e={error}")))
            } else {
                in_auth = false;
                "-ERR no\r\n".to_owned()
            };
            if !send(&reply) {
                return;
            }
        }
    });
    port
}

/// Issue 14 item 13. The SCRAM server error (`e=...`) was printed as the
/// server sent it.
#[test]
fn scram_server_error_is_sanitised() {
    const ERROR: &str = "invalid-proof\x1b]0;owned\x07\x1b[2J\u{202e}";
    let port = scram_error_server(ERROR);
    let env = TestEnv::new();
    let config = format!(
        "[defaults]\nstate_dir = {}\ntimeout = 10\n\n[accounts.acct]\nhost = \"127.0.0.1\"\n\
         port = {port}\ntls = \"none\"\nallow_plaintext = true\nuser = \"alice\"\n\
         password = \"secret\"\nauth = [\"scram-sha-256\"]\ndeliver = {{ maildir = {} }}\n",
        toml_string(&env.path().join("state").to_string_lossy()),
        toml_string(&env.path().join("Mail").to_string_lossy()),
    );
    let Output {
        code,
        stdout,
        stderr,
        ..
    } = env.run_config(&config, &["fetch", "--all"]);
    assert_eq!(code, 77, "{stderr}");
    assert!(
        stderr.contains("rejected SCRAM") && stderr.contains("invalid-proof"),
        "{stderr}"
    );
    assert_clean(&stderr, "fetch's stderr");
    assert_clean(&stdout, "fetch's stdout");
}

// ---------------------------------------------------------------------------
// Item 14: no APOP on the strength of a clear-text greeting
// ---------------------------------------------------------------------------

/// Issue 14 item 14. With `tls = "starttls"` the APOP timestamp came in the
/// clear-text greeting, which RFC 2595 says to forget once TLS is up: APOP
/// is not offered then. Asked for APOP first and PLAIN second, popsync logs
/// in with PLAIN; asked for APOP alone, it refuses with 77 and says why.
/// Old code logged in with APOP over STLS.
#[test]
fn apop_is_not_used_after_stls() {
    let dovecot = require_dovecot!("--apop");
    let alice = dovecot.add_user("alice", "secret-apop");
    alice.deliver(&mail(1));

    let env = TestEnv::new();
    let maildir = env.maildir("acct");
    env.write_accounts(&[Account::new("acct", &dovecot, &alice)
        .tls("starttls")
        .maildir(&maildir)
        .extra(r#"auth = ["apop", "plain"]"#)
        .toml()]);
    let out = env.run(&["fetch", "acct", "-v"]);
    out.assert_code_with(0, &dovecot);
    assert!(
        out.stderr.contains("with PLAIN") && !out.stderr.contains("with APOP"),
        "after STLS popsync must skip APOP and log in with PLAIN:\n{}",
        out.stderr
    );
    assert_eq!(maildir_messages(&maildir), vec![mail(1)]);

    alice.deliver(&mail(2));
    let env = TestEnv::new();
    let maildir = env.maildir("acct");
    env.write_accounts(&[Account::new("acct", &dovecot, &alice)
        .tls("starttls")
        .maildir(&maildir)
        .extra(r#"auth = ["apop"]"#)
        .toml()]);
    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(77, &dovecot);
    for needle in ["APOP", "STLS", "RFC 2595"] {
        assert!(
            out.stderr.contains(needle),
            "the error should mention {needle}:\n{}",
            out.stderr
        );
    }
    assert!(maildir_messages(&maildir).is_empty());

    // Over implicit TLS the greeting came over TLS: APOP is fine there.
    let env = TestEnv::new();
    let maildir = env.maildir("acct");
    env.write_accounts(&[Account::new("acct", &dovecot, &alice)
        .maildir(&maildir)
        .extra(r#"auth = ["apop"]"#)
        .toml()]);
    let out = env.run(&["fetch", "acct", "-v"]);
    out.assert_code_with(0, &dovecot);
    assert!(out.stderr.contains("with APOP"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Item 15: who may write the config and the password file
// ---------------------------------------------------------------------------

/// A config whose account names a command (`password_command`, `mda`,
/// `filter`) and no `password`.
fn command_config(env: &TestEnv) -> String {
    format!(
        "{}\n[accounts.acct]\nhost = \"127.0.0.1\"\nuser = \"alice\"\n\
         password_command = \"echo secret\"\ndeliver = {{ mda = \"cat >/dev/null\" }}\n\
         filter = \"true\"\n",
        env.defaults_toml()
    )
}

/// Issue 14 item 15. A config that group or others can write, and that
/// names a command or a secret, lets them choose what popsync runs (or
/// where the password goes): refused with 78, naming the file and saying
/// what to do. Old code checked only the read bits, and only with
/// `password`. Readable by others is still fine without a `password`.
#[test]
fn a_config_others_can_write_is_refused_when_it_names_a_command_or_secret() {
    let env = TestEnv::new();
    let config = env.write_config(&command_config(&env));
    for mode in [0o602, 0o620, 0o666] {
        chmod(&config, mode);
        let out = env.run(&["accounts"]);
        assert_eq!(
            out.code, 78,
            "mode {mode:o}: expected 78\n{}{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stderr.contains(&config.display().to_string())
                && out.stderr.contains("chmod")
                && out.stderr.contains(&format!("{mode:04o}")),
            "mode {mode:o}: the error should name the file, its mode and chmod:\n{}",
            out.stderr
        );
    }
    chmod(&config, 0o644);
    env.run(&["accounts"]).assert_code(0);

    // A `password` is a secret too: group-writable is refused even though
    // nobody else may read it.
    let config = env.write_config(&format!(
        "{}\n[accounts.acct]\nhost = \"127.0.0.1\"\nuser = \"alice\"\n\
         password = \"secret\"\ndeliver = {{ maildir = \"/tmp/unused\" }}\n",
        env.defaults_toml()
    ));
    chmod(&config, 0o620);
    let out = env.run(&["accounts"]);
    out.assert_code(78);
    assert!(
        out.stderr.contains(&config.display().to_string())
            && out.stderr.contains("chmod")
            && out.stderr.contains("0620"),
        "the error should name the file, its mode and chmod:\n{}",
        out.stderr
    );
    chmod(&config, 0o600);
    env.run(&["accounts"]).assert_code(0);
}

/// Issue 14 item 15. A config owned by another user (not root) that names
/// a command: that user decides what popsync runs as us. Refused with 78,
/// saying chown. Needs root (to give the file away); skipped otherwise.
#[test]
fn a_config_owned_by_another_user_is_refused() {
    if !is_root() {
        common::cannot_run("needs root to chown a file to another user");
        return;
    }
    let env = TestEnv::new();
    let config = env.write_config(&command_config(&env));
    std::os::unix::fs::chown(&config, Some(OTHER_UID), None).expect("chown config");
    let out = env.run(&["accounts"]);
    out.assert_code(78);
    assert!(
        out.stderr.contains(&config.display().to_string())
            && out.stderr.contains("chown")
            && out.stderr.contains(&OTHER_UID.to_string()),
        "the error should name the file, its owner and chown:\n{}",
        out.stderr
    );
    std::os::unix::fs::chown(&config, Some(0), None).expect("chown config back");
    env.run(&["accounts"]).assert_code(0);
}

/// Issue 14 item 15. `password_file` gets the same checks: readable or
/// writable by others, or owned by another user, is refused with 78 before
/// anything is sent, naming the file and what to do. Old code read it
/// whatever its mode and logged in.
#[test]
fn a_password_file_others_can_read_or_write_is_refused() {
    let env = TestEnv::new();
    let maildir = env.path().join("Mail");
    let srv = FaultServer::builder().messages(vec![mail(1)]).start();
    let pw = env.path().join("pw");
    fs::write(&pw, "secret\n").unwrap();
    let config = config_with_secret(
        env.path(),
        &srv,
        &maildir,
        &format!("password_file = {}", toml_string(&pw.to_string_lossy())),
    );

    // (mode, owner: None for ours, the advice the error must give)
    let mut cases = vec![
        (0o644, None, "chmod 600"),
        (0o640, None, "chmod 600"),
        (0o602, None, "chmod 600"),
    ];
    if is_root() {
        cases.push((0o600, Some(OTHER_UID), "chown"));
    }
    for (mode, owner, advice) in cases {
        chmod(&pw, mode);
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&pw, Some(uid), None).expect("chown");
        }
        let what = format!("mode {mode:04o}, owner {owner:?}");
        let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "--all"]);
        assert_eq!(code, 78, "password_file {what}: {stderr}");
        assert!(
            stderr.contains("password_file")
                && stderr.contains(&pw.display().to_string())
                && stderr.contains(advice),
            "password_file {what}: the error should name the file and say {advice:?}:\n{stderr}"
        );
    }
    assert!(
        !srv.commands().iter().any(|c| c.starts_with("PASS")),
        "a password from an unsafe file was sent: {:?}",
        srv.commands()
    );

    if is_root() {
        std::os::unix::fs::chown(&pw, Some(0), None).expect("chown back");
    }
    chmod(&pw, 0o600);
    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "--all"]);
    assert_eq!(code, 0, "a private password_file works: {stderr}");
    assert_eq!(maildir_messages(&maildir), vec![mail(1)]);
}
