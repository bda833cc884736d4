//! Tests of the test harness itself (tests/common, tests/dovecot): if these
//! fail, failures elsewhere say nothing about popsync.

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use common::{TestEnv, maildir_messages, require_dovecot};

#[test]
fn dovecot_serves_delivered_messages_over_pop3s_and_stls() {
    let dovecot = require_dovecot!();
    if Command::new("python3").arg("--version").output().is_err() {
        common::cannot_run("python3 not installed (needed by tests/dovecot/selfcheck.py)");
        return;
    }
    // selfcheck.py adds its own user, delivers a message with nasty lines and
    // checks POP3S, STLS, every SASL mechanism and certificate rejection.
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dovecot/selfcheck.py"))
        .arg(dovecot.dir())
        .arg(dovecot.pop3_port().to_string())
        .arg(dovecot.pop3s_port().to_string())
        .output()
        .expect("run python3 tests/dovecot/selfcheck.py");
    assert!(
        out.status.success(),
        "selfcheck failed:\n{}\n{}\n--- dovecot log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        dovecot.log()
    );
}

#[test]
fn dropping_dovecot_stops_the_server() {
    let dovecot = require_dovecot!();
    let pid = dovecot.pid();
    let port = dovecot.pop3_port();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(dovecot);
    // Exited, or a zombie its parent (often init) has yet to reap.
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z "),
        "the Dovecot master {pid} must have exited: {state}"
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn server_without_stls_has_no_pop3s_port() {
    let dovecot = require_dovecot!("--no-stls");
    assert!(TcpStream::connect(("127.0.0.1", dovecot.pop3_port())).is_ok());
    let conf = std::fs::read_to_string(dovecot.dir().join("dovecot.conf")).expect("conf");
    assert!(conf.contains("ssl = no"));
}

#[test]
fn delivered_messages_are_what_the_server_holds() {
    let dovecot = require_dovecot!();
    let user = dovecot.add_user("carol", "pw");
    user.deliver(b"Subject: one\r\n\r\nbody\r\n");
    user.deliver(&common::sample_message(2, 3));
    assert_eq!(
        user.server_messages(),
        vec![
            b"Subject: one\n\nbody\n".to_vec(),
            common::sample_message(2, 3)
        ],
        "CRLF is stored as LF, in delivery order"
    );
    assert_eq!(
        maildir_messages(user.maildir()),
        common::sorted(user.server_messages())
    );
}

#[test]
fn sample_message_has_the_lines_that_trip_clients() {
    let m = String::from_utf8(common::sample_message(7, 5)).expect("UTF-8");
    let lines: Vec<&str> = m.lines().collect();
    assert!(lines.contains(&"."));
    assert!(lines.iter().any(|l| l.starts_with("..") && l.len() > 2));
    assert!(lines.iter().any(|l| l.starts_with("From ")));
    assert!(lines.iter().any(|l| l.len() > 1000));
    assert!(m.starts_with("Return-Path: <sender7@example.org>\n"));
    assert!(m.contains("\nMessage-ID: <7.popsync-test@example.org>\n"));
    assert!(!m.contains('\r'));
    assert!(m.ends_with('\n'));
    assert_ne!(common::sample_message(1, 5), common::sample_message(2, 5));
}

#[test]
fn test_env_config_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let path = env.write_config("# empty\n");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(env.defaults_toml().contains("state_dir = "));
}
