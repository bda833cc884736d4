//! Retention (`retention = "Nd"`, "forever") and seen-store pruning through the
//! real binary against a real, throwaway Dovecot, with the clock moved by
//! `POPSYNC_NOW`: what a user would check afterwards (the server mailbox, the
//! Maildir, `seen list`, the `--dry-run` plan on stdout, the exit code).
//! The contract is /work/shared/DESIGN.md (Retention, Seen-store, CLI).

mod common;

use std::collections::BTreeMap;
use std::fs;

use chrono::{DateTime, Duration, Utc};
use common::{
    Account, Dovecot, MaildirFile, Output, TestEnv, User, maildir_files, maildir_messages,
    require_dovecot, sample_message, sorted,
};

/// The first run of every test: its rows record this time as first-seen.
const T0: &str = "2026-01-01T00:00:00Z";

/// `T0` plus `days` (and `secs`), as `POPSYNC_NOW` takes it.
fn at(days: i64, secs: i64) -> String {
    let t0: DateTime<Utc> = DateTime::parse_from_rfc3339(T0)
        .expect("T0 is RFC 3339")
        .with_timezone(&Utc);
    (t0 + Duration::days(days) + Duration::seconds(secs))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Delivers `n` sample messages (numbered from `first`) to `user`.
fn deliver_samples(user: &User, first: usize, n: usize) -> Vec<Vec<u8>> {
    (first..first + n)
        .map(|i| {
            let m = sample_message(i, 2 + i % 5);
            user.deliver(&m);
            m
        })
        .collect()
}

/// What POP3 LIST reports for a message stored with LF line ends: its
/// size with CRLF line ends.
fn wire_size(m: &[u8]) -> u64 {
    (m.len() + m.iter().filter(|&&b| b == b'\n').count()) as u64
}

/// A TestEnv with one account `name` fetching `user` over POP3S into
/// DIR/mail/NAME, plus `extra` lines.
fn env_with(name: &str, dovecot: &Dovecot, user: &User, extra: &str) -> TestEnv {
    let env = TestEnv::new();
    let account = Account::new(name, dovecot, user)
        .maildir(&env.maildir(name))
        .extra(extra)
        .toml();
    env.write_accounts(&[account]);
    env
}

/// `popsync ARGS` with `POPSYNC_NOW=now`.
fn run_at(env: &TestEnv, now: &str, args: &[&str]) -> Output {
    env.run_with_env(args, &[("POPSYNC_NOW", now)])
}

/// The `--json` object of the only account on stdout.
fn json_report(out: &Output) -> serde_json::Value {
    let line = out
        .stdout
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no JSON on stdout; stderr:\n{}", out.stderr));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

/// `seen list ACCOUNT --json`: one object per row.
fn seen_rows(env: &TestEnv, account: &str) -> Vec<serde_json::Value> {
    let out = env.run(&["seen", "list", account, "--json"]);
    out.assert_code(0);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// The UIDLs `seen list` shows for the account, sorted.
fn seen_uidls(env: &TestEnv, account: &str) -> Vec<String> {
    let mut uidls: Vec<String> = seen_rows(env, account)
        .iter()
        .map(|r| r["uidl"].as_str().expect("uidl is a string").to_owned())
        .collect();
    uidls.sort();
    uidls
}

/// The server's UIDL of each message, by message bytes, as `peek --json`
/// reports it (matched on the Subject).
fn uidls_by_subject(env: &TestEnv, account: &str) -> BTreeMap<String, String> {
    let out = env.run(&["peek", account, "--json"]);
    out.assert_code(0);
    out.stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}"));
            (
                v["subject"].as_str().expect("subject").to_owned(),
                v["uidl"].as_str().expect("uidl").to_owned(),
            )
        })
        .collect()
}

/// (name, bytes) of every file of a Maildir: a run that downloads nothing
/// leaves this unchanged.
fn snapshot(maildir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    maildir_files(maildir)
        .into_iter()
        .map(|MaildirFile { name, bytes, .. }| (name, bytes))
        .collect()
}

/// The `--dry-run` plan lines (`ACTION UIDL SIZE REASON`) of stdout, split.
fn plan(out: &Output) -> Vec<(String, String, u64, String)> {
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let action = parts.next().unwrap_or_default().to_owned();
            let uidl = parts.next().unwrap_or_default().to_owned();
            let size = parts
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("plan line without a SIZE: {l:?}\n{}", out.stdout));
            let reason = parts.next().unwrap_or_default().to_owned();
            (action, uidl, size, reason)
        })
        .collect()
}

