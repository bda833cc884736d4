//! What `popsync fetch` decides, through the real binary against the
//! scripted server of `tests/fault/`: duplicate UIDLs, a server that
//! renumbered its UIDLs, retention counted from when a message was first
//! seen, `max_size`, and `--dry-run`. What a user would check afterwards:
//! the exit code, the plan or report printed, the Maildir, what is left on
//! the server, which commands were sent. The contract is
//! /work/shared/DESIGN.md (retention, exit codes). How fetch copes with a
//! server that misbehaves is `session_faults.rs`.

mod common;
mod fault;

use common::{TestEnv, sorted};
use fault::{FaultServer, delivered, fetch, fetch_at, message, messages, sent, sent_verb};

#[test]
fn duplicate_uidls_are_each_fetched_once() {
    let mail = vec![message(1, 300), message(2, 350), message(3, 400)];
    let srv = FaultServer::builder()
        .messages(mail.clone())
        .uidls(&["same", "same", "other"])
        .start();
    let env = TestEnv::new();

    let run = fetch(&env, &srv, "", &["--json"]);
    run.assert_code(0);
    assert_eq!(run.json()["fetched"], 3);
    assert_eq!(delivered(&env), sorted(mail.clone()));

    let run = fetch(&env, &srv, "", &["--json"]);
    run.assert_code(0);
    assert_eq!(run.json()["fetched"], 0);
    assert_eq!(run.json()["new"], 0);
    assert!(sent_verb(&srv.session(1), "RETR").is_empty());
    assert_eq!(delivered(&env), sorted(mail));
}

#[test]
fn uidl_reset_is_refused_without_flag() {
    let mail = messages(6);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();

    fetch(&env, &srv, "", &[]).assert_code(0);
    assert_eq!(delivered(&env).len(), 6);

    srv.set_uidls(&["r1", "r2", "r3", "r4", "r5", "r6"]);
    let run = fetch(&env, &srv, "", &[]);
    run.assert_code(76);
    assert!(run.stderr.contains("--accept-uidl-reset"), "{}", run.stderr);
    assert!(
        run.stderr.contains("renumbered its UIDLs"),
        "{}",
        run.stderr
    );
    assert!(sent_verb(&srv.session(1), "RETR").is_empty());
    assert_eq!(delivered(&env).len(), 6, "nothing new delivered");

    let run = fetch(&env, &srv, "", &["--accept-uidl-reset"]);
    run.assert_code(0);
    let mut twice: Vec<Vec<u8>> = mail.iter().chain(&mail).cloned().collect();
    twice.sort();
    assert_eq!(delivered(&env), twice, "fetched again, as asked");
}

#[test]
fn retention_deletes_known_message_without_downloading_again() {
    let mail = messages(3);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();

    fetch(&env, &srv, "retention = \"forever\"", &[]).assert_code(0);
    assert_eq!(srv.mailbox(), mail, "forever keeps mail on the server");

    let run = fetch(&env, &srv, "retention = \"0d\"", &["--json"]);
    run.assert_code(0);
    assert_eq!(run.json()["deleted"], 3);
    let second = srv.session(1);
    assert!(sent_verb(&second, "RETR").is_empty(), "{second:?}");
    assert_eq!(sent_verb(&second, "DELE").len(), 3, "{second:?}");
    assert!(srv.mailbox().is_empty());
    assert_eq!(delivered(&env), sorted(mail));
}

#[test]
fn retention_days_uses_first_seen_time() {
    let mail = messages(2);
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();
    let keep = "retention = \"14d\"";

    fetch_at(&env, &srv, keep, &[], Some("2026-03-01T08:00:00Z")).assert_code(0);
    fetch_at(&env, &srv, keep, &[], Some("2026-03-14T08:00:00Z")).assert_code(0);
    assert!(
        sent_verb(&srv.session(1), "DELE").is_empty(),
        "13 days: kept"
    );
    assert_eq!(srv.mailbox(), mail);

    let run = fetch_at(&env, &srv, keep, &["--json"], Some("2026-03-15T08:00:00Z"));
    run.assert_code(0);
    assert_eq!(run.json()["deleted"], 2);
    assert!(sent_verb(&srv.session(2), "RETR").is_empty());
    assert!(
        srv.mailbox().is_empty(),
        "14 days after first seen: deleted"
    );
    assert_eq!(delivered(&env), sorted(mail));
}

#[test]
fn dry_run_prints_plan_and_changes_nothing() {
    let mail = vec![message(1, 300), message(2, 2000)];
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();
    let sizes: Vec<u64> = mail
        .iter()
        .map(|m| (m.len() + m.iter().filter(|&&b| b == b'\n').count()) as u64)
        .collect();

    let run = fetch(&env, &srv, "retention = \"0d\"", &["--dry-run"]);
    run.assert_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[0].starts_with(&format!("fetch uid-1 {} new", sizes[0])),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("fetch uid-2 {} new", sizes[1])),
        "{}",
        lines[1]
    );
    assert!(delivered(&env).is_empty());
    let commands = srv.commands();
    assert!(sent_verb(&commands, "RETR").is_empty() && sent_verb(&commands, "DELE").is_empty());
    assert_eq!(srv.mailbox(), mail);

    let run = fetch(&env, &srv, "max_size = \"1KB\"", &["--dry-run"]);
    run.assert_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("fetch uid-1 "), "{}", run.stdout);
    assert!(
        lines[1].starts_with(&format!("skip uid-2 {} ", sizes[1])),
        "{}",
        run.stdout
    );
    assert!(delivered(&env).is_empty());
    assert!(sent_verb(&srv.commands(), "RETR").is_empty());
}

#[test]
fn max_size_skips_big_messages_and_reports_them() {
    let mail = vec![message(1, 300), message(2, 5000)];
    let srv = FaultServer::builder().messages(mail.clone()).start();
    let env = TestEnv::new();
    let limit = "max_size = \"1KB\"";

    let run = fetch(&env, &srv, limit, &["--json", "-v"]);
    run.assert_code(0);
    let json = run.json();
    assert_eq!(
        (json["new"].clone(), json["fetched"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(json["skipped"], 1);
    let size = mail[1].len() + mail[1].iter().filter(|&&b| b == b'\n').count();
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("uid-2") && l.contains(&size.to_string())),
        "-v names the skipped UIDL and its size:\n{}",
        run.stderr
    );
    assert_eq!(delivered(&env), vec![mail[0].clone()]);
    assert_eq!(srv.mailbox(), mail, "skipped mail stays on the server");
    assert!(!sent(&srv.commands(), "RETR 2"));

    let run = fetch(&env, &srv, limit, &["--json"]);
    run.assert_code(0);
    let json = run.json();
    assert_eq!(
        (json["new"].clone(), json["skipped"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(json["fetched"], 0);
    assert_eq!(delivered(&env), vec![mail[0].clone()]);
}