#[test]
fn retention_14d_keeps_mail_for_13_days_then_deletes_it_without_downloading_again() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 3);
    let env = env_with("alice", &dovecot, &alice, "retention = \"14d\"");
    let maildir = env.maildir("alice");

    let first = run_at(&env, T0, &["fetch", "--all", "--json"]);
    first.assert_code_with(0, &dovecot);
    assert_eq!(json_report(&first)["fetched"], 3, "{}", first.stdout);
    assert_eq!(maildir_messages(&maildir), sorted(sent.clone()));
    assert_eq!(
        alice.server_messages().len(),
        3,
        "nothing is deleted on day 0"
    );
    for row in seen_rows(&env, "alice") {
        assert_eq!(
            row["first_seen"], T0,
            "the store records POPSYNC_NOW as first-seen time: {row}"
        );
    }
    let delivered = snapshot(&maildir);

    let day13 = run_at(&env, &at(13, 0), &["fetch", "--all", "--json"]);
    day13.assert_code_with(0, &dovecot);
    assert_eq!(json_report(&day13)["deleted"], 0, "{}", day13.stdout);
    assert_eq!(json_report(&day13)["fetched"], 0, "{}", day13.stdout);
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(sent.clone()),
        "13 days after the first download nothing is deleted"
    );
    let day14_minus_1s = run_at(&env, &at(14, -1), &["fetch", "--all"]);
    day14_minus_1s.assert_code_with(0, &dovecot);
    assert_eq!(
        alice.server_messages().len(),
        3,
        "one second before 14 days nothing is deleted"
    );

    let day14 = run_at(&env, &at(14, 0), &["fetch", "--all", "--json"]);
    day14.assert_code_with(0, &dovecot);
    let report = json_report(&day14);
    assert_eq!(report["deleted"], 3, "{report}");
    assert_eq!(
        report["fetched"], 0,
        "nothing is downloaded again: {report}"
    );
    assert!(
        alice.server_messages().is_empty(),
        "14 days after the first download every message is deleted on the server"
    );
    assert_eq!(
        snapshot(&maildir),
        delivered,
        "deleting on the server leaves the Maildir as it was (no second copy)"
    );
}

#[test]
fn dry_run_on_day_14_prints_the_retention_deletes_and_changes_nothing() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 3);
    let env = env_with("alice", &dovecot, &alice, "retention = \"14d\"");
    let maildir = env.maildir("alice");
    run_at(&env, T0, &["fetch", "--all"]).assert_code_with(0, &dovecot);
    let delivered = snapshot(&maildir);
    let rows_before = seen_rows(&env, "alice");
    let uidls = seen_uidls(&env, "alice");
    let by_subject = uidls_by_subject(&env, "alice");

    let out = run_at(&env, &at(14, 0), &["fetch", "--dry-run", "--all"]);
    out.assert_code_with(0, &dovecot);
    let lines = plan(&out);
    assert_eq!(lines.len(), 3, "one plan line per message:\n{}", out.stdout);
    let mut planned_uidls = Vec::new();
    for (action, uidl, size, reason) in &lines {
        assert_eq!(action, "delete", "stdout:\n{}", out.stdout);
        assert!(
            reason.starts_with("retention"),
            "the REASON names retention: {reason:?}\n{}",
            out.stdout
        );
        let subject = by_subject
            .iter()
            .find_map(|(s, u)| (u == uidl).then_some(s))
            .unwrap_or_else(|| panic!("plan names a UIDL not on the server: {uidl}"));
        let i: usize = subject
            .strip_prefix("Test message ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected subject {subject:?}"));
        assert_eq!(
            *size,
            wire_size(&sent[i - 1]),
            "SIZE is the server's size of {uidl}"
        );
        planned_uidls.push(uidl.clone());
    }
    planned_uidls.sort();
    assert_eq!(planned_uidls, uidls);
    assert!(
        !out.stderr.contains("delete "),
        "the plan goes to stdout only:\n{}",
        out.stderr
    );

    assert_eq!(
        sorted(alice.server_messages()),
        sorted(sent),
        "--dry-run deletes nothing"
    );
    assert_eq!(snapshot(&maildir), delivered, "--dry-run downloads nothing");
    assert_eq!(
        seen_rows(&env, "alice"),
        rows_before,
        "--dry-run leaves the seen-store as it was"
    );

    let day13 = run_at(&env, &at(13, 0), &["fetch", "--dry-run", "--all"]);
    day13.assert_code_with(0, &dovecot);
    let lines = plan(&day13);
    assert_eq!(lines.len(), 3, "{}", day13.stdout);
    assert!(
        lines.iter().all(|(action, ..)| action == "keep"),
        "on day 13 every message is kept:\n{}",
        day13.stdout
    );
}

#[test]
fn retention_counts_from_each_messages_own_first_download() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let early = deliver_samples(&alice, 1, 2);
    let env = env_with("alice", &dovecot, &alice, "retention = \"14d\"");
    let maildir = env.maildir("alice");
    run_at(&env, T0, &["fetch", "--all"]).assert_code_with(0, &dovecot);

    let late = deliver_samples(&alice, 10, 1);
    run_at(&env, &at(10, 0), &["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert_eq!(alice.server_messages().len(), 3);

    run_at(&env, &at(14, 0), &["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert_eq!(
        alice.server_messages(),
        late,
        "on day 14 only the messages first downloaded on day 0 are deleted"
    );

    run_at(&env, &at(23, 0), &["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert_eq!(
        alice.server_messages(),
        late,
        "day 23: 13 days for the late one"
    );

    run_at(&env, &at(24, 0), &["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert!(
        alice.server_messages().is_empty(),
        "day 24: 14 days after its first download the late message goes too"
    );
    let mut all = early;
    all.extend(late);
    assert_eq!(
        maildir_messages(&maildir),
        sorted(all),
        "each message is in the Maildir exactly once"
    );
}

#[test]
fn retention_forever_never_deletes_even_years_later() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 2);
    let env = env_with("alice", &dovecot, &alice, "retention = \"forever\"");
    run_at(&env, T0, &["fetch", "--all"]).assert_code_with(0, &dovecot);

    let plan_out = run_at(&env, &at(3650, 0), &["fetch", "--dry-run", "--all"]);
    plan_out.assert_code_with(0, &dovecot);
    let lines = plan(&plan_out);
    assert_eq!(lines.len(), 2, "{}", plan_out.stdout);
    assert!(
        lines.iter().all(|(action, ..)| action == "keep"),
        "retention forever keeps everything:\n{}",
        plan_out.stdout
    );

    run_at(&env, &at(3650, 0), &["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert_eq!(sorted(alice.server_messages()), sorted(sent.clone()));
    assert_eq!(maildir_messages(&env.maildir("alice")), sorted(sent));
}

#[test]
fn readme_example_dry_run_next_january_shows_what_retention_would_delete() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let bob = dovecot.add_user("bob", "bobs secret");
    deliver_samples(&alice, 1, 2);
    deliver_samples(&bob, 20, 2);
    let env = TestEnv::new();
    env.write_accounts(&[
        Account::new("alice", &dovecot, &alice)
            .maildir(&env.maildir("alice"))
            .extra("retention = \"14d\"")
            .toml(),
        Account::new("bob", &dovecot, &bob)
            .maildir(&env.maildir("bob"))
            .toml(),
    ]);
    run_at(&env, "2026-06-01T00:00:00Z", &["fetch", "--all"]).assert_code_with(0, &dovecot);
    // New mail for bob after that run: next January it is still to fetch.
    deliver_samples(&bob, 30, 1);
    let alice_before = snapshot(&env.maildir("alice"));
    let bob_before = snapshot(&env.maildir("bob"));
    let server_before = (alice.server_messages(), bob.server_messages());

    // README: POPSYNC_NOW=2027-01-01T00:00:00Z popsync fetch --all --dry-run
    let out = run_at(
        &env,
        "2027-01-01T00:00:00Z",
        &["fetch", "--dry-run", "--all"],
    );
    out.assert_code_with(0, &dovecot);
    let lines = plan(&out);
    let count = |a: &str| lines.iter().filter(|(action, ..)| action == a).count();
    assert_eq!(
        (count("delete"), count("keep"), count("fetch"), lines.len()),
        (2, 2, 1, 5),
        "alice's two messages are due, bob's two are kept forever, bob's new one is to fetch:\n{}",
        out.stdout
    );
    assert_eq!(
        (alice.server_messages(), bob.server_messages()),
        server_before,
        "--dry-run changes nothing on the server"
    );
    assert_eq!(snapshot(&env.maildir("alice")), alice_before);
    assert_eq!(snapshot(&env.maildir("bob")), bob_before);

    // The same through the shell, exactly as the README writes it.
    let script = format!(
        "POPSYNC_NOW=2027-01-01T00:00:00Z {} --config {} fetch --dry-run --all",
        env!("CARGO_BIN_EXE_popsync"),
        env.config_path().display()
    );
    let via_sh = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .env("HOME", env.path().join("home"))
        .env_remove("POPSYNC_NOW")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run /bin/sh");
    assert_eq!(
        via_sh.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&via_sh.stderr)
    );
    // Accounts run in parallel, so only the set of lines is fixed.
    let sorted_lines = |s: &str| {
        let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted_lines(&String::from_utf8_lossy(&via_sh.stdout)),
        sorted_lines(&out.stdout)
    );
}

#[test]
fn check_when_retention_is_due_deletes_nothing() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 3);
    let env = env_with("alice", &dovecot, &alice, "retention = \"14d\"");
    run_at(&env, T0, &["fetch", "--all"]).assert_code_with(0, &dovecot);

    let out = run_at(&env, &at(30, 0), &["check", "--all"]);
    out.assert_code_with(1, &dovecot);
    assert_eq!(out.stdout, "alice: 0 new (0 bytes)\n");
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(sent),
        "check deletes nothing, even when retention is due"
    );
}

#[test]
fn messages_deleted_by_another_client_leave_the_seen_store_after_the_next_run() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 3);
    let env = env_with("alice", &dovecot, &alice, "");
    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    let by_subject = uidls_by_subject(&env, "alice");
    assert_eq!(seen_uidls(&env, "alice").len(), 3);

    // Another client (webmail, a phone) deletes messages 1 and 3.
    for file in maildir_files(alice.maildir()) {
        if file.bytes == sent[0] || file.bytes == sent[2] {
            fs::remove_file(alice.maildir().join(file.subdir).join(&file.name))
                .expect("delete on the server");
        }
    }
    assert_eq!(alice.server_messages(), vec![sent[1].clone()]);
    assert_eq!(
        seen_uidls(&env, "alice").len(),
        3,
        "the store changes only in a session"
    );

    env.run(&["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert_eq!(
        seen_uidls(&env, "alice"),
        vec![by_subject["Test message 2"].clone()],
        "after a successful run only the message still on the server is listed"
    );
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(sent),
        "pruning the store never touches the Maildir"
    );
}

#[test]
fn messages_deleted_by_retention_leave_the_seen_store_and_are_not_fetched_again() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let sent = deliver_samples(&alice, 1, 2);
    let env = env_with("alice", &dovecot, &alice, "retention = \"14d\"");
    run_at(&env, T0, &["fetch", "--all"]).assert_code_with(0, &dovecot);
    run_at(&env, &at(14, 0), &["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert!(alice.server_messages().is_empty());

    let later = deliver_samples(&alice, 5, 1);
    let out = run_at(&env, &at(15, 0), &["fetch", "--all", "--json"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(json_report(&out)["fetched"], 1, "{}", out.stdout);
    let rows = seen_rows(&env, "alice");
    assert_eq!(
        rows.len(),
        1,
        "only the message on the server is remembered: {rows:?}"
    );
    assert_eq!(rows[0]["first_seen"], at(15, 0));
    let mut all = sent;
    all.extend(later);
    assert_eq!(maildir_messages(&env.maildir("alice")), sorted(all));
}

#[test]
fn messages_never_downloaded_are_never_deleted_by_retention() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let small = sample_message(1, 2);
    let mut large = sample_message(2, 2);
    while large.len() < 30_000 {
        large.extend_from_slice(b"padding line to make the message larger than max_size\n");
    }
    let later = sample_message(3, 2);
    for m in [&small, &large, &later] {
        alice.deliver(m);
    }
    let env = TestEnv::new();
    // max_size keeps the large one out; the filter says "not now" (exit 2)
    // to message 3 every time.
    let filter = "grep -q '^Subject: Test message 3' && exit 2; exit 0";
    env.write_accounts(&[Account::new("alice", &dovecot, &alice)
        .maildir(&env.maildir("alice"))
        .extra(&format!(
            "retention = \"14d\"\nmax_size = \"20KB\"\nfilter = {}",
            common::toml_string(filter)
        ))
        .toml()]);

    run_at(&env, T0, &["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert_eq!(maildir_messages(&env.maildir("alice")), vec![small.clone()]);
    run_at(&env, &at(60, 0), &["fetch", "--all"]).assert_code_with(0, &dovecot);
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(vec![large, later]),
        "after 60 days only the downloaded message is deleted; skipped ones stay"
    );
    assert_eq!(maildir_messages(&env.maildir("alice")), vec![small]);
}
